// Starting a worker process: the one fork/exec path of ProcessPool and Cluster (internal).
//
// Everything the child needs (argv, envp, which descriptor goes where, the limits) is prepared
// before fork; between fork and execve the child makes only async-signal-safe calls. Every step
// is checked. A step that fails in this process throws SpawnError naming the step, the errno
// and what to do; a step that fails in the child is written to a CLOEXEC error pipe (step and
// errno) before _exit(127), so spawn_process() throws the same way instead of the caller seeing
// a worker that dies for no stated reason. When the exec succeeds the pipe simply closes: the
// parent's read returns 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace crew::inline v0::detail {

/// An owned descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// The caller owns the descriptor from now on.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

/// The steps of starting a process, as named in SpawnError messages.
enum class SpawnStep : int {
  none = 0,
  // In this process, before fork (the helpers below and spawn_process):
  socketpair,
  pipe,
  open,
  dup,        // fcntl(F_DUPFD_CLOEXEC)
  set_flags,  // fcntl(F_SETFL, O_NONBLOCK)
  epoll_ctl,
  error_pipe,
  fork,
  pidfd_open,
  // In the new process, between fork and execve:
  pdeathsig,
  dup2,
  close_fds,
  sigmask,
  signals,
  setrlimit,
  execve,
  count_,  // not a step: the number of them, for tests
};

[[nodiscard]] const char* spawn_step_name(SpawnStep step) noexcept;
[[nodiscard]] constexpr bool spawn_step_in_child(SpawnStep step) noexcept {
  return step >= SpawnStep::pdeathsig && step < SpawnStep::count_;
}

/// A step of starting a process failed. what() is the whole sentence ("crew::ProcessPool:
/// pidfd_open failed (ENOSYS: Function not implemented); Linux 5.3 or later is needed");
/// code() is the errno.
class SpawnError : public std::system_error {
 public:
  SpawnError(SpawnStep step, int err, std::string message)
      : std::system_error(err, std::generic_category()),
        step_(step),
        message_(std::move(message)) {}
  [[nodiscard]] const char* what() const noexcept override { return message_.c_str(); }
  [[nodiscard]] SpawnStep step() const noexcept { return step_; }

 private:
  SpawnStep step_;
  std::string message_;
};

/// Throws SpawnError: "<who>: <step><detail> failed (<ENAME>: <text>)[; <hint>]".
[[noreturn]] void throw_spawn_error(std::string_view who, SpawnStep step, int err,
                                    std::string_view detail = {});

// Checked descriptor helpers for what a caller prepares before spawn_process(); each throws
// SpawnError naming `who` and the step. Every descriptor is created CLOEXEC.
struct FdPair {
  UniqueFd first;   // socketpair: the parent's end; pipe: the read end
  UniqueFd second;  // socketpair: the child's end; pipe: the write end
};
[[nodiscard]] FdPair make_socketpair(std::string_view who);  // AF_UNIX, SOCK_SEQPACKET
[[nodiscard]] FdPair make_pipe(std::string_view who);
[[nodiscard]] UniqueFd open_fd(std::string_view who, const char* path, int flags);
void set_nonblocking(std::string_view who, int fd);
void epoll_watch(std::string_view who, int epoll, int fd, std::uint64_t data);

/// A descriptor of this process to install in the child at number `to`. `from` stays open and
/// owned by the caller; spawn_process() duplicates it out of the child's way first, so any
/// numbering works (a source may even sit where another move goes).
struct FdMove {
  int from;
  int to;
};

struct SpawnRequest {
  std::string who;  // names the caller in errors: "crew::ProcessPool"
  std::string executable;
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // "KEY=value"
  /// Every other descriptor is closed in the child (stdio too, unless keep_stdio).
  std::vector<FdMove> fds;
  /// Leave 0, 1 and 2 as they are (then no move may target them).
  bool keep_stdio = false;
  /// SIGKILL the child when the thread calling spawn_process() exits (PR_SET_PDEATHSIG).
  bool kill_with_thread = true;
  /// Dispositions reset to SIG_DFL (an ignored signal stays ignored across execve).
  std::vector<int> default_signals;
  /// RLIMIT_AS in the child, soft and hard; 0 leaves it unchanged.
  std::size_t address_limit = 0;
};

/// A started process. Until release(), destroying it kills it (SIGKILL through its pidfd) and
/// reaps it, so a caller whose later setup step throws leaves no process behind either.
class Child {
 public:
  Child() noexcept = default;
  Child(pid_t pid, UniqueFd pidfd) noexcept : pid_(pid), pidfd_(std::move(pidfd)) {}
  Child(Child&& o) noexcept : pid_(std::exchange(o.pid_, -1)), pidfd_(std::move(o.pidfd_)) {}
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { kill_and_reap(); }

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] int pidfd() const noexcept { return pidfd_.get(); }
  /// Waits for the process to end and reaps it (the pidfd stays open); returns the wait status.
  int wait() noexcept;
  /// The caller signals, waits for and reaps the process from now on.
  [[nodiscard]] UniqueFd release() noexcept {
    pid_ = -1;
    return std::move(pidfd_);
  }

 private:
  void kill_and_reap() noexcept;
  pid_t pid_ = -1;
  UniqueFd pidfd_;
};

/// Forks and execs `request`; returns once the child has exec'd. Throws SpawnError (with
/// nothing left open and no process left behind) if any step, here or in the child, fails.
[[nodiscard]] Child spawn_process(const SpawnRequest& request);

/// Sends `sig` through a pidfd: unlike a pid, a pidfd never names a reused process. Returns 0,
/// or the errno; ESRCH (the process has already exited) counts as success.
int signal_process(int pidfd, int sig) noexcept;

// ---- test hooks (tests/process/spawn_test.cpp) -------------------------------------------------

/// The next time `step` is reached, after `skip` further times, it fails with `err` as if the
/// system call had (in the child for child steps). One injection at a time; none clears it.
void inject_spawn_failure(SpawnStep step, int err, unsigned skip = 0) noexcept;

/// How the child closes what it must not inherit. automatic: close_range, falling back when the
/// kernel lacks it (ENOSYS, EINVAL) or a seccomp filter refuses it (EPERM) to proc_fd: each
/// descriptor listed in /proc/self/fd (a raw getdents64), falling back when /proc cannot be opened
/// to close_loop: close() on every number below RLIMIT_NOFILE (at most kCloseLoopCap). The others
/// force a fallback, for tests.
enum class CloseMode { automatic, proc_fd, close_loop };
inline constexpr int kCloseLoopCap = 1 << 16;
void force_close_mode(CloseMode mode) noexcept;

}  // namespace crew::inline v0::detail
