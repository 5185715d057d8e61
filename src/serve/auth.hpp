// Bearer-token access control for `crew serve` (--auth-token-file).
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace crew::serve_app {

/// The tokens of one token file, kept as SHA-256 digests: a presented token is hashed and
/// compared with every digest in constant time, so neither its content nor which token matched
/// shows in the timing, and the tokens themselves are not kept in memory.
class TokenSet {
 public:
  /// Reads `path`: one token a line; blank lines and lines starting with '#' are skipped and
  /// spaces around a token trimmed. Throws std::runtime_error naming the file and what is wrong
  /// (unreadable, no token in it, a token with a space inside).
  static TokenSet load(const std::string& path);
  /// Whether `token` is one of them.
  [[nodiscard]] bool contains(std::string_view token) const;
  [[nodiscard]] std::size_t size() const noexcept { return digests_.size(); }

 private:
  std::vector<std::array<unsigned char, 32>> digests_;
};

/// What a request's Authorization header earns it.
enum class AuthVerdict { ok, missing, invalid };

/// The server's current tokens. Thread safety: check() from any thread, reload() from any other.
class Auth {
 public:
  /// `path` empty: no access control (every check is ok). Otherwise loads it (throws as
  /// TokenSet::load).
  explicit Auth(std::string path);
  [[nodiscard]] bool enabled() const noexcept { return !path_.empty(); }
  /// `authorization` is the header's value: "Bearer <token>" (the scheme in any case).
  [[nodiscard]] AuthVerdict check(std::string_view authorization) const;
  /// Reads the file again; on an error keeps the tokens it had and throws. Returns the count.
  std::size_t reload();

 private:
  std::string path_;
  mutable std::mutex mutex_;
  std::shared_ptr<const TokenSet> tokens_;
};

/// True for a loopback address (127.0.0.0/8, ::1) or "localhost": where no other host can
/// connect.
[[nodiscard]] bool is_loopback(const std::string& host);

}  // namespace crew::serve_app
