// crew::CryptoError for a failed OpenSSL call, with OpenSSL's own reason (internal; shared by
// crew::stream and crew serve, each of which links OpenSSL privately).
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>
#include <openssl/err.h>

#include <crew/errors.hpp>

namespace crew::inline v0::detail {

/// Throws "<what> failed: <OpenSSL's reason>; ...", clearing OpenSSL's error queue (so a
/// later failure on this thread is not blamed on this one's leftovers).
[[noreturn]] inline void throw_crypto_error(std::string_view what) {
  std::string reason;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(e, text, sizeof text);
    if (reason.empty()) reason = text;  // the first is the cause; the rest add context
  }
  throw CryptoError(
      fmt::format("{} failed: {}; this is OpenSSL's failure, not the data's: check the OpenSSL "
                  "installation and its configuration (OPENSSL_CONF, FIPS mode)",
                  what, reason.empty() ? "OpenSSL gave no reason" : reason));
}

}  // namespace crew::inline v0::detail
