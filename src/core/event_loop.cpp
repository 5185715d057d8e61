#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <crew/errors.hpp>
#include <crew/event_loop.hpp>

namespace crew::inline v0 {

namespace detail {
class EventLoopCore {
 public:
  std::mutex mu;
  std::condition_variable wake;
  // Everything below is guarded by `mu` (closed is also read without it, by closed()).
  std::deque<UniqueFunction> queue;
  std::function<void(std::exception_ptr)> on_error;
  std::thread::id runner;  // the thread inside a run-family call, if any
  bool stop_requested = false;
  bool sleeping = false;  // the runner is blocked on `wake`
  std::atomic<bool> closed{false};
};
}  // namespace detail

namespace {
// The loops the calling thread is running, innermost first (a callback of one loop may run
// another loop), for running_in_this_thread().
struct RunFrame {
  const detail::EventLoopCore* core;
  RunFrame* outer;
};
thread_local RunFrame* t_frames = nullptr;

// Claims the loop for this thread for the length of one run-family call.
class RunScope {
 public:
  RunScope(detail::EventLoopCore& core, const char* what) : core_(core), frame_{&core, t_frames} {
    std::lock_guard lock(core.mu);
    if (core.runner == std::this_thread::get_id()) {
      throw std::logic_error(std::string("crew::EventLoop::") + what +
                             ": called from inside one of the loop's own callbacks; the loop "
                             "does not nest");
    }
    if (core.runner != std::thread::id{}) {
      throw std::logic_error(std::string("crew::EventLoop::") + what +
                             ": the loop is already running on another thread; an EventLoop "
                             "runs on one thread at a time");
    }
    core.runner = std::this_thread::get_id();
    t_frames = &frame_;
  }
  RunScope(const RunScope&) = delete;
  RunScope& operator=(const RunScope&) = delete;
  ~RunScope() {
    t_frames = frame_.outer;
    std::lock_guard lock(core_.mu);
    core_.runner = std::thread::id{};
  }

 private:
  detail::EventLoopCore& core_;
  RunFrame frame_;
};

std::string describe(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}
}  // namespace

EventLoop::EventLoop() : core_(std::make_unique<detail::EventLoopCore>()) {}

EventLoop::~EventLoop() {
  close();
  try {
    run_loop(nullptr, std::nullopt, Mode::drain);
  } catch (const std::exception& e) {
    // Only RunScope throws in drain mode: the loop is being destroyed while it runs.
    std::fprintf(stderr, "crew::EventLoop: not drained on destruction: %s\n", e.what());
  }
}

void EventLoop::enqueue(detail::UniqueFunction fn) {
  auto& c = *core_;
  bool wake = false;
  {
    std::lock_guard lock(c.mu);
    // The loop's own thread may still post while it drains, so continuations can finish.
    if (c.closed.load(std::memory_order_relaxed) && c.runner != std::this_thread::get_id()) {
      throw PoolClosed("crew::EventLoop::post: the EventLoop is closed and accepts no callbacks");
    }
    c.queue.push_back(std::move(fn));
    // `sleeping` is set under the lock before the runner waits, so a push made after it is
    // always followed by a notify: the wake-up cannot be lost.
    wake = std::exchange(c.sleeping, false);
  }
  if (wake) c.wake.notify_one();
}

std::size_t EventLoop::run() {
  return run_loop(nullptr, std::nullopt, Mode::run);
}

std::size_t EventLoop::poll() {
  return run_loop(nullptr, std::nullopt, Mode::poll);
}

void EventLoop::stop() noexcept {
  auto& c = *core_;
  bool wake = false;
  {
    std::lock_guard lock(c.mu);
    c.stop_requested = true;
    wake = std::exchange(c.sleeping, false);
  }
  if (wake) c.wake.notify_one();
}

void EventLoop::close() noexcept {
  auto& c = *core_;
  bool wake = false;
  {
    std::lock_guard lock(c.mu);
    c.closed.store(true, std::memory_order_relaxed);
    wake = std::exchange(c.sleeping, false);
  }
  if (wake) c.wake.notify_one();
}

bool EventLoop::closed() const noexcept {
  return core_->closed.load(std::memory_order_relaxed);
}

void EventLoop::on_error(std::function<void(std::exception_ptr)> handler) {
  std::lock_guard lock(core_->mu);
  core_->on_error = std::move(handler);
}

bool EventLoop::running_in_this_thread() const noexcept {
  for (const RunFrame* f = t_frames; f != nullptr; f = f->outer) {
    if (f->core == core_.get()) return true;
  }
  return false;
}

std::size_t EventLoop::run_loop(detail::LoopPredicate* done,
                                std::optional<std::chrono::steady_clock::time_point> deadline,
                                Mode mode) {
  auto& c = *core_;
  const char* what = mode == Mode::poll ? "poll" : "run";
  RunScope scope(c, what);
  std::size_t ran = 0;
  // poll() runs only what was queued when it was called, so a callback that re-posts itself
  // cannot keep it from returning.
  std::size_t budget = std::numeric_limits<std::size_t>::max();
  if (mode == Mode::poll) {
    std::lock_guard lock(c.mu);
    budget = c.queue.size();
  }
  for (;;) {
    if (done != nullptr && done->test(done->self)) return ran;
    detail::UniqueFunction fn;
    {
      std::unique_lock lock(c.mu);
      if (mode != Mode::drain && c.stop_requested) {
        c.stop_requested = false;
        return ran;
      }
      if (deadline && std::chrono::steady_clock::now() >= *deadline) return ran;
      if (!c.queue.empty() && budget > 0) {
        fn = std::move(c.queue.front());
        c.queue.pop_front();
        --budget;
      } else if (mode != Mode::run || c.closed.load(std::memory_order_relaxed)) {
        return ran;
      } else {
        c.sleeping = true;
        if (deadline) {
          c.wake.wait_until(lock, *deadline);
        } else {
          c.wake.wait(lock);
        }
        c.sleeping = false;
        continue;  // re-check the predicate, stop and the deadline
      }
    }
    ++ran;
    std::exception_ptr error;
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
    fn = detail::UniqueFunction();  // destroyed here, on the loop thread, before reporting
    if (!error) continue;
    std::function<void(std::exception_ptr)> handler;
    {
      std::lock_guard lock(c.mu);
      handler = c.on_error;
    }
    if (mode == Mode::drain) {
      // The destructor must not throw: report what nobody else will.
      try {
        if (!handler) std::rethrow_exception(error);
        handler(error);
      } catch (...) {
        std::fprintf(stderr, "crew::EventLoop: a callback threw while the loop was destroyed: %s\n",
                     describe(std::current_exception()).c_str());
      }
    } else if (handler) {
      handler(std::move(error));
    } else {
      std::rethrow_exception(std::move(error));
    }
  }
}

}  // namespace crew::inline v0
