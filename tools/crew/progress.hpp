// A progress line on stderr for crew pipe: bytes, rate and, when the size is known, a bar and ETA.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace crew::tool {

/// Redraws one line on stderr at most 10 times a second (a TTY), or prints a line a second
/// (anything else, when forced). Colour only on a TTY without NO_COLOR.
///
/// Thread safety: none; one thread calls update()/done().
class Progress {
 public:
  /// `total`: input size when known. `enabled`: draw at all.
  Progress(std::optional<std::uint64_t> total, bool enabled);
  /// `done` bytes of input consumed so far.
  void update(std::uint64_t done);
  /// Draws the final state and ends the line.
  void finish(std::uint64_t done);

 private:
  void draw(std::uint64_t done, bool last);

  std::optional<std::uint64_t> total_;
  bool enabled_;
  bool tty_;
  bool colour_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace crew::tool
