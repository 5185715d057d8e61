// crew::ThreadPool — a work-stealing thread pool whose results come back as crew::Future<T>.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <crew/detail/task.hpp>
#include <crew/future.hpp>
#include <crew/retry.hpp>
#include <crew/stats.hpp>

namespace crew {
inline namespace v0 {

/// What `run()` does when the bounded queue (`PoolOptions::max_queue`) is full.
enum class OnFull {
  reject,  ///< throw crew::QueueFull at the call (try_run returns empty)
  wait,    ///< block the producer until a slot frees up (try_run still returns empty)
};

/// Construction options. Validated once; a bad value throws std::invalid_argument naming it.
struct PoolOptions {
  /// Threads kept alive when idle; 0 is a real value (the pool starts empty and shrinks to
  /// nothing). Unset: max_workers, a fixed-size pool (a std::optional because this default
  /// follows another option; ProcessPoolOptions::min_workers defaults to 0 instead).
  std::optional<std::size_t> min_workers{};
  /// Most threads; the pool grows toward it while work waits. 0 (the default) means
  /// crew::default_thread_count(), as for every worker count in crew. At most 1024.
  std::size_t max_workers = 0;
  /// A thread above min_workers that found no work for this long exits.
  std::chrono::milliseconds idle_timeout{30'000};
  /// Bound on tasks waiting in the shared queue; 0 means unbounded. A bound is recommended: it is
  /// what gives producers backpressure. Tasks a pool thread submits (nested) are not counted.
  std::size_t max_queue = 0;
  OnFull on_full = OnFull::reject;
  /// Threads the pool may add beyond max_workers while tasks are stuck: a task still running
  /// kStuckGrace after its timeout (its stop token signalled) holds a thread that cannot be
  /// killed, and without a replacement the pool loses that capacity until it returns. One extra
  /// thread per stuck task, up to this many; each goes away when a stuck task returns. 0 (the
  /// default) keeps the pool at max_workers. At most 1024.
  std::size_t max_stuck_replacements = 0;
  /// Used in thread names (`<name>-w0`, ...) and error messages.
  std::string name = "crew";
};

/// Per-task options for `run()`.
struct RunOptions {
  /// Higher runs first among tasks waiting in the shared queue; equal priorities run in
  /// submission order. Anti-starvation rule: while several priorities are queued, every 8th task
  /// taken from the shared queue is the oldest one waiting, whatever its priority, so a task with
  /// k older tasks ahead of it starts within 8 * (k + 1) takes. Up to 32 distinct values get a
  /// lane of their own; further values share the lane of the nearest lower priority. Tasks
  /// submitted from inside a pool task go to that thread's own deque (newest first, for fork-join
  /// locality) and ignore priority.
  int priority = 0;
  /// Counted from when the task starts; zero means none. At the deadline the Future settles with
  /// crew::TimedOut and the task's std::stop_token is signalled. A thread cannot be killed: the
  /// task keeps its thread until it returns (use a ProcessPool for work that must be killable).
  /// A continuation of the timed-out Future runs on the pool's continuation runner (threads named
  /// `<name>-then-wN`, grown on demand), never on the timer thread, so it may block.
  std::chrono::nanoseconds timeout{0};
  /// When this fires, a queued task never runs and its Future settles with crew::Cancelled; a
  /// running task's Future settles with Cancelled and its own stop_token is signalled.
  std::stop_token stop{};
  /// Executions at most, counting the first (>= 1). ProcessPool only: an execution that failed
  /// with WorkerCrashed, TimedOut, RemoteError or MemoryLimitExceeded runs again after `backoff`,
  /// and the Future settles once, with the first result or the last attempt's error. A
  /// ThreadPool refuses anything but 1: a thread task that crashed took the whole process with
  /// it, and one that timed out may still be running.
  int attempts = 1;
  /// The wait before each retry (crew/retry.hpp; the Redis queue's JobOptions use the same).
  Backoff backoff{};
};

/// How long past its timeout a task may keep running, after its stop token was signalled, before
/// the pool counts it stuck (PoolStats::stuck) and may replace its thread.
inline constexpr std::chrono::milliseconds kStuckGrace{200};

/// Threads for a pool with no explicit size: `CREW_THREADS` from the environment when it is set
/// (read once, clamped to 1..1024, like libuv's UV_THREADPOOL_SIZE), else the hardware concurrency.
std::size_t default_thread_count();

namespace detail {
class PoolCore;

template <class F, class... A>
inline constexpr bool kTakesStopToken =
    std::is_invocable_v<std::decay_t<F>, std::stop_token, std::decay_t<A>...>;

template <class F, class... A>
struct TaskResult {
  static auto probe() {
    if constexpr (kTakesStopToken<F, A...>) {
      return std::type_identity<
          std::invoke_result_t<std::decay_t<F>, std::stop_token, std::decay_t<A>...>>{};
    } else {
      static_assert(std::is_invocable_v<std::decay_t<F>, std::decay_t<A>...>,
                    "crew::ThreadPool::run: the function cannot be called with these arguments "
                    "(optionally preceded by a std::stop_token)");
      return std::type_identity<std::invoke_result_t<std::decay_t<F>, std::decay_t<A>...>>{};
    }
  }
  using type = typename decltype(probe())::type;
};

// Binds the callable and decay-copied arguments into one object, like std::thread does.
template <class F, class... A>
auto bind_task(F&& fn, A&&... args) {
  return [f = std::forward<F>(fn),
          ... a = std::forward<A>(args)](auto&&... token) mutable -> decltype(auto) {
    return std::invoke(std::move(f), std::forward<decltype(token)>(token)..., std::move(a)...);
  };
}

enum class SubmitMode : std::uint8_t { block_or_throw, try_only };

/// Throws std::invalid_argument naming the first field of `options` out of range (`who` starts
/// the message); with `retries` false, attempts other than 1 too. Returns when all are valid.
void check_run_options(const RunOptions& options, std::string_view who, bool retries);

/// The check above, inline for the common case: valid options cost a few comparisons.
inline void check_run_options_fast(const RunOptions& options, std::string_view who, bool retries) {
  const bool attempts_ok = retries ? options.attempts >= 1 : options.attempts == 1;
  if (!attempts_ok || options.backoff.delay.count() < 0 ||
      !(options.backoff.jitter >= 0.0 && options.backoff.jitter <= 1.0)) [[unlikely]] {
    check_run_options(options, who, retries);
  }
}
}  // namespace detail

/// A pool of threads that run closures and return their results as crew::Future<T>.
///
///     crew::ThreadPool pool({.max_workers = 4, .max_queue = 1024});
///     crew::Future<long> f = pool.run(fib, 30);
///     pool.post([] { log("fire and forget"); });
///     long v = f.get();
///
/// Scheduling: external submissions enter a shared, priority-ordered, optionally bounded queue;
/// a task submitted from a pool thread goes to that thread's own deque, and idle threads steal
/// from the others. Waiting on a Future from a pool thread runs other queued work meanwhile, so
/// fork-join recursion completes even with one thread.
///
/// Lifetime: neither copyable nor movable. `close()` stops intake and drains; `terminate()`
/// rejects queued tasks with crew::PoolClosed and requests stop on running ones; the destructor
/// drains like close(). None of the three may be called from one of the pool's own threads.
///
/// Thread safety: every member function may be called concurrently from any thread. A task's
/// writes happen-before its Future becomes ready; `run()` returning happens-before the task starts.
class ThreadPool {
 public:
  /// Starts `min_workers` threads. Throws std::invalid_argument naming a bad option.
  explicit ThreadPool(PoolOptions options = {});
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ThreadPool(ThreadPool&&) = delete;
  ThreadPool& operator=(ThreadPool&&) = delete;
  /// Drains like close().
  ~ThreadPool();

  /// Runs `fn(args...)` — or `fn(stop_token, args...)` when it takes a std::stop_token first —
  /// on a pool thread. Arguments are decay-copied (use std::ref to pass a reference).
  /// Throws crew::PoolClosed after close(), crew::QueueFull when full with OnFull::reject.
  template <class F, class... A>
  auto run(F&& fn, A&&... args) {
    return run(RunOptions{}, std::forward<F>(fn), std::forward<A>(args)...);
  }
  /// As run(fn, args...), with a priority, a timeout and a stop token. Throws
  /// std::invalid_argument for RunOptions::attempts other than 1 (retries need a ProcessPool).
  template <class F, class... A>
  auto run(RunOptions options, F&& fn, A&&... args) {
    return *submit_future(detail::SubmitMode::block_or_throw, std::move(options),
                          std::forward<F>(fn), std::forward<A>(args)...);
  }
  /// Never blocks: returns an empty optional when the queue is full (whatever `on_full` says).
  template <class F, class... A>
  auto try_run(F&& fn, A&&... args) {
    return try_run(RunOptions{}, std::forward<F>(fn), std::forward<A>(args)...);
  }
  template <class F, class... A>
  auto try_run(RunOptions options, F&& fn, A&&... args) {
    return submit_future(detail::SubmitMode::try_only, std::move(options), std::forward<F>(fn),
                         std::forward<A>(args)...);
  }

  /// Fire and forget. An exception thrown by `fn` goes to the on_error handler, never lost.
  /// Also makes ThreadPool an executor for `Future::then(fn, pool)`.
  template <class F>
  void post(F&& fn) {
    submit_post(detail::SubmitMode::block_or_throw, std::forward<F>(fn));
  }
  /// Never blocks; false when the queue is full.
  template <class F>
  bool try_post(F&& fn) {
    return submit_post(detail::SubmitMode::try_only, std::forward<F>(fn));
  }

  /// Receives exceptions from post()ed tasks, on the pool thread that ran the task. Default:
  /// print the pool name and what() to stderr. The handler must not throw.
  void on_error(std::function<void(std::exception_ptr)> handler);

  /// True while the bounded queue is full: producers should pause until on_drain fires.
  [[nodiscard]] bool needs_drain() const noexcept;
  /// Called (on a pool thread) when the shared queue empties after needs_drain() was true.
  void on_drain(std::function<void()> callback);

  /// Returns once nothing is queued or running (tasks may be submitted again afterwards).
  /// Throws std::logic_error when called from one of this pool's threads.
  void wait_idle();
  /// Stops intake (run() throws PoolClosed; tasks submitted by running tasks are still accepted),
  /// runs everything already accepted, and joins the threads. Idempotent.
  void close();
  /// Stops intake, rejects queued tasks with crew::PoolClosed, requests stop on running tasks'
  /// tokens, waits for them to return and joins the threads.
  void terminate();

  /// A consistent-enough snapshot (each field is read without stopping the pool).
  [[nodiscard]] PoolStats stats() const;
  [[nodiscard]] std::size_t thread_count() const noexcept;
  [[nodiscard]] const std::string& name() const noexcept;

 private:
  template <class F, class... A>
  auto submit_future(detail::SubmitMode mode, RunOptions options, F&& fn, A&&... args)
      -> std::optional<Future<typename detail::TaskResult<F, A...>::type>> {
    using R = typename detail::TaskResult<F, A...>::type;
    detail::check_run_options_fast(options, "crew::ThreadPool::run", false);
    auto bound = detail::bind_task(std::forward<F>(fn), std::forward<A>(args)...);
    using Task = detail::FutureTask<R, decltype(bound), detail::kTakesStopToken<F, A...>>;
    auto* task = new Task(std::move(bound), options.priority, options.timeout, options.stop);
    task->add_ref();  // the Future's reference; the queue holds the first one
    Future<R> future(static_cast<detail::State<R>*>(task));
    if (!submit_or_drop(task, mode)) return std::nullopt;
    return future;
  }

  template <class F>
  bool submit_post(detail::SubmitMode mode, F&& fn) {
    static_assert(std::is_invocable_v<std::decay_t<F>&>,
                  "crew::ThreadPool::post: fn() must be callable");
    return submit_or_drop(new detail::PostTask<std::decay_t<F>>(std::forward<F>(fn)), mode);
  }

  // Queues the task and returns true; or drops the queue's reference and returns false (try mode,
  // queue full) or throws (PoolClosed, QueueFull, invalid options).
  bool submit_or_drop(detail::Task* task, detail::SubmitMode mode);

  std::unique_ptr<detail::PoolCore> core_;
};

}  // namespace v0
}  // namespace crew
