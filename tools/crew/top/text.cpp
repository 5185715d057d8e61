#include "text.hpp"

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace crew::tool::top {
namespace {

bool starts_code_point(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
}

// The first `n` code points of `s`.
std::string_view head(std::string_view s, int n) {
  std::size_t i = 0;
  for (int seen = 0; i < s.size(); ++i) {
    if (starts_code_point(s[i]) && seen++ == n) break;
  }
  return s.substr(0, i);
}

}  // namespace

std::string dash() {
  return "-";
}

int columns(std::string_view s) {
  return static_cast<int>(std::count_if(s.begin(), s.end(), starts_code_point));
}

std::string fit(std::string_view s, int width, bool right) {
  if (width <= 0) return {};
  const int n = columns(s);
  if (n > width) return std::string(head(s, width - 1)) + "…";
  const std::string pad(static_cast<std::size_t>(width - n), ' ');
  return right ? pad + std::string(s) : std::string(s) + pad;
}

std::string printable(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    // C1 controls (U+0080 to U+009F: 0xC2 0x80-0x9F) work as ESC sequences on some terminals.
    if (u == 0xC2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xE0) == 0x80) {
      out += '?';
      ++i;
      continue;
    }
    out += s[i] == '\t' ? ' ' : (u < 0x20 || u == 0x7F) ? '?' : s[i];
  }
  return out;
}

std::string rate(std::optional<double> v) {
  if (!v) return dash();
  return *v >= 10'000 ? fmt::format("{:.1f}k", *v / 1000) : fmt::format("{:.1f}", *v);
}

std::string seconds(std::optional<double> v) {
  if (!v) return dash();
  if (*v < 1e-3) return fmt::format("{:.0f}µs", *v * 1e6);
  if (*v < 1) return fmt::format("{:.1f}ms", *v * 1e3);
  return fmt::format("{:.2f}s", *v);
}

std::string bytes(std::optional<std::uint64_t> v) {
  if (!v) return dash();
  static constexpr std::array<const char*, 5> kUnits = {"B", "K", "M", "G", "T"};
  auto x = static_cast<double>(*v);
  std::size_t unit = 0;
  while (x >= 1024 && unit + 1 < kUnits.size()) x /= 1024, ++unit;
  return unit == 0 ? fmt::format("{}B", *v) : fmt::format("{:.1f}{}", x, kUnits[unit]);
}

std::string number(std::optional<std::uint64_t> v) {
  return v ? fmt::format("{}", *v) : dash();
}

std::string age(double s) {
  const auto t = static_cast<std::int64_t>(std::max(0.0, s));
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02}s", t / 60, t % 60);
  if (t < 86400) return fmt::format("{}h{:02}m", t / 3600, t % 3600 / 60);
  return fmt::format("{}d{:02}h", t / 86400, t % 86400 / 3600);
}

Line& Line::add(std::string_view text, std::string_view style) {
  const int room = width_ - used_;
  if (room <= 0 || text.empty()) return *this;
  const std::string cut = columns(text) > room ? fit(text, room) : std::string(text);
  used_ += columns(cut);
  if (color_ && !style.empty()) {
    out_ += fmt::format("\x1b[{}m{}\x1b[0m", style, cut);
  } else {
    out_ += cut;
  }
  return *this;
}

Line& Line::fill(std::string_view style) {
  if (!color_) return *this;
  return add(std::string(static_cast<std::size_t>(std::max(0, width_ - used_)), ' '), style);
}

}  // namespace crew::tool::top
