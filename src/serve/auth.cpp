#include "auth.hpp"

#include <cctype>
#include <fstream>
#include <stdexcept>
#include <utility>

#include <boost/asio/ip/address.hpp>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/crypto_error.hpp"

namespace crew::serve_app {
namespace {

std::array<unsigned char, 32> digest(std::string_view bytes) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    crew::detail::throw_crypto_error("crew serve: a token's SHA-256 digest (OpenSSL EVP_Digest)");
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) s.remove_suffix(1);
  return s;
}

}  // namespace

TokenSet TokenSet::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error(fmt::format(
        "--auth-token-file {}: cannot be read; give a file with one token a line", path));
  }
  TokenSet set;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string_view token = trim(line);
    if (token.empty() || token.front() == '#') continue;
    for (const char c : token) {
      if (std::isspace(static_cast<unsigned char>(c)) != 0 ||
          std::iscntrl(static_cast<unsigned char>(c)) != 0) {
        throw std::runtime_error(fmt::format(
            "--auth-token-file {}: line {} holds a space or control character inside its token; "
            "write one token a line",
            path, n));
      }
    }
    set.digests_.push_back(digest(token));
  }
  if (in.bad()) throw std::runtime_error(fmt::format("--auth-token-file {}: read error", path));
  if (set.digests_.empty()) {
    throw std::runtime_error(fmt::format(
        "--auth-token-file {}: holds no token (blank lines and '#' comments do not count)", path));
  }
  return set;
}

bool TokenSet::contains(std::string_view token) const {
  const auto presented = digest(token);
  int matches = 0;
  for (const auto& d : digests_) {  // no early exit: every token costs the same
    matches |= static_cast<int>(CRYPTO_memcmp(d.data(), presented.data(), d.size()) == 0);
  }
  return matches != 0;
}

Auth::Auth(std::string path) : path_(std::move(path)) {
  if (enabled()) tokens_ = std::make_shared<const TokenSet>(TokenSet::load(path_));
}

AuthVerdict Auth::check(std::string_view authorization) const {
  if (!enabled()) return AuthVerdict::ok;
  authorization = trim(authorization);
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return AuthVerdict::missing;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) {
      return AuthVerdict::missing;
    }
  }
  const std::string_view token = trim(authorization.substr(kScheme.size()));
  std::shared_ptr<const TokenSet> tokens;
  {
    std::lock_guard lock(mutex_);
    tokens = tokens_;
  }
  return tokens->contains(token) ? AuthVerdict::ok : AuthVerdict::invalid;
}

std::size_t Auth::reload() {
  if (!enabled()) return 0;
  auto fresh = std::make_shared<const TokenSet>(TokenSet::load(path_));
  const std::size_t n = fresh->size();
  std::lock_guard lock(mutex_);
  tokens_ = std::move(fresh);
  return n;
}

bool is_loopback(const std::string& host) {
  if (host == "localhost") return true;
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

}  // namespace crew::serve_app
