// crew::redis::Worker — runs the jobs of a Redis queue (crew/redis.hpp) with the tasks of a
// crew::Tasks registry, in worker processes or on threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <crew/process/tasks.hpp>
#include <crew/redis/errors.hpp>
#include <crew/redis/stats.hpp>

namespace crew::inline v0::redis {

enum class Isolation {
  /// A ProcessPool of `workers` processes: a crash or a timeout kills one process and fails
  /// one job. The program must call crew::worker_main(tasks) when crew::is_worker_process().
  process,
  /// A ThreadPool: cheaper, but a crash ends the whole worker and a timed-out or lost task keeps
  /// its thread until it returns (tasks should watch crew::this_task::stop_requested()).
  thread,
};

struct WorkerOptions {
  std::string url = "redis://127.0.0.1:6379";
  /// The queue's name, as in QueueOptions::name.
  std::string queue = "default";
  /// Jobs run at once: the threads or processes of the Worker's pool (as ProcessPoolOptions::
  /// max_workers and `crew serve --workers`); 0: crew::default_thread_count().
  std::size_t workers = 0;
  /// A running job's lease: renewed every lease/3 by a thread of its own; a worker silent for
  /// longer loses its jobs to others. At least 1 s.
  std::chrono::milliseconds lease{30'000};
  Isolation isolation = Isolation::process;
  /// A job whose worker stopped renewing its lease runs again this many times at most, then is
  /// dead-lettered as WorkerCrashed.
  int max_reclaims = 3;
  /// Prefetch: besides the `workers` jobs it runs, a worker holds as many more (waiting in its
  /// pool's queue, leased to it) as it expects to finish within this window, from the run time of
  /// the jobs it finished, and at most 64. Short jobs are then taken and reported many per Redis
  /// call; jobs longer than the window are never held back from other workers. 0: off.
  std::chrono::milliseconds prefetch_window{2};
  /// Thread isolation: a job that arrives while this worker runs nothing, has no timeout and is
  /// expected (from the jobs finished, as for prefetch) to take less than this runs on the thread
  /// that took it, which reports it together with its next read. A job a producer waits for then
  /// costs no thread handoff and one Redis call fewer. A job that runs longer than expected holds
  /// up only the taking of more jobs, and makes the estimate too long for the next. 0: off.
  std::chrono::microseconds inline_below{1'000};
  /// How long the fetch thread blocks in one XREADGROUP: bounds how long stop() waits for it.
  std::chrono::milliseconds block{1'000};
  std::chrono::milliseconds connect_timeout{2'000};
  std::chrono::milliseconds command_timeout{5'000};
  /// Process isolation: the worker program (empty: this program), its arguments and extra
  /// environment variables (see ProcessPoolOptions).
  std::string executable{};
  std::vector<std::string> args{};
  std::map<std::string, std::string> env{};
};

/// Counters of one Worker since it started.
struct WorkerStats {
  std::uint64_t started = 0;    ///< executions started
  std::uint64_t completed = 0;  ///< results Redis accepted
  std::uint64_t failed = 0;     ///< failures reported (retried or dead-lettered by Redis)
  std::uint64_t lost = 0;       ///< leases lost: the task was stopped, its outcome never reported
  std::uint64_t released = 0;   ///< jobs handed back by stop()
  std::uint64_t refused = 0;    ///< outcomes Redis refused (the lease had moved on meanwhile)
  std::uint64_t inlined = 0;    ///< executions run on the fetch thread (see inline_below)
  /// Now: jobs this worker may hold beyond `workers` (see WorkerOptions::prefetch_window).
  std::uint64_t prefetch = 0;
};

/// Takes jobs from a queue and runs them; construction starts it.
///
///     crew::Tasks tasks;
///     tasks.add("fib", fib);
///     if (crew::is_worker_process()) return crew::worker_main(tasks);
///     crew::redis::Worker worker(tasks, {.url = url, .queue = "images", .workers = 4});
///     ...  // until asked to stop
///     worker.stop(10s);
///
/// Three threads, each with its own connection: fetch (one call promotes due delayed jobs and
/// starts as many jobs as there are free slots, highest priority first; it blocks only when there
/// were none), lease (renew every running job's lease every lease/3 in one call, stop a job whose
/// lease was lost, and every lease/2 reclaim jobs of workers that stopped renewing), report (tell
/// Redis the outcomes queued so far in one call, by lease token: a late or repeated outcome is
/// refused; the same call starts the next jobs for the slots they free). Each thread reconnects
/// with backoff when Redis goes away; jobs that a call whose reply was lost started run at once.
/// A job runs at least once: one whose outcome was lost with its worker runs again elsewhere.
///
/// Thread safety: stop(), stats() and queue_stats() may be called from any thread.
class Worker {
 public:
  /// Connects and starts; throws std::invalid_argument naming a bad option and ConnectionError
  /// (naming the URL) when Redis cannot be reached. `tasks` must outlive the Worker.
  Worker(const Tasks& tasks, WorkerOptions options);
  /// stop(0): running jobs are handed back at once.
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// Stops taking jobs, lets running ones finish and report within `deadline`, then stops the
  /// rest and hands them back to the queue at once (crew_release: they run again elsewhere without
  /// waiting for their leases to expire, and without spending an attempt). Returns when every
  /// thread and pool of this Worker has stopped. Later calls do nothing.
  void stop(std::chrono::milliseconds deadline);

  [[nodiscard]] WorkerStats stats() const;
  /// A snapshot of the whole queue (every producer's and worker's jobs), read on a connection
  /// of its own, so a scrape never waits behind this worker's threads. Throws ConnectionError.
  [[nodiscard]] QueueStats queue_stats() const;
  /// `<host>-<pid>-<random>`: the consumer name in the group and the `owner` of its jobs.
  [[nodiscard]] const std::string& id() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace crew::inline v0::redis
