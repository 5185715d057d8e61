// parse_url: redis://[[user]:password@]host[:port][/db]
#include <charconv>
#include <stdexcept>
#include <string>
#include <string_view>

#include "connection.hpp"

namespace crew::inline v0::redis {
namespace {

// The URL as messages show it: its credentials may hold a password.
std::string shown(std::string_view url) {
  auto start = url.find("://");
  start = start == std::string_view::npos ? 0 : start + 3;
  auto at = url.substr(0, url.find('/', start)).rfind('@');
  if (at == std::string_view::npos || at < start) return std::string(url);
  return std::string(url.substr(0, start)) + "***" + std::string(url.substr(at));
}

[[noreturn]] void bad(std::string_view url, const std::string& why) {
  throw std::invalid_argument("redis URL '" + shown(url) + "': " + why);
}

int number(std::string_view url, std::string_view field, std::string_view text, int min, int max) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value < min ||
      value > max) {
    bad(url, std::string(field) + " must be an integer in " + std::to_string(min) + ".." +
                 std::to_string(max) + ", got '" + std::string(text) + "'");
  }
  return value;
}

std::string percent_decode(std::string_view url, std::string_view field, std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    unsigned value = 0;
    auto digits = text.substr(i + 1, 2);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, 16);
    if (digits.size() != 2 || ec != std::errc{} || end != digits.data() + 2) {
      bad(url, "bad percent-encoding in the " + std::string(field));
    }
    out += static_cast<char>(value);
    i += 2;
  }
  return out;
}

}  // namespace

std::string Url::redacted() const {
  std::string out = "redis://";
  if (!user.empty()) out += user + "@";
  out += host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return out + ":" + std::to_string(port) + "/" + std::to_string(db);
}

Url parse_url(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.starts_with("rediss://")) {
    bad(url, "TLS (rediss://) is not supported: hiredis 0.14 has no TLS");
  }
  if (!url.starts_with(kScheme)) {
    auto colon = url.find("://");
    bad(url, "the scheme must be redis://, got '" +
                 std::string(colon == std::string_view::npos ? url : url.substr(0, colon + 3)) +
                 "'");
  }
  Url out;
  std::string_view rest = url.substr(kScheme.size());
  if (rest.find_first_of("?#") != std::string_view::npos) {
    bad(url, "query parameters and fragments are not supported");
  }
  std::string_view path;
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    path = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      bad(url, "the credentials must be ':password@' or 'user:password@'");
    }
    out.user = percent_decode(url, "user", userinfo.substr(0, colon));
    out.password = percent_decode(url, "password", userinfo.substr(colon + 1));
  }
  std::string_view port;
  if (rest.starts_with('[')) {  // [IPv6]
    auto close = rest.find(']');
    if (close == std::string_view::npos) bad(url, "the host has '[' without ']'");
    out.host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    if (!rest.empty() && !rest.starts_with(':')) bad(url, "unexpected text after the host");
    if (!rest.empty()) port = rest.substr(1);
  } else if (auto colon = rest.find(':'); colon != std::string_view::npos) {
    out.host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  } else {
    out.host = rest;
  }
  if (out.host.empty()) bad(url, "the host is empty");
  if (rest.find(':') != std::string_view::npos) out.port = number(url, "port", port, 1, 65535);
  if (!path.empty()) out.db = number(url, "db", path, 0, 1'000'000);
  return out;
}

}  // namespace crew::inline v0::redis
