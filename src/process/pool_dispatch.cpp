// The queue: handing calls to workers (pipelined when tasks are tiny), a task's start and end on
// its worker, and failed attempts that wait out their backoff before they are queued again.
#include <algorithm>
#include <span>
#include <utility>

#include <fmt/format.h>

#include "pool_core.hpp"

namespace crew::inline v0 {
namespace detail {

void ProcessPoolCore::dispatch(Clock::time_point now) {
  // Tiny tasks are pipelined: a worker gets its next requests before it answers the current one,
  // so it never waits for this thread between tasks. Longer tasks go one at a time, so a slow
  // task never holds back work another worker could start.
  const std::size_t depth = ewma_run_ns_ < kPipelineBelow.count() ? kPipelineDepth : 1;
  bool progress = true;
  while (progress && queued_ > 0) {
    progress = false;
    for (auto& [serial, pp] : procs_) {
      Proc& p = *pp;
      if ((p.state != WState::idle && p.state != WState::busy) || p.sock < 0 || p.full ||
          p.restart) {
        continue;
      }
      const std::size_t inflight = (p.current ? 1 : 0) + p.pending.size();
      if (inflight >= depth) continue;
      if (options_.max_tasks_per_worker != 0 &&
          p.tasks_done + inflight >= options_.max_tasks_per_worker) {
        continue;
      }
      CallPtr call = pop_queued();
      if (!call) return;
      if (!send_call(p, call, now)) continue;
      progress = true;
      if (p.current) {
        p.pending.push_back(std::move(call));
      } else {
        start_call(p, std::move(call), now);
      }
    }
  }
}

CallPtr ProcessPoolCore::pop_queued() {
  while (queued_ > 0) {
    auto it = queue_.begin();
    CallPtr call = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) queue_.erase(it);
    --queued_;
    if (!call->state().claimed()) return call;
    ++cancelled_;  // cancelled while queued
  }
  return nullptr;
}

bool ProcessPoolCore::send_call(Proc& p, CallPtr& call, Clock::time_point now) {
  msgpack::sbuffer payload(call->args.size() + call->task.size() + 16);
  msgpack::packer<msgpack::sbuffer> pk(payload);
  pk.pack_array(2);
  pk.pack(call->task);
  payload.write(call->args.data(), call->args.size());
  SendStatus sent;
  try {
    sent = p.channel->put(FrameType::request, call->id,
                          std::as_bytes(std::span(payload.data(), payload.size())), call->fds);
  } catch (const std::exception& e) {
    ++failed_;
    settles_.push_back(
        {std::move(call),
         std::make_exception_ptr(BadArguments(fmt::format(
             "crew::ProcessPool: the task's arguments could not be sent: {}", e.what()))),
         std::nullopt});
    return false;
  }
  if (sent == SendStatus::full && !p.current) {
    // Not even one request fits in an empty channel: the socket buffer
    // (net.core.wmem_default) is smaller than one frame.
    ++failed_;
    auto error = std::make_exception_ptr(WorkerCrashed(
        fmt::format("crew::ProcessPool: the request for task '{}' does not fit in the worker's "
                    "empty socket buffer; raise net.core.wmem_default",
                    call->task),
        call->task, p.pid, 0, -1, {}));
    settles_.push_back({std::move(call), std::move(error), std::nullopt});
    return false;
  }
  if (sent != SendStatus::sent) {
    // The worker is gone (the exit event cleans up) or busy with what it already has (its next
    // reply makes room): the task goes back in front of the queue.
    queue_[call->priority].push_front(std::move(call));
    ++queued_;
    if (sent == SendStatus::full) {
      p.full = true;
      return false;
    }
    if (p.state == WState::idle) p.state = WState::stopping;
    p.kill_at = std::min(p.kill_at, now + options_.terminate_grace);
    return false;
  }
  wake_if_waiting(p, p.page->asleep);
  return true;
}

void ProcessPoolCore::start_call(Proc& p, CallPtr call, Clock::time_point now) {
  // Kept until now in case the worker died before starting it and it had to be sent again, and
  // kept while attempts are left, for a retry.
  if (++call->started >= call->attempts) {
    call->fds.close_all();
    call->args = msgpack::sbuffer(0);
  }
  wait_hist_.record(now - call->submitted);
  p.state = WState::busy;
  p.busy_since = now;
  p.current_task = call->task;
  p.deadline = call->timeout.count() > 0 ? now + call->timeout : kNever;
  p.next_rss = options_.memory_limit_bytes != 0 ? now + kRssPoll : kNever;
  p.current = std::move(call);
}

void ProcessPoolCore::requeue_pending(Proc& p) {
  while (!p.pending.empty()) {
    CallPtr c = std::move(p.pending.back());
    p.pending.pop_back();
    queue_[c->priority].push_front(std::move(c));
    ++queued_;
  }
}

void ProcessPoolCore::finish_task(Proc& p, Clock::time_point now, bool failed) {
  const auto ran = now - p.busy_since;
  run_hist_.record(ran);
  busy_total_ += ran;
  ewma_run_ns_ += (std::chrono::duration_cast<nanoseconds>(ran).count() - ewma_run_ns_) / 8;
  ++p.tasks_done;
  if (failed) ++p.errors;
  p.deadline = kNever;
  p.next_rss = kNever;
  if (!p.pending.empty()) {
    CallPtr next = std::move(p.pending.front());
    p.pending.pop_front();
    start_call(p, std::move(next), now);
    return;
  }
  if (p.restart) {
    stop_proc(p, Reason::restart, false, now);
    return;
  }
  p.state = WState::idle;
  p.idle_since = now;
  if (options_.max_rss_restart_bytes != 0) p.rss = resident_memory_bytes(p.pid);
  if (options_.max_tasks_per_worker != 0 && p.tasks_done >= options_.max_tasks_per_worker) {
    stop_proc(p, Reason::recycle, false, now);
  } else if (options_.max_rss_restart_bytes != 0 && p.rss > options_.max_rss_restart_bytes) {
    log_line(p, true,
             fmt::format("crew: resident memory {} bytes is above max_rss_restart_bytes {}; "
                         "replacing this worker",
                         p.rss, options_.max_rss_restart_bytes));
    stop_proc(p, Reason::memory_recycle, false, now);
  }
}

void ProcessPoolCore::fail_attempt(CallPtr call, std::exception_ptr error, std::uint64_t& counter,
                                   bool may_retry, Clock::time_point now) {
  if (may_retry && call->started < call->attempts && !call->state().claimed()) {
    const double random = call->backoff.jitter > 0.0
                              ? std::uniform_real_distribution<double>(0.0, 1.0)(jitter_random_)
                              : 0.0;
    retries_.emplace(now + backoff_delay(call->backoff, call->started, random), std::move(call));
    ++retried_;
    return;
  }
  ++counter;
  settles_.push_back({std::move(call), std::move(error), std::nullopt});
}

void ProcessPoolCore::promote_retries(Clock::time_point now) {
  // Behind the calls already waiting at the same priority, as a new submission would be.
  while (!retries_.empty() && retries_.begin()->first <= now) {
    CallPtr call = std::move(retries_.begin()->second);
    retries_.erase(retries_.begin());
    if (call->state().claimed()) {
      ++cancelled_;  // cancelled while it waited; its cancellation may not have arrived yet
      continue;
    }
    call->submitted = now;
    queue_[call->priority].push_back(std::move(call));
    ++queued_;
  }
}

void ProcessPoolCore::fail_queued(const std::function<std::exception_ptr()>& error) {
  for (auto& [prio, q] : queue_) {
    for (auto& c : q) {
      if (c->state().claimed()) {
        ++cancelled_;
      } else {
        ++cancelled_;
        settles_.push_back({std::move(c), error(), std::nullopt});
      }
    }
    q.clear();
  }
  queue_.clear();
  queued_ = 0;
  for (auto& [due, c] : retries_) {
    ++cancelled_;
    if (!c->state().claimed()) settles_.push_back({std::move(c), error(), std::nullopt});
  }
  retries_.clear();
}

}  // namespace detail
}  // namespace crew::inline v0
