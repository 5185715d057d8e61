// The supervisor loop (run), and reading what workers send: on the supervisor, or on a thread
// that waits for a result of this pool ("driving", drive()).
#include <algorithm>
#include <cerrno>
#include <utility>

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <crew/detail/futex.hpp>

#include "pool_core.hpp"

namespace crew::inline v0 {
namespace detail {

std::size_t ProcessPoolCore::live_procs() const {
  std::size_t n = 0;
  for (const auto& [serial, p] : procs_) n += p->state != WState::stopping ? 1 : 0;
  return n;
}

Clock::time_point ProcessPoolCore::next_deadline() const {
  Clock::time_point t = kNever;
  // An idle worker's timeout is a deadline only when it would stop it: past it, a worker the
  // pool keeps (min_workers) would wake this thread at once, again and again.
  const bool may_shrink = options_.idle_timeout.count() > 0 && live_procs() > options_.min_workers;
  for (const auto& [serial, p] : procs_) {
    t = std::min({t, p->deadline, p->kill_at, p->next_rss, p->next_sample});
    if (p->state == WState::idle && may_shrink) {
      t = std::min(t, p->idle_since + options_.idle_timeout);
    }
    if (p->ready_at != kNever && backoff_.unstable()) {
      t = std::min(t, p->ready_at + backoff_.stable_after());
    }
  }
  // A spawn waiting out its backoff; once the time has come, spawn_as_needed() acts at once.
  if (spawn_due_) t = std::min(t, backoff_.next());
  if (!retries_.empty()) t = std::min(t, retries_.begin()->first);
  return t;
}

void ProcessPoolCore::run() {
  ::prctl(PR_SET_NAME, (options_.name.substr(0, 11) + "-sup").c_str(), 0, 0, 0);
  std::vector<epoll_event> events(64);
  for (;;) {
    int timeout_ms;
    {
      std::lock_guard lock(mutex_);
      // Workers ring again from here on; what they sent before is read now.
      page_->supervisor_awake.store(0, std::memory_order_seq_cst);
      const bool more = poll_replies(Clock::now()) > 0;
      const auto deadline = more ? Clock::time_point::min() : next_deadline();
      sleep_until_ = deadline;
      kick_ = false;
      if (more) {
        timeout_ms = 0;
      } else if (deadline == kNever) {
        timeout_ms = -1;
      } else {
        const auto left = deadline - Clock::now();
        timeout_ms = left <= nanoseconds(0)
                         ? 0
                         : static_cast<int>(std::chrono::ceil<milliseconds>(left).count());
      }
      if (page_->drivers.load(std::memory_order_relaxed) != 0) {
        const int backstop = static_cast<int>(kDriverBackstop.count());
        timeout_ms = timeout_ms < 0 ? backstop : std::min(timeout_ms, backstop);
      }
    }
    const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), timeout_ms);
    page_->supervisor_awake.store(1, std::memory_order_relaxed);
    bool finished = false;
    std::vector<Settle> settles;
    std::vector<LogOut> logs;
    {
      std::unique_lock lock(mutex_);
      sleep_until_ = Clock::time_point::min();
      const auto now = Clock::now();
      for (int i = 0; i < n; ++i) handle_event(events[i].data.u64, now);
      if (n == 0) poll_replies(now);  // the backstop, or a deadline
      timers(now);
      promote_retries(now);
      // Cancellations: a queued call was already settled (skipped at dispatch); a running one
      // loses its worker; one waiting for its retry never runs again.
      for (const std::uint64_t id : std::exchange(cancels_, {})) {
        for (auto& [serial, p] : procs_) {
          if (p->current && p->current->id == id && p->reason == Reason::none) {
            ++cancelled_;
            ++p->errors;
            p->current.reset();
            stop_proc(*p, Reason::cancel, true, now);
          }
        }
        const auto waiting =
            std::ranges::find_if(retries_, [&](const auto& r) { return r.second->id == id; });
        if (waiting != retries_.end()) {
          ++cancelled_;
          retries_.erase(waiting);
        }
      }
      if (terminating_) {
        fail_queued([&] {
          return std::make_exception_ptr(PoolClosed(fmt::format(
              "crew::ProcessPool '{}': terminated while the task waited to run", options_.name)));
        });
        for (auto& [serial, p] : procs_) {
          if (p->current) {
            settles_.push_back({std::move(p->current),
                                std::make_exception_ptr(PoolClosed(
                                    fmt::format("crew::ProcessPool '{}': terminated while the "
                                                "task '{}' was running; its worker was killed",
                                                options_.name, p->current_task))),
                                std::nullopt});
            ++cancelled_;
          }
          if (p->reason != Reason::terminate) stop_proc(*p, Reason::terminate, true, now);
        }
      } else {
        dispatch(now);
        spawn_as_needed(now);
        if (closing_ && queued_ == 0 && retries_.empty()) {
          for (auto& [serial, p] : procs_) {
            if (p->state == WState::idle || p->state == WState::starting) {
              stop_proc(*p, Reason::shutdown, false, now);
            }
          }
        }
      }
      if (closing_ && queued_ == 0 && retries_.empty() && procs_.empty()) finished = true;
      settles = std::exchange(settles_, {});
      logs = std::exchange(logs_, {});
    }
    flush(std::move(settles), std::move(logs), &continuations_);
    if (finished) break;
  }
  std::lock_guard lock(mutex_);
  done_ = true;
  closed_cv_.notify_all();
}

void ProcessPoolCore::flush(std::vector<Settle> settles, std::vector<LogOut> logs,
                            ContinuationDeferral* deferral) {
  for (auto& s : settles) {
    if (s.result) {
      WireScope scope(&s.result->fds, nullptr);
      try {
        // One zone for every reply this thread reads: its memory is reused, not reallocated.
        thread_local msgpack::zone zone;
        zone.clear();
        s.call->deliver(unpack_payload(s.result->payload, zone), deferral);
      } catch (const std::exception& e) {
        s.call->fail(std::make_exception_ptr(WorkerCrashed(
                         fmt::format("crew::ProcessPool: the result of task '{}' could not be "
                                     "read: {}",
                                     s.call->task, e.what()),
                         s.call->task, 0, 0, -1, {})),
                     deferral);
      }
    } else {
      s.call->fail(std::move(s.error), deferral);  // the consumer must own the last reference
    }
  }
  settles.clear();
  for (auto& l : logs) {
    if (options_.log) {
      options_.log(ProcessLogLine{l.worker, l.pid, l.is_stderr, l.line});
    } else if (logger_) {
      logger_->log(l.is_stderr ? spdlog::level::warn : spdlog::level::info, "[{} pid {}] {}",
                   l.worker, l.pid, l.line);
    }
  }
}

void ProcessPoolCore::handle_event(std::uint64_t data, Clock::time_point now) {
  if (data == 0) {
    std::uint64_t v;
    while (::read(event_, &v, sizeof v) > 0) {
    }
    poll_replies(now);
    return;
  }
  const auto it = procs_.find(data >> 2);
  if (it == procs_.end()) return;
  Proc& p = *it->second;
  switch (data & 3) {
    case 1:
      on_output(p, 0);
      break;
    case 2:
      on_output(p, 1);
      break;
    case 3:
      on_exit(p, now);
      break;
  }
}

void ProcessPoolCore::wake_if_waiting(Proc& p, std::atomic<std::uint32_t>& flag) {
  // Pairs with the worker's "set the flag, then look once more" (both sides seq_cst).
  if (p.sock >= 0 && flag.exchange(0, std::memory_order_seq_cst) != 0) {
    try {
      p.channel->wake();
    } catch (const std::exception&) {  // the worker is going; its exit is handled
    }
  }
}

std::size_t ProcessPoolCore::on_channel(Proc& p, Clock::time_point now) {
  std::size_t frames = 0;
  while (p.sock >= 0) {
    Frame frame;
    RecvStatus st;
    try {
      st = p.channel->get(frame);
    } catch (const std::exception& e) {
      on_protocol_error(p, e.what());
      return frames + 1;
    }
    if (st == RecvStatus::would_block) {
      if (frames > 0) wake_if_waiting(p, p.page->wants_room);
      return frames;
    }
    if (st == RecvStatus::closed) {
      // The worker is exiting or closed its channel: it can serve no more. The exit event
      // (pidfd) settles whatever it was running.
      ::close(p.sock);
      p.sock = -1;
      if (p.state != WState::stopping) {
        p.state = WState::stopping;
        p.kill_at = std::min(p.kill_at, now + options_.terminate_grace);
        kick_ = true;
      }
      return frames + 1;
    }
    ++frames;
    p.full = false;
    on_frame(p, std::move(frame), now);
  }
  return frames;
}

std::size_t ProcessPoolCore::poll_replies(Clock::time_point now) {
  // Only a worker starting up or with tasks in flight has anything to say; what an idle worker
  // sends is read with its next reply (and is then a protocol error) or when it exits.
  std::size_t frames = 0;
  for (auto& [serial, pp] : procs_) {
    Proc& p = *pp;
    if (p.sock >= 0 && (p.state == WState::starting || p.current || !p.pending.empty()) &&
        p.channel->has_input()) {
      frames += on_channel(p, now);
    }
  }
  return frames;
}

bool ProcessPoolCore::needs_supervisor() const {
  // Only the supervisor forks, times tasks out, delivers log lines and winds the pool down.
  return kick_ || closing_ || !logs_.empty() ||
         (queued_ > 0 && live_procs() < options_.max_workers) || next_deadline() < sleep_until_;
}

void ProcessPoolCore::reap_as_driver(bool block) {
  std::vector<Settle> settles;
  bool wake_supervisor = false;
  {
    std::unique_lock lock(mutex_, std::defer_lock);
    if (block) {
      lock.lock();
    } else if (!lock.try_lock()) {
      return;
    }
    const auto now = Clock::now();
    if (poll_replies(now) > 0) {
      if (!closing_ && !terminating_) dispatch(now);
      wake_supervisor = needs_supervisor();
    }
    settles = std::exchange(settles_, {});
  }
  if (wake_supervisor) wake();
  // On a thread that waits for a result anyway: continuations run here, as a settling thread's.
  flush(std::move(settles), {}, nullptr);
}

void ProcessPoolCore::drive(const StateBase& state) noexcept {
  try {
    page_->drivers.fetch_add(1, std::memory_order_seq_cst);
    const auto until = Clock::now() + kDriveFor;
    for (int i = 1; !state.ready(); ++i) {
      reap_as_driver(false);
      if (state.ready()) break;
      cpu_relax();
      if ((i & 7) == 0 && Clock::now() >= until) break;
    }
    page_->drivers.fetch_sub(1, std::memory_order_seq_cst);
    // A worker that answered while we were counted did not ring: read what it sent.
    reap_as_driver(true);
  } catch (...) {
    // Out of memory while delivering: the supervisor still reads every reply.
    wake();
  }
}

void ProcessPoolCore::on_protocol_error(Proc& p, const std::string& what) {
  const auto now = Clock::now();
  if (p.current) {
    ++p.errors;
    fail_attempt(std::move(p.current),
                 std::make_exception_ptr(WorkerCrashed(
                     fmt::format("crew::ProcessPool: worker {} (pid {}) sent a malformed message "
                                 "while running task '{}' ({}); the worker was replaced",
                                 p.name, p.pid, p.current_task, what),
                     p.current_task, p.pid, 0, -1, {p.tail.begin(), p.tail.end()})),
                 failed_, true, now);
  }
  log_line(p, true, "crew: malformed message from this worker: " + what + "; killing it");
  stop_proc(p, Reason::protocol, true, now);
}

void ProcessPoolCore::on_frame(Proc& p, Frame frame, Clock::time_point now) {
  switch (frame.type) {
    case FrameType::ready:
      if (p.state != WState::starting) return on_protocol_error(p, "a second ready message");
      p.state = WState::idle;
      p.ready_at = now;
      p.idle_since = now;
      startup_failures_in_row_ = 0;
      breaker_open_ = false;
      return;
    case FrameType::result:
    case FrameType::error: {
      if (p.state != WState::busy && p.reason == Reason::none) {
        return on_protocol_error(p, "a reply while no task was running");
      }
      if (!p.current || frame.id != p.current->id) {
        // Its task already settled (timed out or cancelled) and the worker is on its way out.
        if (p.reason != Reason::none) return;
        return on_protocol_error(p, fmt::format("a reply for unknown task id {}", frame.id));
      }
      if (frame.type == FrameType::result) {
        ++completed_;
        settles_.push_back({std::move(p.current), nullptr, std::move(frame)});
        finish_task(p, now, false);
      } else {
        ErrorReply r;
        try {
          r = parse_error(frame.payload);
        } catch (const std::exception& e) {
          return on_protocol_error(p, e.what());
        }
        std::exception_ptr error;
        const std::string& task = p.current->task;
        switch (r.kind) {
          case ErrorKind::unknown_task:
            error = std::make_exception_ptr(BadArguments(r.message));
            break;
          case ErrorKind::bad_arguments:
            error = std::make_exception_ptr(BadArguments(
                p.current->given_types != nullptr
                    ? fmt::format("{}; the caller passed ({})", r.message, p.current->given_types())
                    : r.message));
            break;
          case ErrorKind::out_of_memory:
            error = options_.memory_limit_bytes != 0
                        ? std::make_exception_ptr(MemoryLimitExceeded(
                              fmt::format("crew::ProcessPool: task '{}' ran out of memory in "
                                          "worker {} (pid {}): memory_limit_bytes is {}",
                                          task, p.name, p.pid, options_.memory_limit_bytes),
                              options_.memory_limit_bytes))
                        : std::make_exception_ptr(
                              RemoteError(fmt::format("crew::ProcessPool: task '{}' threw {}: {}",
                                                      task, r.type, r.message),
                                          r.type, r.message));
            break;
          case ErrorKind::remote:
            error = std::make_exception_ptr(RemoteError(
                fmt::format("crew::ProcessPool: task '{}' threw {}: {}", task, r.type, r.message),
                r.type, r.message));
            break;
        }
        // Arguments the task cannot take stay wrong however often it runs.
        const bool may_retry =
            r.kind != ErrorKind::unknown_task && r.kind != ErrorKind::bad_arguments;
        fail_attempt(std::move(p.current), std::move(error), failed_, may_retry, now);
        finish_task(p, now, true);
        // After running out of memory the heap may be in no shape for more work.
        if (r.kind == ErrorKind::out_of_memory) stop_proc(p, Reason::memory_recycle, false, now);
      }
      return;
    }
    default:
      return on_protocol_error(p, "a frame type workers never send");
  }
}

void ProcessPoolCore::on_output(Proc& p, int which) {
  int& fd = which == 0 ? p.out : p.err;
  char buf[8192];
  for (;;) {
    const ssize_t n = fd >= 0 ? ::read(fd, buf, sizeof buf) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        if (fd >= 0) {
          ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
          ::close(fd);
          fd = -1;
        }
        if (!p.partial[which].empty()) log_line(p, which == 1, std::move(p.partial[which]));
        p.partial[which].clear();
      }
      return;
    }
    std::string& part = p.partial[which];
    part.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (;;) {
      const std::size_t nl = part.find('\n', start);
      if (nl == std::string::npos) break;
      log_line(p, which == 1, part.substr(start, nl - start));
      start = nl + 1;
    }
    part.erase(0, start);
    while (part.size() >= kMaxLine) {
      log_line(p, which == 1, part.substr(0, kMaxLine));
      part.erase(0, kMaxLine);
    }
  }
}

void ProcessPoolCore::log_line(Proc& p, bool is_stderr, std::string line) {
  if (is_stderr) {
    p.tail.push_back(line);
    if (p.tail.size() > kTailLines) p.tail.pop_front();
  }
  auto& log = slots_[p.slot].log;
  log.push_back(line);
  if (log.size() > kTailLines) log.pop_front();
  logs_.push_back({p.name, p.pid, is_stderr, std::move(line)});
}

}  // namespace detail
}  // namespace crew::inline v0
