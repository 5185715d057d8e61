// Where `crew serve` runs tasks: a ThreadPool in this process, a ProcessPool of workers, or a
// Redis queue that `crew worker`s run. All take packed msgpack arguments and give back a packed
// result, so the HTTP layer never needs a task's C++ types.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <crew/pool.hpp>
#include <crew/process.hpp>
#include <crew/redis.hpp>

namespace crew::serve_app {

/// A pool snapshot in the shape the metrics need, whichever pool is behind it.
struct RunnerStats {
  std::size_t workers = 0, busy = 0, idle = 0, queued = 0;
  std::uint64_t completed = 0, failed = 0, cancelled = 0, timed_out = 0, crashed = 0;
  double utilization = 0.0;
  LatencySummary wait_time, run_time;
  /// Thread isolation: tasks running past their timeout + kStuckGrace that ignore their stop
  /// token, each holding a thread; the pool replaces up to `stuck_limit` of them.
  std::size_t stuck = 0, stuck_limit = 0;
  std::uint64_t stuck_total = 0;
  std::map<std::string, std::size_t> stuck_tasks;  ///< stuck now, by task name
  std::vector<ProcessWorkerStats> processes;       ///< process isolation: each worker process
  std::uint64_t leaks_suspected = 0;               ///< process isolation: ProcessPoolStats'
};

/// A thread pool's snapshot as a runner's (the thread runner adds its stuck tasks).
RunnerStats runner_stats(const PoolStats& s);

/// What `?wait=false` answers: the job's id and its state just after submission.
struct Submitted {
  std::string job_id;
  std::string state;
};

/// Thread safety: every member may be called from any thread.
class Runner {
 public:
  virtual ~Runner() = default;
  /// `job_id`: a queue backend's id for the job (new_job_id(), or the request's Idempotency-Key:
  /// a job that exists already is attached to, not run again); the others get an empty one.
  virtual Future<PackedValue> run(std::string_view task, std::string args, RunOptions options,
                                  std::string job_id) = 0;
  /// `?wait=false`: submits the task as a job and settles once the job exists, not once it ran.
  /// Only a queue backend has jobs to come back to: the others throw BadArguments naming
  /// --backend.
  virtual Future<Submitted> submit(std::string_view task, std::string args, RunOptions options,
                                   std::string job_id) = 0;
  /// A fresh job id; empty for a backend that keeps no jobs (the request's answer is its only
  /// record).
  [[nodiscard]] virtual std::string new_job_id() const { return {}; }
  /// `GET /v1/jobs/{id}`: the job's status (JobState::unknown: no such job). Same rule.
  virtual Future<redis::JobStatus> status(std::string job_id) = 0;
  /// The priority of a task whose request names none.
  [[nodiscard]] virtual int default_priority() const noexcept { return 0; }
  [[nodiscard]] virtual const Tasks& tasks() const noexcept = 0;
  [[nodiscard]] virtual RunnerStats stats() const = 0;
  [[nodiscard]] virtual const char* isolation() const noexcept = 0;
  /// Why the runner cannot take more work although it is open (empty: it can): every
  /// replacement for stuck threads is in use.
  [[nodiscard]] virtual std::string unready_reason() const { return {}; }
  /// Prometheus text about the backend beyond the pool (a Redis queue's numbers), appended to
  /// /metrics. Never blocks: a backend that must ask elsewhere returns its last answer.
  [[nodiscard]] virtual std::string backend_metrics() const { return {}; }
  /// POST /api/workers/{id}/restart: replaces the worker process `name` gracefully. Throws
  /// std::invalid_argument for an unknown name, std::logic_error where there are no worker
  /// processes to restart.
  virtual void restart_worker(std::string_view name) {
    throw std::logic_error(
        fmt::format("no worker process '{}' to restart: this server runs tasks with --isolation {}",
                    name, isolation()));
  }
  /// Has task worker process `worker` (a per-worker name, "crew-task-1") write a heap profile and
  /// returns its path; blocks until it is written (up to 30 s). Only process isolation with
  /// --heap-profiling can: the others throw crew::Error saying so. Otherwise as
  /// ProcessPool::heap_profile: std::invalid_argument for an unknown worker, crew::TimedOut, and
  /// crew::Error when the worker is starting, stopping or could not write it.
  virtual std::string heap_profile(std::string_view worker);
  /// Logs tasks that became stuck since the last call (called periodically by the server).
  virtual void report_stuck() {}
  /// Finishes running tasks and stops the pool.
  virtual void close() = 0;
  /// Stops now: queued tasks are dropped, running ones asked to stop (thread isolation: their
  /// stop token; a task that ignores it keeps this call waiting) or killed (process isolation).
  virtual void terminate() = 0;
};

/// How a thread runner is set up.
struct ThreadRunnerOptions {
  std::size_t workers = 0;  ///< pool threads; 0: crew::default_thread_count()
  std::size_t max_queue = 1024;
  int task_nice = 0;  ///< scheduling priority (nice, 0..19) of the task threads
  /// Replacement threads for stuck tasks (PoolOptions::max_stuck_replacements); none: `workers`.
  std::optional<std::size_t> max_stuck_replacements;
};

/// Tasks run on a ThreadPool in this process.
std::unique_ptr<Runner> make_thread_runner(const Tasks& tasks, ThreadRunnerOptions options);
/// Tasks run in worker processes re-executing this program with `worker_args`.
std::unique_ptr<Runner> make_process_runner(const Tasks& tasks, ProcessPoolOptions options);

/// How a Redis runner is set up (`crew serve --backend redis://…`).
struct RedisRunnerOptions {
  std::string url;                ///< --backend: redis://[[user]:password@]host[:port][/db]
  std::string queue = "default";  ///< --queue, as `crew worker --queue`
  /// Submissions waiting for the thread that hands them to Redis; beyond it: QueueFull (429).
  std::size_t max_queue = 1024;
};

/// Tasks become jobs of a crew::redis::Queue, run by `crew worker`s on any machine; `tasks` (the
/// same built-ins and plugins) only says which names the routes accept. A job keeps running when
/// its request is cancelled (the client hung up): a remote execution cannot be stopped from here,
/// and its result is kept (JobOptions::retain). Connects at once: throws std::invalid_argument
/// naming --backend or --queue, and redis::ConnectionError naming the URL when Redis cannot be
/// reached. Afterwards a thread probes Redis every second: while it is unreachable
/// unready_reason() says so and tasks are refused at once with that ConnectionError.
std::unique_ptr<Runner> make_redis_runner(const Tasks& tasks, RedisRunnerOptions options);

}  // namespace crew::serve_app
