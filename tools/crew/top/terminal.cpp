#include "terminal.hpp"

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

namespace crew::tool::top {
namespace {

// The self-pipe: signal handlers write the signal's number, the loop polls the read end.
int g_pipe[2] = {-1, -1};

extern "C" void on_signal(int signal) {
  const int saved = errno;
  const auto byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] const auto n = ::write(g_pipe[1], &byte, 1);
  errno = saved;
}

constexpr std::array<int, 4> kSignals = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};
std::array<struct sigaction, kSignals.size()> g_saved_actions;

void write_all(const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(STDOUT_FILENO, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the terminal went away; nothing left to show it to
    done += static_cast<std::size_t>(n);
  }
}

// Alternate screen on, cursor hidden, line wrapping off; and back.
constexpr const char* kEnter = "\x1b[?1049h\x1b[?25l\x1b[?7l";
constexpr const char* kLeave = "\x1b[?7h\x1b[?25h\x1b[?1049l";

}  // namespace

std::optional<Size> terminal_size(int fd) {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0 || ws.ws_row == 0) {
    return std::nullopt;
  }
  return Size{.cols = ws.ws_col, .rows = ws.ws_row};
}

Terminal::Terminal() {
  if (::pipe(g_pipe) != 0) throw std::runtime_error(std::strerror(errno));
  for (const int fd : g_pipe) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  ::sigemptyset(&action.sa_mask);
  for (std::size_t i = 0; i < kSignals.size(); ++i) {
    ::sigaction(kSignals[i], &action, &g_saved_actions[i]);
  }
  ::tcgetattr(STDIN_FILENO, &saved_);
  termios raw = saved_;
  raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO | IEXTEN);
  raw.c_iflag &= ~static_cast<tcflag_t>(IXON | ICRNL);
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;
  // Ctrl-Z would stop the process with the terminal still raw: the view ignores it.
  raw.c_cc[VSUSP] = _POSIX_VDISABLE;
  ::tcsetattr(STDIN_FILENO, TCSANOW, &raw);
  write_all(kEnter);
}

Terminal::~Terminal() {
  write_all(kLeave);
  ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  for (std::size_t i = 0; i < kSignals.size(); ++i) {
    ::sigaction(kSignals[i], &g_saved_actions[i], nullptr);
  }
  ::close(g_pipe[0]);
  ::close(g_pipe[1]);
  g_pipe[0] = g_pipe[1] = -1;
}

Terminal::Event Terminal::wait(std::chrono::milliseconds timeout) {
  Event event;
  std::array<pollfd, 2> fds = {pollfd{.fd = STDIN_FILENO, .events = POLLIN, .revents = 0},
                               pollfd{.fd = g_pipe[0], .events = POLLIN, .revents = 0}};
  const int ready =
      ::poll(fds.data(), fds.size(), static_cast<int>(std::max<long>(0, timeout.count())));
  if (ready <= 0) return event;  // timeout, or EINTR: the pipe has the signal
  if ((fds[1].revents & POLLIN) != 0) {
    unsigned char signals[16];
    const ssize_t n = ::read(g_pipe[0], signals, sizeof signals);
    for (ssize_t i = 0; i < n; ++i) {
      if (signals[i] == SIGWINCH) {
        event.resized = true;
      } else {
        event.signal = signals[i];
      }
    }
  }
  if ((fds[0].revents & POLLIN) != 0) {
    char buffer[256];
    const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
    if (n > 0) event.input.assign(buffer, static_cast<std::size_t>(n));
    if (n == 0) event.signal = SIGHUP;  // the terminal closed
  }
  if ((fds[0].revents & (POLLHUP | POLLERR)) != 0) event.signal = SIGHUP;  // the terminal closed
  return event;
}

Size Terminal::size() const {
  return terminal_size(STDOUT_FILENO).value_or(Size{});
}

void Terminal::draw(const std::string& frame) {
  // Each line erased and rewritten in place: no flicker from clearing the whole screen first. The
  // erase comes before the text because with wrapping off the cursor stays on the last column of
  // a full line, and an erase after it would take that column's character.
  std::string out = "\x1b[H\x1b[2K";
  for (const char c : frame) out += c == '\n' ? std::string("\r\n\x1b[2K") : std::string(1, c);
  write_all(out);
}

}  // namespace crew::tool::top
