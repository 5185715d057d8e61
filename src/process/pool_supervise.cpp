// Watching workers: task deadlines, memory caps and leaks, idle workers past idle_timeout;
// stopping a worker, and what its exit means for the task it ran.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool_core.hpp"
#include "spawn.hpp"

namespace crew::inline v0 {
namespace detail {

namespace {

ProcessExitReason exit_reason(Reason reason, int signal) {
  switch (reason) {
    case Reason::timeout:
      return ProcessExitReason::timeout;
    case Reason::memory:
    case Reason::memory_recycle:
      return ProcessExitReason::memory;
    case Reason::none:
    case Reason::protocol:  // killed for what it sent, not on anyone's request
      return signal != 0 ? ProcessExitReason::signal : ProcessExitReason::exit;
    case Reason::cancel:
    case Reason::recycle:
    case Reason::restart:
    case Reason::shutdown:
    case Reason::terminate:
      return ProcessExitReason::stop;
  }
  return ProcessExitReason::exit;
}

std::string describe_exit(int code, int signal) {
  if (signal != 0) {
    const char* name = ::sigabbrev_np(signal);
    return fmt::format("killed by signal {} (SIG{})", signal, name != nullptr ? name : "?");
  }
  if (code >= 0) return fmt::format("exited with code {}", code);
  return "exited (status not available)";
}

std::string tail_text(const std::deque<std::string>& tail) {
  if (tail.empty()) return " (no stderr output)";
  std::string out = "; last stderr lines:";
  for (const auto& l : tail) out += "\n  | " + l;
  return out;
}

}  // namespace

void ProcessPoolCore::timers(Clock::time_point now) {
  if (backoff_.unstable()) {
    for (auto& [serial, p] : procs_) {
      if (p->ready_at != kNever) backoff_.up_for(now - p->ready_at);
    }
  }
  std::size_t idle_above_min =
      live_procs() > options_.min_workers ? live_procs() - options_.min_workers : 0;
  for (auto& [serial, pp] : procs_) {
    Proc& p = *pp;
    if (p.state == WState::busy && p.deadline <= now) {
      ++p.errors;
      fail_attempt(std::move(p.current),
                   std::make_exception_ptr(TimedOut(fmt::format(
                       "crew::ProcessPool: task '{}' timed out after {} ms; its worker {} (pid {}) "
                       "was stopped (SIGTERM, SIGKILL after {} ms) and is replaced",
                       p.current_task,
                       std::chrono::duration_cast<milliseconds>(p.deadline - p.busy_since).count(),
                       p.name, p.pid, options_.terminate_grace.count()))),
                   timed_out_, true, now);
      signal_worker(p, SIGTERM);
      p.reason = Reason::timeout;
      requeue_pending(p);
      release_slot(p);
      p.state = WState::stopping;
      p.deadline = kNever;
      p.next_rss = kNever;
      p.kill_at = now + options_.terminate_grace;
    }
    if (p.state == WState::busy && p.next_rss <= now) {
      p.rss = resident_memory_bytes(p.pid);
      if (p.rss > options_.memory_limit_bytes) {
        log_line(p, true,
                 fmt::format("crew: resident memory {} bytes is above memory_limit_bytes {}; "
                             "killing this worker",
                             p.rss, options_.memory_limit_bytes));
        stop_proc(p, Reason::memory, true, now);
      } else {
        p.next_rss = now + kRssPoll;
      }
    }
    if (p.leak && p.next_sample <= now) sample_memory(p, now);
    if (p.state == WState::stopping && p.kill_at <= now && !p.killed) {
      signal_worker(p, SIGKILL);
      p.killed = true;
      p.kill_at = kNever;
    }
    if (p.state == WState::idle && options_.idle_timeout.count() > 0 && idle_above_min > 0 &&
        now - p.idle_since >= options_.idle_timeout && queued_ == 0) {
      --idle_above_min;
      stop_proc(p, Reason::shutdown, false, now);
    }
  }
}

void ProcessPoolCore::stop_proc(Proc& p, Reason reason, bool force, Clock::time_point now) {
  kick_ = true;
  requeue_pending(p);
  release_slot(p);
  if (p.reason == Reason::none || reason == Reason::terminate) p.reason = reason;
  p.state = WState::stopping;
  p.deadline = kNever;
  p.next_rss = kNever;
  if (force) {
    signal_worker(p, SIGKILL);
    p.killed = true;
    p.kill_at = kNever;
    return;
  }
  if (p.sock >= 0) {
    try {
      if (p.channel->put(FrameType::shutdown, 0, {}, FdList{}) == SendStatus::sent) {
        wake_if_waiting(p, p.page->asleep);
      }
    } catch (const std::exception&) {  // the grace timer below still stops it
    }
  }
  p.kill_at = std::min(p.kill_at, now + options_.terminate_grace);
}

void ProcessPoolCore::signal_worker(Proc& p, int sig) {
  // Through the pidfd: the pid of a worker reaped meanwhile could name another process.
  const int err = signal_process(p.pidfd, sig);
  if (err != 0) {
    const char* name = ::sigabbrev_np(sig);
    log_line(p, true,
             fmt::format("crew: could not send SIG{} to this worker: pidfd_send_signal failed "
                         "({}: {})",
                         name != nullptr ? name : "?", ::strerrorname_np(err), std::strerror(err)));
  }
}

void ProcessPoolCore::on_exit(Proc& p, Clock::time_point now) {
  // Whatever the worker sent or printed before it died comes first.
  on_channel(p, now);
  on_output(p, 0);
  on_output(p, 1);
  requeue_pending(p);  // sent but never started: they run on another worker
  int code = -1, sig = 0;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(p.pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r == p.pid) {
    if (WIFEXITED(status)) code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) sig = WTERMSIG(status);
  }
  const std::string how = describe_exit(code, sig);
  const bool before_ready = p.ready_at == kNever;

  if (p.current) {
    if (p.reason == Reason::memory) {
      fail_attempt(std::move(p.current),
                   std::make_exception_ptr(MemoryLimitExceeded(
                       fmt::format("crew::ProcessPool: task '{}' went over memory_limit_bytes ({} "
                                   "bytes) in worker {} (pid {}), which was {}",
                                   p.current_task, options_.memory_limit_bytes, p.name, p.pid, how),
                       options_.memory_limit_bytes)),
                   failed_, true, now);
    } else {
      ++crashed_;
      // Out of address space inside an allocation often ends in one of these signals.
      const bool maybe_memory = options_.memory_limit_bytes != 0 && kUseAddressLimit &&
                                (sig == SIGSEGV || sig == SIGABRT || sig == SIGBUS);
      fail_attempt(
          std::move(p.current),
          std::make_exception_ptr(WorkerCrashed(
              fmt::format("crew::ProcessPool: worker {} (pid {}) running task '{}' {}{}{}", p.name,
                          p.pid, p.current_task, how,
                          maybe_memory ? fmt::format(" (its memory cap of {} bytes may have "
                                                     "been hit)",
                                                     options_.memory_limit_bytes)
                                       : "",
                          tail_text(p.tail)),
              p.current_task, p.pid, sig, sig != 0 ? -1 : code, {p.tail.begin(), p.tail.end()})),
          failed_, true, now);
    }
    ++p.errors;
  }

  if (before_ready && p.reason == Reason::none) {
    startup_failed(fmt::format("worker {} (pid {}) {} before it was ready{}", p.name, p.pid, how,
                               tail_text(p.tail)),
                   now);
  } else if (p.reason == Reason::none && p.current_task.empty() &&
             now - p.ready_at < backoff_.stable_after()) {
    // Died idle soon after starting: unstable, so restarts back off.
    backoff_.fail(now);
  }

  for (int* fd : {&p.sock, &p.out, &p.err, &p.pidfd}) {
    if (*fd >= 0) {
      ::epoll_ctl(epoll_, EPOLL_CTL_DEL, *fd, nullptr);
      ::close(*fd);
      *fd = -1;
    }
  }
  p.channel.reset();
  slots_[p.slot].last_exit = ProcessExit{sig, sig != 0 ? -1 : code, exit_reason(p.reason, sig),
                                         std::chrono::system_clock::now()};
  release_slot(p);
  procs_.erase(p.serial);
}

void ProcessPoolCore::sample_memory(Proc& p, Clock::time_point now) {
  const auto& o = *options_.leak_watch;
  p.next_sample = p.state == WState::stopping ? kNever : now + o.window / (3 * o.spans);
  if (p.state == WState::stopping) return;
  const bool before = p.leak->suspected();
  if (!p.leak->observe(now, resident_memory_bytes(p.pid)) || before) return;
  ++leaks_suspected_;
  log_line(p, true,
           fmt::format("crew: this worker's lowest resident memory has risen for {} ms, by {:.0f} "
                       "KB/s, and is {} bytes now: a leak? (ProcessPoolOptions::leak_watch; "
                       "max_rss_restart_bytes replaces such a worker)",
                       o.window.count(), p.leak->bytes_per_second() / 1024,
                       resident_memory_bytes(p.pid)));
}

}  // namespace detail
}  // namespace crew::inline v0
