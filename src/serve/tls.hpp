// TLS for `crew serve`: the server's OpenSSL context, built from a PEM certificate and key.
#pragma once

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

namespace crew::serve_app {

/// A server context for `cert_file` (PEM; the certificate, then any intermediates) and
/// `key_file` (its PEM private key, unencrypted): TLS 1.2 at least, no compression, the
/// server's cipher order, no renegotiation, session tickets on. Throws std::invalid_argument
/// naming the flag, the file and OpenSSL's reason when one of the two is missing, a file cannot
/// be read, is not a certificate or key, or the key does not belong to the certificate.
std::unique_ptr<boost::asio::ssl::context> make_tls_context(const std::string& cert_file,
                                                            const std::string& key_file);

}  // namespace crew::serve_app
