// Where `crew serve` runs tasks: a ThreadPool in this process or a ProcessPool of workers. Both
// take packed msgpack arguments and give back a packed result, so the HTTP layer never needs a
// task's C++ types.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <crew/pool.hpp>
#include <crew/process.hpp>

namespace crew::serve_app {

/// A pool snapshot in the shape the metrics need, whichever pool is behind it.
struct RunnerStats {
  std::size_t workers = 0, busy = 0, idle = 0, queued = 0;
  std::uint64_t completed = 0, failed = 0, cancelled = 0, timed_out = 0, crashed = 0;
  double utilization = 0.0;
  LatencySummary wait_time, run_time;
};

/// Thread safety: every member may be called from any thread.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual Future<PackedValue> run(std::string_view task, std::string args, RunOptions options) = 0;
  [[nodiscard]] virtual const Tasks& tasks() const noexcept = 0;
  [[nodiscard]] virtual RunnerStats stats() const = 0;
  [[nodiscard]] virtual const char* isolation() const noexcept = 0;
  /// Finishes running tasks and stops the pool.
  virtual void close() = 0;
  /// Stops now: queued tasks are dropped, running ones asked to stop (thread isolation: their
  /// stop token; a task that ignores it keeps this call waiting) or killed (process isolation).
  virtual void terminate() = 0;
};

/// Tasks run on a ThreadPool of `threads` (0: default) with a queue of `max_queue`, each thread at
/// scheduling priority `task_nice` (a nice value, 0..19).
std::unique_ptr<Runner> make_thread_runner(const Tasks& tasks, std::size_t threads,
                                           std::size_t max_queue, int task_nice = 0);
/// Tasks run in worker processes re-executing this program with `worker_args`.
std::unique_ptr<Runner> make_process_runner(const Tasks& tasks, ProcessPoolOptions options);

}  // namespace crew::serve_app
