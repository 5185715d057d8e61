// Starting workers: how many, in which slot, and backing off (then the breaker) when they fail to
// start. Every fork happens on the supervisor thread (see the constructor).
#include <algorithm>
#include <new>
#include <utility>

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/epoll.h>

#include "pool_core.hpp"
#include "spawn.hpp"

namespace crew::inline v0 {
namespace detail {

void ProcessPoolCore::spawn_as_needed(Clock::time_point now) {
  spawn_due_ = !backoff_.may_start(now);
  if (spawn_due_) return;
  if (closing_) owed_slots_.clear();
  for (;;) {
    std::size_t live = 0, available = 0;
    for (const auto& [serial, p] : procs_) {
      // A worker we stopped is replaced at once; one that closed its channel by itself counts
      // until its exit is seen, so that a start-up failure backs off before the next attempt.
      if (p->state == WState::stopping && p->reason != Reason::none) continue;
      if (p->state == WState::stopping) return;  // its exit decides whether to back off
      ++live;
      if (p->state == WState::idle || p->state == WState::starting) ++available;
    }
    if (breaker_open_) {
      // Half-open: one probe worker at a time, only when there is something to run.
      if (live > 0 || queued_ == 0) return;
    }
    const bool below_min = live < options_.min_workers && !closing_;
    const bool demand = queued_ > available && live < options_.max_workers;
    // A slot owed a replacement is filled first, while the pool has room for it.
    auto owed =
        std::ranges::find_if(owed_slots_, [&](std::size_t k) { return slots_[k].holder == 0; });
    std::optional<std::size_t> slot;
    if (owed != owed_slots_.end()) {
      if (live < options_.max_workers) slot = *owed;
      owed_slots_.erase(owed);
    }
    if (!below_min && !demand && !slot) return;
    try {
      spawn(now, slot);
    } catch (const std::exception& e) {
      // Nothing was started (spawn() leaves nothing open behind). Counted like a worker that
      // died before it was ready: the next try backs off, and enough failures in a row fail
      // what waits with this reason. Logged at once either way, so it is never silent.
      logs_.push_back(
          {options_.name, 0, true, fmt::format("crew: could not start a worker: {}", e.what())});
      startup_failed(e.what(), now);
      spawn_due_ = true;
      return;
    }
    if (backoff_.unstable() || breaker_open_) return;  // one at a time while unstable
  }
}

void ProcessPoolCore::spawn(Clock::time_point now, std::optional<std::size_t> wanted) {
  std::size_t slot = 0;
  if (wanted) {
    slot = *wanted;
  } else {
    while (slot < slots_.size() && slots_[slot].holder != 0) ++slot;
    if (slot == slots_.size()) slots_.emplace_back();
  }
  auto p = std::make_unique<Proc>();
  const std::uint64_t serial = next_serial_++;
  p->serial = serial;
  p->slot = slot;
  p->name = fmt::format("{}-{}", options_.name, slot);
  p->started = now;
  if (options_.leak_watch) {
    p->leak.emplace(*options_.leak_watch);
    p->next_sample = now;
  }

  // Every descriptor is owned until the end: a step that throws closes all of them, and a
  // started child is killed and reaped (Child).
  FdPair channel = make_socketpair(kWho);
  FdPair out = make_pipe(kWho);
  FdPair err = make_pipe(kWho);
  UniqueFd devnull = open_fd(kWho, "/dev/null", O_RDONLY);
  p->shared = SharedBuffer::create(kWorkerPageSize, {.across_processes = true});
  p->page = new (p->shared.data()) WorkerPage;
  for (int fd : {channel.first.get(), out.first.get(), err.first.get()}) set_nonblocking(kWho, fd);

  SpawnRequest request;
  request.who = kWho;
  request.executable = executable_;
  request.argv.push_back(executable_);
  request.argv.insert(request.argv.end(), options_.args.begin(), options_.args.end());
  request.env = base_env_;
  request.env.push_back(fmt::format("{}={}", kWorkerFdEnv, 3));
  request.env.push_back(fmt::format("{}={}", kWorkerNameEnv, p->name));
  request.fds = {{devnull.get(), 0},
                 {out.second.get(), 1},
                 {err.second.get(), 2},
                 {channel.second.get(), 3},
                 {event_, kWorkerDoorbellFd},
                 {page_fd_, kWorkerPageFd},
                 {p->shared.fd(), kWorkerOwnPageFd}};
  request.default_signals = {SIGPIPE, SIGINT, SIGTERM, SIGCHLD, SIGHUP};
  request.address_limit = kUseAddressLimit ? options_.memory_limit_bytes : 0;
  Child child = spawn_process(request);
  // The worker has its own copies now; ours would hide its exit from the pipes and the socket.
  devnull.reset();
  out.second.reset();
  err.second.reset();
  channel.second.reset();

  const std::uint64_t tag = p->serial << 2;
  std::vector<int> watched;
  try {
    for (const auto& [fd, kind] :
         {std::pair{out.first.get(), 1}, {err.first.get(), 2}, {child.pidfd(), 3}}) {
      epoll_watch(kWho, epoll_, fd, tag | static_cast<std::uint64_t>(kind));
      watched.push_back(fd);
    }
    Proc& q = *procs_.emplace(p->serial, std::move(p)).first->second;
    // Nothing below throws.
    q.pid = child.pid();
    q.pidfd = child.release().release();
    q.sock = channel.first.release();
    q.out = out.first.release();
    q.err = err.first.release();
    q.channel.emplace(q.sock, &q.page->requests, &q.page->replies, false);
  } catch (...) {
    for (int fd : watched) ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
    throw;
  }
  slots_[slot].holder = serial;
  if (slots_[slot].processes++ > 0 || spawned_ >= options_.min_workers) ++restarts_;
  ++spawned_;
}

void ProcessPoolCore::startup_failed(std::string why, Clock::time_point now) {
  ++startup_failures_;
  ++startup_failures_in_row_;
  last_startup_error_ = std::move(why);
  backoff_.fail(now);
  if (startup_failures_in_row_ >= options_.max_startup_failures) {
    // The breaker: what waits fails with the reason; the next try is after the longest delay.
    breaker_open_ = true;
    backoff_.hold(now);
    fail_queued([&] { return breaker_error(); });
  }
}

void ProcessPoolCore::release_slot(Proc& p) {
  if (slots_[p.slot].holder == p.serial) slots_[p.slot].holder = 0;
}

}  // namespace detail
}  // namespace crew::inline v0
