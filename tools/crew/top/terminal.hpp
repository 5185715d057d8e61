// crew top: the interactive terminal. Plain ANSI escape sequences and termios rather than
// ncurses: the view redraws whole frames that the renderer already built as text, so all it needs
// is raw input, the alternate screen, the size and a redraw, which is a few lines of code and
// no new dependency.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <termios.h>

#include "render.hpp"

namespace crew::tool::top {

/// While it lives: raw keyboard input (no echo, no line editing; Ctrl-C still signals), the
/// alternate screen, no cursor, no line wrapping; SIGINT, SIGTERM, SIGHUP and SIGWINCH arrive as
/// events instead of ending the process. The destructor puts all of it back, so every way out of
/// the view (q, a signal, an exception) leaves the terminal as it was.
class Terminal {
 public:
  /// stdin and stdout must be the terminal (isatty).
  Terminal();
  ~Terminal();
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  struct Event {
    std::string input;  ///< bytes typed
    bool resized = false;
    int signal = 0;  ///< SIGINT, SIGTERM or SIGHUP arrived: leave
  };
  /// Waits until there is input, a signal, or `timeout` has passed (then an empty event).
  Event wait(std::chrono::milliseconds timeout);

  Size size() const;
  /// Replaces the screen's contents with `frame` (lines separated by '\n').
  void draw(const std::string& frame);

 private:
  termios saved_{};
};

/// The size of the terminal on `fd`, or nothing when it is not one (or does not know its size).
std::optional<Size> terminal_size(int fd);

}  // namespace crew::tool::top
