// crew::EventLoop — a single-threaded executor: callbacks run on the thread that runs the loop,
// like Node's main loop.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <crew/detail/unique_function.hpp>

namespace crew {
inline namespace v0 {

namespace detail {
class EventLoopCore;

// What run_until(done) accepts: called as `done()` on an lvalue, convertible to bool.
template <class P>
concept LoopCondition = std::predicate<P&>;

// A non-owning view of the caller's predicate, so the loop itself is not a template.
struct LoopPredicate {
  void* self = nullptr;
  bool (*test)(void*) = nullptr;
};

// Waits longer than this (about 31 years) mean "no deadline"; it keeps the arithmetic below far
// from overflow.
inline constexpr double kNoDeadlineNs = 1e18;

// `timeout` from now on the steady clock, rounded up so the loop never returns early; nullopt
// when it is too long to matter (seconds::max(), say).
template <class Rep, class Period>
std::optional<std::chrono::steady_clock::time_point> steady_deadline_after(
    std::chrono::duration<Rep, Period> timeout) {
  const auto now = std::chrono::steady_clock::now();
  if (timeout <= timeout.zero()) return now;
  if (std::chrono::duration<double, std::nano>(timeout).count() >= kNoDeadlineNs) {
    return std::nullopt;
  }
  return now + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout);
}

// `deadline` on any clock as a steady-clock deadline (never earlier than the original).
template <class Clock, class Duration>
std::optional<std::chrono::steady_clock::time_point> steady_deadline_at(
    std::chrono::time_point<Clock, Duration> deadline) {
  using Nanos = std::chrono::duration<double, std::nano>;
  const auto now = Clock::now();
  // Measured in floating point first: `deadline - now` could overflow for time_point::max().
  const double gap =
      Nanos(deadline.time_since_epoch()).count() - Nanos(now.time_since_epoch()).count();
  if (gap >= kNoDeadlineNs) return std::nullopt;
  if (gap <= -kNoDeadlineNs) return std::chrono::steady_clock::now();
  return steady_deadline_after(deadline - now);
}
}  // namespace detail

/// A queue of callbacks run, one at a time and in the order they were posted, on whichever thread
/// calls `run()` (or `run_until`, `run_for`, `poll`). Other threads hand work to that thread with
/// `post()`; nothing the loop owns ever runs on a foreign thread. It is also an executor:
/// `future.then(fn, loop)` runs `fn` on the loop's thread.
///
///     crew::EventLoop loop;
///     crew::ThreadPool pool;
///     pool.run(load_file, path).then([&](std::string text) { ui.show(text); }, loop);
///     loop.run_until([&] { return ui.done(); });  // ui.show runs here, on this thread
///
/// Stopping: `stop()` makes the running call return after its current callback; the request is
/// consumed by the call it stops, so a later `run()` resumes with what is still queued (there is
/// no separate restart()). A stop() made while no call is running makes the next one return at
/// once, having run nothing.
///
/// Errors: an exception that escapes a callback goes to the `on_error` handler when one is set
/// (and the loop carries on); otherwise it is rethrown out of the running call right after that
/// callback. Either way the loop stays usable and the remaining callbacks stay queued.
///
/// Lifetime: neither copyable nor movable. `close()` stops intake (post() from other threads
/// throws crew::PoolClosed) while queued callbacks still run; the destructor closes and runs what
/// is still queued on the destroying thread. Destroying the loop while a thread is running it is
/// undefined behaviour, as for any object.
///
/// Thread safety: `post`, `stop`, `close`, `on_error` and `running_in_this_thread` may be called
/// from any thread at any time. The run family (`run`, `run_until`, `run_for`, `poll`) runs on one
/// thread at a time and not re-entrantly: calling it while the loop is already running (from
/// another thread, or from inside a callback) throws std::logic_error. A `post()` happens-before
/// its callback runs; each callback happens-before the next; `stop()` happens-before the running
/// call returns because of it.
class EventLoop {
 public:
  EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  EventLoop(EventLoop&&) = delete;
  EventLoop& operator=(EventLoop&&) = delete;
  /// Closes the loop and runs every callback still queued on this thread (errors go to the
  /// on_error handler, else are printed to stderr: nothing is thrown).
  ~EventLoop();

  /// Queues `fn` (called as `fn()`; it need only be movable) and wakes the loop. Never runs `fn`
  /// inline. Throws crew::PoolClosed after close(), except from inside one of this loop's own
  /// callbacks (so a callback that is draining may still chain work).
  template <class F>
  void post(F&& fn) {
    static_assert(std::is_invocable_v<std::decay_t<F>&>,
                  "crew::EventLoop::post: fn() must be callable");
    static_assert(std::is_constructible_v<std::decay_t<F>, F>,
                  "crew::EventLoop::post: fn must be movable (or copyable) into the loop");
    enqueue(detail::UniqueFunction(std::forward<F>(fn)));
  }

  /// Runs callbacks on this thread until stop(), blocking (without spinning) while the queue is
  /// empty. Callbacks posted by callbacks run in the same call. After close() it also returns
  /// once the queue is empty. Returns the number of callbacks run.
  std::size_t run();

  /// Runs callbacks until `done()` is true, stop() is called, or (after close()) the queue is
  /// empty. `done` is evaluated on this thread: on entry, after each callback and whenever the
  /// loop wakes up. A thread that makes it true without posting should post() something (even an
  /// empty callback) to wake the loop.
  template <detail::LoopCondition Pred>
  std::size_t run_until(Pred done) {
    detail::LoopPredicate view{
        &done, [](void* self) { return static_cast<bool>((*static_cast<Pred*>(self))()); }};
    return run_loop(&view, std::nullopt, Mode::run);
  }

  /// Runs callbacks until `deadline` passes (or stop(), or closed and empty). Returns no earlier
  /// than the deadline unless stopped or closed; any clock works.
  template <class Clock, class Duration>
  std::size_t run_until(std::chrono::time_point<Clock, Duration> deadline) {
    return run_loop(nullptr, detail::steady_deadline_at(deadline), Mode::run);
  }

  /// Runs callbacks for `timeout` (or until stop(), or closed and empty).
  template <class Rep, class Period>
  std::size_t run_for(std::chrono::duration<Rep, Period> timeout) {
    return run_loop(nullptr, detail::steady_deadline_after(timeout), Mode::run);
  }

  /// Runs the callbacks queued when it is called (not those they post) and returns; never
  /// blocks. Honours a pending stop() like run().
  std::size_t poll();

  /// Makes the running call return after its current callback, or the next call return at once
  /// if none is running. Never blocks.
  void stop() noexcept;

  /// Stops intake: post() from any thread but the loop's own throws crew::PoolClosed. Queued
  /// callbacks still run, and run() returns instead of blocking once the queue is empty.
  /// Idempotent.
  void close() noexcept;
  /// True after close() (or once destruction has begun).
  [[nodiscard]] bool closed() const noexcept;

  /// Receives exceptions that escape callbacks, on the loop's thread, instead of having them
  /// rethrown from run(). An empty function removes the handler. If the handler itself throws,
  /// that exception leaves the running call.
  void on_error(std::function<void(std::exception_ptr)> handler);

  /// True while the calling thread is inside one of this loop's run-family calls (for example,
  /// in one of its callbacks).
  [[nodiscard]] bool running_in_this_thread() const noexcept;

 private:
  enum class Mode { run, poll, drain };
  void enqueue(detail::UniqueFunction fn);
  std::size_t run_loop(detail::LoopPredicate* done,
                       std::optional<std::chrono::steady_clock::time_point> deadline, Mode mode);

  std::unique_ptr<detail::EventLoopCore> core_;
};

}  // namespace v0
}  // namespace crew
