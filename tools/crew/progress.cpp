#include "progress.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <unistd.h>

namespace crew::tool {
namespace {

std::string human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

std::string clock(double seconds) {
  auto s = static_cast<long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(std::optional<std::uint64_t> total, bool enabled)
    : total_(total),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) == 1),
      colour_(tty_ && std::getenv("NO_COLOR") == nullptr),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void Progress::update(std::uint64_t done) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < (tty_ ? std::chrono::milliseconds(100) : std::chrono::seconds(1))) return;
  last_draw_ = now;
  draw(done, false);
}

void Progress::finish(std::uint64_t done) {
  if (enabled_) draw(done, true);
}

void Progress::draw(std::uint64_t done, bool last) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  std::string line;
  if (total_ && *total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done) / static_cast<double>(*total_));
    constexpr int kWidth = 24;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar = std::string(static_cast<std::size_t>(filled), '#') +
                      std::string(static_cast<std::size_t>(kWidth - filled), '.');
    if (colour_) bar = "\033[32m" + bar + "\033[0m";
    line = fmt::format("[{}] {:3.0f}% {} / {}  {}/s", bar, frac * 100, human(double(done)),
                       human(double(*total_)), human(rate));
    if (last) {
      line += fmt::format("  in {}", clock(elapsed));
    } else if (rate > 0) {
      line += fmt::format("  ETA {}",
                          clock(static_cast<double>(*total_ - std::min(done, *total_)) / rate));
    }
  } else {
    line = fmt::format("{}  {}/s  {}", human(double(done)), human(rate), clock(elapsed));
  }
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace crew::tool
