// The one fork/exec path of ProcessPool and Cluster; see spawn.hpp.
#include "spawn.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace crew::inline v0::detail {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

// ---- test hooks ----------------------------------------------------------------------------

struct Injection {
  std::atomic<bool> armed{false};  // read on every step: the common case takes no lock
  std::mutex mutex;
  SpawnStep step = SpawnStep::none;
  int err = 0;
  unsigned skip = 0;
};
Injection& injection() {
  static Injection i;
  return i;
}
std::atomic<int> g_close_mode{static_cast<int>(CloseMode::automatic)};

// Whether the armed failure fires at `step` now (for child steps: in the child about to start).
bool take_injection(SpawnStep step, int& err) {
  Injection& i = injection();
  if (!i.armed.load(std::memory_order_acquire)) return false;
  std::lock_guard lock(i.mutex);
  if (i.step != step) return false;
  if (i.skip > 0) {
    --i.skip;
    return false;
  }
  err = i.err;
  i.step = SpawnStep::none;
  i.armed.store(false, std::memory_order_release);
  return true;
}

void fail_if_injected(std::string_view who, SpawnStep step) {
  int err = 0;
  if (take_injection(step, err)) throw_spawn_error(who, step, err);
}

// ---- messages ------------------------------------------------------------------------------

std::string hint(SpawnStep step, int err) {
  switch (err) {
    case EMFILE:
      return "this process has too many descriptors open: raise RLIMIT_NOFILE (ulimit -n) or "
             "close some";
    case ENFILE:
      return "the system's descriptor table is full (sysctl fs.file-max)";
    case ENOMEM:
      return "out of memory (or, for the new process, its address-space limit is too low)";
    default:
      break;
  }
  switch (step) {
    case SpawnStep::pidfd_open:
      if (err == ENOSYS) return "Linux 5.3 or later is needed";
      if (err == EPERM) return "a seccomp filter forbids it (update the container runtime)";
      return "";
    case SpawnStep::fork:
      return err == EAGAIN ? "the limit on processes is reached (RLIMIT_NPROC, the cgroup's "
                             "pids.max, kernel.pid_max)"
                           : "";
    case SpawnStep::execve:
      switch (err) {
        case ENOENT:
          return "the program (or its ELF interpreter) does not exist";
        case EACCES:
          return "the file is not executable, or its file system is mounted noexec";
        case ENOEXEC:
          return "the file is not a program this system can run";
        case E2BIG:
          return "the arguments and environment are too large";
        case ETXTBSY:
          return "the program is open for writing";
        default:
          return "";
      }
    case SpawnStep::setrlimit:
      return err == EPERM || err == EINVAL
                 ? "memory_limit_bytes is above this process's hard RLIMIT_AS"
                 : "";
    case SpawnStep::dup2:
      return err == EBADF ? "a descriptor to pass to the worker was closed" : "";
    default:
      return "";
  }
}

// What the child writes to the error pipe before _exit(127).
struct ChildReport {
  std::int32_t step;
  std::int32_t err;
  std::int32_t arg;  // the target descriptor (dup2), the signal (signals), the method (close)
};
static_assert(sizeof(ChildReport) <= PIPE_BUF, "one atomic write");

enum CloseMethod : std::int32_t { kByCloseRange = 0, kByProcFd = 1 };

std::string child_detail(const ChildReport& r, const std::string& executable) {
  switch (static_cast<SpawnStep>(r.step)) {
    case SpawnStep::dup2:
      return fmt::format(" to descriptor {}", r.arg);
    case SpawnStep::signals: {
      const char* name = ::sigabbrev_np(r.arg);
      return fmt::format("(SIG{}, SIG_DFL)", name != nullptr ? name : "?");
    }
    case SpawnStep::close_fds:
      return r.arg == kByProcFd ? " (getdents64 of /proc/self/fd)" : " (close_range)";
    case SpawnStep::execve:
      return fmt::format(" of '{}'", executable);
    default:
      return "";
  }
}

// ---- the child, between fork and execve: async-signal-safe calls only ------------------------

struct ChildPlan {
  pid_t parent;
  bool kill_with_thread;
  const char* executable;
  char* const* argv;
  char* const* envp;
  const FdMove* moves;  // from: a duplicate above every target
  std::size_t move_count;
  const int* close_low;  // numbers below `close_from` that are no target
  std::size_t close_low_count;
  int close_from;
  int report_fd;  // the error pipe's write end, above every target
  CloseMode close_mode;
  int close_loop_limit;
  const int* default_signals;
  std::size_t default_signal_count;
  const sigset_t* mask;
  std::size_t address_limit;
  SpawnStep inject_step;  // a failure forced by a test
  int inject_err;
};

[[noreturn]] void child_fail(const ChildPlan& plan, SpawnStep step, int err, int arg) noexcept {
  const ChildReport r{static_cast<std::int32_t>(step), err, arg};
  while (::write(plan.report_fd, &r, sizeof r) < 0 && errno == EINTR) {
  }
  ::_exit(127);
}

// Closes every descriptor listed in /proc/self/fd from `first` on, except `keep`. Returns 0, -1
// when the directory cannot be opened (not mounted: the caller falls back), or the errno of a
// failed getdents64. Raw getdents64 because opendir allocates.
int close_listed(int first, int keep) noexcept {
  const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return -1;
  alignas(8) char buf[4096];
  // A second pass finds nothing unless the listing missed a descriptor; a few at most.
  for (int pass = 0; pass < 4; ++pass) {
    bool closed = false;
    for (;;) {
      const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(dir);
        return err;
      }
      if (n == 0) break;
      // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, then the name.
      for (long off = 0; off < n;) {
        unsigned short reclen;
        std::memcpy(&reclen, buf + off + 16, sizeof reclen);
        const char* name = buf + off + 19;
        int fd = 0;
        bool number = *name != '\0';
        for (const char* c = name; *c != '\0'; ++c) {
          if (*c < '0' || *c > '9' || fd > (1 << 24)) {
            number = false;
            break;
          }
          fd = fd * 10 + (*c - '0');
        }
        if (number && fd >= first && fd != keep && fd != dir) {
          ::close(fd);
          closed = true;
        }
        off += reclen;
      }
    }
    if (!closed || ::lseek(dir, 0, SEEK_SET) != 0) break;
  }
  ::close(dir);
  return 0;
}

// Closes every descriptor from `first` on except `keep`. Returns 0 or, with the method that
// failed, the errno.
int close_inherited(const ChildPlan& plan, int first, int keep, std::int32_t& method) noexcept {
  method = kByCloseRange;
  if (plan.close_mode == CloseMode::automatic) {
    int err = 0;
    if (first < keep && ::syscall(SYS_close_range, static_cast<unsigned>(first),
                                  static_cast<unsigned>(keep - 1), 0U) != 0) {
      err = errno;
    }
    if (err == 0 && ::syscall(SYS_close_range, static_cast<unsigned>(keep + 1), ~0U, 0U) != 0) {
      err = errno;
    }
    if (err == 0) return 0;
    // ENOSYS: a kernel before 5.9; EPERM: a seccomp filter that predates the call (older
    // container runtimes answer unknown calls so); EINVAL, which our arguments never cause.
    if (err != ENOSYS && err != EINVAL && err != EPERM) return err;
  }
  if (plan.close_mode != CloseMode::close_loop) {
    method = kByProcFd;
    const int r = close_listed(first, keep);
    if (r >= 0) return r;
  }
  // No /proc: every number the limit allows (capped; a descriptor above the cap stays open
  // unless it is CLOEXEC).
  for (int fd = first; fd < plan.close_loop_limit; ++fd) {
    if (fd != keep) ::close(fd);
  }
  return 0;
}

[[noreturn]] void child_main(const ChildPlan& plan) noexcept {
  auto forced = [&](SpawnStep step) {
    if (plan.inject_step == step) child_fail(plan, step, plan.inject_err, 0);
  };
  if (plan.kill_with_thread) {
    forced(SpawnStep::pdeathsig);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(plan, SpawnStep::pdeathsig, errno, 0);
    if (::getppid() != plan.parent) ::_exit(127);  // the parent died during fork: nobody to tell
  }
  for (std::size_t i = 0; i < plan.move_count; ++i) {
    const FdMove& m = plan.moves[i];
    if (plan.inject_step == SpawnStep::dup2)
      child_fail(plan, SpawnStep::dup2, plan.inject_err, m.to);
    // dup2 clears CLOEXEC on the copy; sources are above every target, so none is overwritten.
    while (::dup2(m.from, m.to) < 0) {
      if (errno != EINTR) child_fail(plan, SpawnStep::dup2, errno, m.to);
    }
  }
  for (std::size_t i = 0; i < plan.close_low_count; ++i) ::close(plan.close_low[i]);
  {
    forced(SpawnStep::close_fds);
    std::int32_t method = kByCloseRange;
    const int err = close_inherited(plan, plan.close_from, plan.report_fd, method);
    if (err != 0) child_fail(plan, SpawnStep::close_fds, err, method);
  }
  forced(SpawnStep::sigmask);
  if (::sigprocmask(SIG_SETMASK, plan.mask, nullptr) != 0) {
    child_fail(plan, SpawnStep::sigmask, errno, 0);
  }
  for (std::size_t i = 0; i < plan.default_signal_count; ++i) {
    const int sig = plan.default_signals[i];
    if (plan.inject_step == SpawnStep::signals) {
      child_fail(plan, SpawnStep::signals, plan.inject_err, sig);
    }
    if (::signal(sig, SIG_DFL) == SIG_ERR) child_fail(plan, SpawnStep::signals, errno, sig);
  }
  if (plan.address_limit != 0) {
    forced(SpawnStep::setrlimit);
    const rlimit rl{plan.address_limit, plan.address_limit};
    if (::setrlimit(RLIMIT_AS, &rl) != 0) child_fail(plan, SpawnStep::setrlimit, errno, 0);
  }
  forced(SpawnStep::execve);
  ::execve(plan.executable, plan.argv, plan.envp);
  child_fail(plan, SpawnStep::execve, errno, 0);
}

UniqueFd dup_above(std::string_view who, int fd, int above) {
  fail_if_injected(who, SpawnStep::dup);
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, above);
  if (copy < 0) {
    throw_spawn_error(who, SpawnStep::dup, errno, fmt::format(" of descriptor {}", fd));
  }
  return UniqueFd(copy);
}

}  // namespace

// ---- public helpers ------------------------------------------------------------------------

const char* spawn_step_name(SpawnStep step) noexcept {
  switch (step) {
    case SpawnStep::none:
      return "nothing";
    case SpawnStep::socketpair:
      return "socketpair";
    case SpawnStep::pipe:
      return "pipe2";
    case SpawnStep::open:
      return "open";
    case SpawnStep::dup:
      return "fcntl(F_DUPFD_CLOEXEC)";
    case SpawnStep::set_flags:
      return "fcntl(F_SETFL, O_NONBLOCK)";
    case SpawnStep::epoll_ctl:
      return "epoll_ctl(EPOLL_CTL_ADD)";
    case SpawnStep::error_pipe:
      return "the error pipe";
    case SpawnStep::fork:
      return "fork";
    case SpawnStep::pidfd_open:
      return "pidfd_open";
    case SpawnStep::pdeathsig:
      return "prctl(PR_SET_PDEATHSIG)";
    case SpawnStep::dup2:
      return "dup2";
    case SpawnStep::close_fds:
      return "closing inherited descriptors";
    case SpawnStep::sigmask:
      return "sigprocmask";
    case SpawnStep::signals:
      return "signal";
    case SpawnStep::setrlimit:
      return "setrlimit(RLIMIT_AS)";
    case SpawnStep::execve:
      return "execve";
    case SpawnStep::count_:
      break;
  }
  return "?";
}

void throw_spawn_error(std::string_view who, SpawnStep step, int err, std::string_view detail) {
  const char* name = ::strerrorname_np(err);
  const std::string why = hint(step, err);
  throw SpawnError(step, err,
                   fmt::format("{}: {}{}{} failed ({}: {}){}{}", who,
                               spawn_step_in_child(step) ? "in the new process, " : "",
                               spawn_step_name(step), detail, name != nullptr ? name : "?",
                               std::strerror(err), why.empty() ? "" : "; ", why));
}

FdPair make_socketpair(std::string_view who) {
  fail_if_injected(who, SpawnStep::socketpair);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    throw_spawn_error(who, SpawnStep::socketpair, errno);
  }
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

FdPair make_pipe(std::string_view who) {
  fail_if_injected(who, SpawnStep::pipe);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_spawn_error(who, SpawnStep::pipe, errno);
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

UniqueFd open_fd(std::string_view who, const char* path, int flags) {
  fail_if_injected(who, SpawnStep::open);
  const int fd = ::open(path, flags | O_CLOEXEC);
  if (fd < 0) throw_spawn_error(who, SpawnStep::open, errno, fmt::format(" of {}", path));
  return UniqueFd(fd);
}

void set_nonblocking(std::string_view who, int fd) {
  fail_if_injected(who, SpawnStep::set_flags);
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    throw_spawn_error(who, SpawnStep::set_flags, errno);
  }
}

void epoll_watch(std::string_view who, int epoll, int fd, std::uint64_t data) {
  fail_if_injected(who, SpawnStep::epoll_ctl);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = data;
  if (::epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev) != 0) {
    throw_spawn_error(who, SpawnStep::epoll_ctl, errno);
  }
}

int signal_process(int pidfd, int sig) noexcept {
  if (pidfd < 0) return EBADF;
  if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0U) == 0) return 0;
  return errno == ESRCH ? 0 : errno;
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    pid_ = std::exchange(o.pid_, -1);
    pidfd_ = std::move(o.pidfd_);
  }
  return *this;
}

void Child::kill_and_reap() noexcept {
  if (pid_ <= 0) return;
  // Without a pidfd (pidfd_open failed) the pid is still safe to use: our unreaped child's pid
  // cannot be reused.
  if (pidfd_) {
    signal_process(pidfd_.get(), SIGKILL);
  } else {
    ::kill(pid_, SIGKILL);
  }
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  pidfd_.reset();
}

int Child::wait() noexcept {
  int status = 0;
  if (pid_ > 0) {
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }
  return status;
}

void inject_spawn_failure(SpawnStep step, int err, unsigned skip) noexcept {
  Injection& i = injection();
  std::lock_guard lock(i.mutex);
  i.step = step;
  i.err = err;
  i.skip = skip;
  i.armed.store(step != SpawnStep::none, std::memory_order_release);
}

void force_close_mode(CloseMode mode) noexcept {
  g_close_mode.store(static_cast<int>(mode), std::memory_order_relaxed);
}

// ---- spawn_process ---------------------------------------------------------------------------

Child spawn_process(const SpawnRequest& r) {
  const std::string_view who = r.who;
  if (r.executable.empty() || r.argv.empty()) {
    throw std::invalid_argument(fmt::format("{}: spawn needs an executable and argv[0]", who));
  }
  int max_to = r.keep_stdio ? 2 : -1;
  for (std::size_t i = 0; i < r.fds.size(); ++i) {
    const int to = r.fds[i].to;
    const bool dup_target = std::any_of(r.fds.begin(), r.fds.begin() + static_cast<long>(i),
                                        [to](const FdMove& m) { return m.to == to; });
    if (to < 0 || (r.keep_stdio && to <= 2) || dup_target) {
      throw std::invalid_argument(fmt::format("{}: bad descriptor move to {}", who, to));
    }
    max_to = std::max(max_to, to);
  }
  const int close_from = max_to + 1;

  // Sources go above every target first, so no dup2 in the child overwrites one still to be
  // moved, whatever the numbering in this process.
  std::vector<UniqueFd> sources;
  std::vector<FdMove> moves;
  sources.reserve(r.fds.size());
  for (const FdMove& m : r.fds) {
    sources.push_back(dup_above(who, m.from, close_from));
    moves.push_back({sources.back().get(), m.to});
  }
  std::vector<int> close_low;
  for (int fd = r.keep_stdio ? 3 : 0; fd < close_from; ++fd) {
    if (std::none_of(moves.begin(), moves.end(), [fd](const FdMove& m) { return m.to == fd; })) {
      close_low.push_back(fd);
    }
  }
  // The child's report channel. Its write end sits above the targets as well, and is kept
  // through the closing; CLOEXEC closes it at execve, which is how the parent learns success.
  UniqueFd report_read, report_write;
  {
    fail_if_injected(who, SpawnStep::error_pipe);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_spawn_error(who, SpawnStep::error_pipe, errno);
    report_read.reset(p[0]);
    UniqueFd low(p[1]);
    report_write = dup_above(who, low.get(), close_from);
  }

  // execve takes char* const[] for historical reasons; it writes to none of them.
  std::vector<char*> argv, envp;
  for (const auto& a : r.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : r.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  rlimit nofile{};
  int loop_limit = kCloseLoopCap;
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
      nofile.rlim_cur < static_cast<rlim_t>(kCloseLoopCap)) {
    loop_limit = static_cast<int>(nofile.rlim_cur);
  }
  sigset_t none;
  sigemptyset(&none);

  ChildPlan plan{};
  plan.parent = ::getpid();
  plan.kill_with_thread = r.kill_with_thread;
  plan.executable = r.executable.c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.moves = moves.data();
  plan.move_count = moves.size();
  plan.close_low = close_low.data();
  plan.close_low_count = close_low.size();
  plan.close_from = close_from;
  plan.report_fd = report_write.get();
  plan.close_mode = static_cast<CloseMode>(g_close_mode.load(std::memory_order_relaxed));
  plan.close_loop_limit = loop_limit;
  plan.default_signals = r.default_signals.data();
  plan.default_signal_count = r.default_signals.size();
  plan.mask = &none;
  plan.address_limit = r.address_limit;
  plan.inject_step = SpawnStep::none;
  for (int s = static_cast<int>(SpawnStep::pdeathsig); s < static_cast<int>(SpawnStep::count_);
       ++s) {
    // Only a step this child will reach takes the injection.
    const auto step = static_cast<SpawnStep>(s);
    const bool reached = (step != SpawnStep::pdeathsig || r.kill_with_thread) &&
                         (step != SpawnStep::dup2 || !moves.empty()) &&
                         (step != SpawnStep::signals || !r.default_signals.empty()) &&
                         (step != SpawnStep::setrlimit || r.address_limit != 0);
    if (reached && take_injection(step, plan.inject_err)) {
      plan.inject_step = step;
      break;
    }
  }

  fail_if_injected(who, SpawnStep::fork);
  const pid_t pid = ::fork();
  if (pid == 0) child_main(plan);
  if (pid < 0) throw_spawn_error(who, SpawnStep::fork, errno);
  // The child has its copies; ours would keep the report pipe open forever.
  report_write.reset();
  sources.clear();

  int forced_err = 0;
  const bool forced = take_injection(SpawnStep::pidfd_open, forced_err);
  const int pidfd = forced ? -1 : static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U));
  if (pidfd < 0) {
    const int err = forced ? forced_err : errno;
    { Child unwatched(pid, UniqueFd()); }  // killed and reaped
    throw_spawn_error(who, SpawnStep::pidfd_open, err);
  }
  Child child(pid, UniqueFd(pidfd));  // from here on, any throw kills and reaps it

  // 0 bytes: execve succeeded and closed the write end. A report: the child's step failed.
  ChildReport report{};
  std::size_t got = 0;
  while (got < sizeof report) {
    const ssize_t n =
        ::read(report_read.get(), reinterpret_cast<char*>(&report) + got, sizeof report - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_spawn_error(who, SpawnStep::error_pipe, errno, " (reading it)");
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got == 0) return child;
  if (got != sizeof report || report.step < static_cast<int>(SpawnStep::pdeathsig) ||
      report.step >= static_cast<int>(SpawnStep::count_)) {
    throw_spawn_error(who, SpawnStep::error_pipe, EPROTO, " (a malformed report)");
  }
  const auto step = static_cast<SpawnStep>(report.step);
  throw_spawn_error(who, step, report.err, child_detail(report, r.executable));
}

}  // namespace crew::inline v0::detail
