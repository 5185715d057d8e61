#include "tls.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace crew::serve_app {
namespace {

// OpenSSL's reasons for the last failure, oldest (the cause) first, and its queue emptied.
std::string openssl_reasons() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    const std::string text = reason != nullptr ? reason : fmt::format("error {:#x}", e);
    if (out.find(text) != std::string::npos) continue;
    out += (out.empty() ? "" : "; ") + text;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

// A clearer message than OpenSSL's for the commonest mistake: a wrong path.
void check_readable(const char* flag, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    throw std::invalid_argument(
        fmt::format("{} {}: cannot be read: {}", flag, path, std::strerror(errno)));
  }
  std::fclose(f);
}

}  // namespace

std::unique_ptr<boost::asio::ssl::context> make_tls_context(const std::string& cert_file,
                                                            const std::string& key_file) {
  if (cert_file.empty() || key_file.empty()) {
    throw std::invalid_argument(
        cert_file.empty() ? "--tls-key needs --tls-cert FILE (the PEM certificate) as well"
                          : "--tls-cert needs --tls-key FILE (the PEM private key) as well");
  }
  check_readable("--tls-cert", cert_file);
  check_readable("--tls-key", key_file);
  ERR_clear_error();
  std::unique_ptr<boost::asio::ssl::context> context;
  try {
    context = std::make_unique<boost::asio::ssl::context>(boost::asio::ssl::context::tls_server);
  } catch (const std::exception& e) {
    throw std::invalid_argument(fmt::format("OpenSSL could not make a TLS context: {}", e.what()));
  }
  SSL_CTX* ctx = context->native_handle();
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    throw std::invalid_argument(
        fmt::format("OpenSSL refused TLS 1.2 as the minimum: {}", openssl_reasons()));
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    throw std::invalid_argument(fmt::format(
        "--tls-cert {}: not a usable PEM certificate (chain): {}", cert_file, openssl_reasons()));
  }
  // Loading the key already compares it with the certificate's; the check after it is the
  // documented one, should that ever change.
  const bool loaded = SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) == 1;
  const unsigned long first = ERR_peek_error();
  const bool mismatch =
      ERR_GET_LIB(first) == ERR_LIB_X509 && ERR_GET_REASON(first) == X509_R_KEY_VALUES_MISMATCH;
  if (!loaded && !mismatch) {
    throw std::invalid_argument(
        fmt::format("--tls-key {}: not a usable PEM private key: {}", key_file, openssl_reasons()));
  }
  if (!loaded || SSL_CTX_check_private_key(ctx) != 1) {
    throw std::invalid_argument(fmt::format("--tls-key {} does not belong to --tls-cert {}: {}",
                                            key_file, cert_file, openssl_reasons()));
  }
  return context;
}

}  // namespace crew::serve_app
