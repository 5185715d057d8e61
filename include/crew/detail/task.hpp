// Tasks as the scheduler sees them: one allocation holding the callable, its arguments and, for
// run(), the Future's shared state.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

#include <crew/detail/state.hpp>
#include <crew/errors.hpp>

namespace crew::inline v0::detail {

/// How a task ended, for the pool's counters. timed_out comes from a settle that lost to the
/// timer (which counted it already).
enum class Outcome : std::uint8_t { completed, failed, cancelled, timed_out };

/// Memory for tasks, recycled per thread (see src/core/task_alloc.cpp).
void* allocate_task(std::size_t size);
void deallocate_task(void* p, std::size_t size) noexcept;
/// Returns recycled task memory beyond a small reserve; called when a pool thread goes idle.
void trim_task_memory() noexcept;

/// The link of the pool's intrusive shared queue.
struct QueueNode {
  std::atomic<QueueNode*> next{nullptr};
};

/// A unit of work in a pool's queues. The queue owns one reference, dropped with drop().
class Task : public QueueNode {
 public:
  // Every task type (and, through its virtual destructor, a FutureTask deleted as a StateBase)
  // allocates through these.
  static void* operator new(std::size_t size) { return allocate_task(size); }
  static void operator delete(void* p, std::size_t size) noexcept { deallocate_task(p, size); }

  Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  /// Runs the body and settles. A fire-and-forget task's exception goes to `*unobserved`.
  virtual Outcome run(std::exception_ptr* unobserved) noexcept = 0;
  /// Settles without running (terminate). Returns how the task should be counted.
  virtual void reject(std::exception_ptr why) noexcept = 0;
  /// Already settled (cancelled while queued): skip it.
  [[nodiscard]] virtual bool settled() const noexcept { return false; }
  /// The timeout passed while running: settle with TimedOut, bump `timed_out` (before the Future
  /// is ready, so a waiter woken by it sees the count) and request stop. The Future's
  /// continuation, if any, goes through `deferral` (never runs on the timer thread).
  virtual void expire(ContinuationDeferral* /*deferral*/,
                      std::atomic<std::uint64_t>& /*timed_out*/) noexcept {}
  /// Takes a reference for the timer thread, which expires a task outside its lock (the task may
  /// finish and be dropped meanwhile); released with drop(). Only timed tasks are ever retained.
  virtual void retain() noexcept {}
  /// terminate() while running: request stop on the task's token.
  virtual void request_stop() noexcept {}
  [[nodiscard]] virtual bool stop_aware() const noexcept { return false; }
  /// Drops the queue's reference (named apart from StateBase::destroy, which FutureTask also has).
  virtual void drop() noexcept = 0;

  std::uint64_t enqueued_ticks = 0;
  std::chrono::nanoseconds timeout{0};
  int priority = 0;
  /// A timed task's race between returning and being found stuck (ThreadPool): kRunning until
  /// one of them moves it to kStuck or kReturned.
  enum Phase : std::uint8_t { kRunning, kStuck, kReturned };
  std::atomic<std::uint8_t> phase{kRunning};

 protected:
  ~Task() = default;
};

std::exception_ptr make_timed_out(std::chrono::nanoseconds timeout);

/// A task that settles a Future<R>. `Fn` is called as fn() or, when kStopAware, fn(stop_token).
template <class R, class Fn, bool kStopAware>
class FutureTask final : public State<R>, public Task {
 public:
  FutureTask(Fn&& fn, int prio, std::chrono::nanoseconds limit, const std::stop_token& user_stop)
      : fn_(std::move(fn)) {
    priority = prio;
    timeout = limit;
    // Registered last: if the token already fired, the callback cancels us right here.
    if (user_stop.stop_possible()) {
      user_stop_ =
          std::make_unique<std::stop_callback<CancelOnStop>>(user_stop, CancelOnStop{this});
    }
  }

  Outcome run(std::exception_ptr* /*unobserved*/) noexcept override {
    std::exception_ptr error;
    try {
      if constexpr (std::is_void_v<R>) {
        invoke();
        return this->set_value() ? Outcome::completed : lost();
      } else {
        return this->set_value(invoke()) ? Outcome::completed : lost();
      }
    } catch (...) {
      error = std::current_exception();
    }
    // Settled after the catch block has ended, so this thread holds no reference to the exception
    // once the Future is ready.
    return this->set_exception(std::move(error)) ? Outcome::failed : lost();
  }
  void reject(std::exception_ptr why) noexcept override { this->set_exception(std::move(why)); }
  [[nodiscard]] bool settled() const noexcept override { return this->claimed(); }
  void expire(ContinuationDeferral* deferral,
              std::atomic<std::uint64_t>& timed_out) noexcept override {
    auto error = make_timed_out(timeout);
    if (this->try_claim_timeout()) {
      // Only the timer thread writes this counter.
      timed_out.store(timed_out.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      this->error_ = std::move(error);
      this->publish(deferral);
    }
    request_stop();
  }
  void retain() noexcept override { this->add_ref(); }
  void request_stop() noexcept override {
    if constexpr (kStopAware) stop_.request_stop();
  }
  [[nodiscard]] bool stop_aware() const noexcept override { return kStopAware; }
  bool cancel() noexcept override {
    // Stop is requested before the result is published: publishing may run a continuation that
    // drops the last reference, and the stop callback that calls us holds none.
    auto error = std::make_exception_ptr(Cancelled());
    if (!this->try_claim()) {
      request_stop();
      return false;
    }
    this->error_ = std::move(error);
    request_stop();
    this->publish();
    return true;
  }
  void drop() noexcept override { this->release(); }

 private:
  struct CancelOnStop {
    FutureTask* self;
    void operator()() const noexcept { self->cancel(); }
  };
  // The task's own result came too late: who settled first says how it counts.
  Outcome lost() const noexcept {
    return this->timed_out_claim() ? Outcome::timed_out : Outcome::cancelled;
  }
  decltype(auto) invoke() {
    if constexpr (kStopAware) {
      return std::invoke(fn_, stop_.get_token());
    } else {
      return std::invoke(fn_);
    }
  }

  Fn fn_;
  [[no_unique_address]] std::conditional_t<kStopAware, std::stop_source, std::monostate> stop_{};
  // Separate allocation: only tasks given a RunOptions::stop pay for it.
  std::unique_ptr<std::stop_callback<CancelOnStop>> user_stop_;
};

/// A fire-and-forget task: no Future; an exception is handed to the pool's error handler.
template <class Fn>
class PostTask final : public Task {
 public:
  template <class F>
  explicit PostTask(F&& fn) : fn_(std::forward<F>(fn)) {}
  Outcome run(std::exception_ptr* unobserved) noexcept override {
    try {
      std::invoke(fn_);
      return Outcome::completed;
    } catch (...) {
      *unobserved = std::current_exception();
      return Outcome::failed;
    }
  }
  void reject(std::exception_ptr /*why*/) noexcept override {}
  void drop() noexcept override { delete this; }

 private:
  Fn fn_;
};

}  // namespace crew::inline v0::detail
