// crew::ProcessPool — named tasks run in isolated worker processes: timeouts kill, crashes are
// recovered, memory is capped, workers are recycled; results arrive as crew::Future<R>.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <crew/future.hpp>
#include <crew/memory.hpp>
#include <crew/pool.hpp>
#include <crew/process/detail/call.hpp>
#include <crew/process/errors.hpp>
#include <crew/process/tasks.hpp>
#include <crew/stats.hpp>

namespace crew {
inline namespace v0 {

/// One line a worker process wrote to its stdout or stderr.
struct ProcessLogLine {
  std::string_view worker;  ///< "crew-proc-3"
  int pid = 0;
  bool is_stderr = true;
  std::string_view line;  ///< without the newline; at most 4 KiB (longer lines are split)
};

/// Configuration of a ProcessPool. Every field has a sensible default.
struct ProcessPoolOptions {
  /// The tasks this program registers. With the default executable (this program) the pool
  /// checks task names against it before sending; may be null with `executable`.
  const Tasks* tasks = nullptr;
  /// Workers kept alive even when idle (started at construction); 0 (the default) is a real
  /// value: none, workers start on demand. (PoolOptions::min_workers defaults to max_workers.)
  std::size_t min_workers = 0;
  /// Most worker processes at once; 0 (the default) means default_thread_count(), as every
  /// worker count in crew.
  std::size_t max_workers = 0;
  /// A worker above min_workers idle this long exits.
  std::chrono::milliseconds idle_timeout{30'000};
  /// Tasks waiting for a worker; 0 is unbounded. A full queue makes run() throw crew::QueueFull.
  std::size_t max_queue = 0;
  /// Default per-task timeout (RunOptions::timeout overrides it); 0 means none. At the deadline
  /// the worker is killed and the Future settles with crew::TimedOut.
  std::chrono::milliseconds task_timeout{0};
  /// A worker that has run this many tasks is replaced (0: never).
  std::size_t max_tasks_per_worker = 0;
  /// Hard cap per worker: address space (RLIMIT_AS) plus a resident-memory watchdog while a task
  /// runs; crossing it fails the task with crew::MemoryLimitExceeded. 0: no cap.
  std::size_t memory_limit_bytes = 0;
  /// After a task, a worker whose resident memory is above this is replaced before its next
  /// task (PM2's max_memory_restart). 0: never.
  std::size_t max_rss_restart_bytes = 0;
  /// Watches each worker's resident memory for a leak (crew::LeakWatch: its floor keeps rising),
  /// sampled three times a span (every second by default). A worker under suspicion is flagged in
  /// stats() and named in a log line (stderr) once per suspicion; nothing is stopped: set
  /// max_rss_restart_bytes for that. Empty: no watch.
  std::optional<LeakWatchOptions> leak_watch = LeakWatchOptions{};
  /// Time between SIGTERM and SIGKILL when a worker must stop.
  std::chrono::milliseconds terminate_grace{1'000};
  /// First delay before restarting a worker that failed to start; it grows x1.5 per failure up
  /// to 15 s and resets once a worker has been up for 30 s.
  std::chrono::milliseconds restart_backoff{100};
  /// This many start-up failures in a row stop the restarts: queued and new tasks fail with the
  /// start-up error until a retry (after the longest backoff) succeeds.
  std::size_t max_startup_failures = 5;
  /// Extra environment variables for the workers (added to this process's environment).
  std::map<std::string, std::string> env{};
  /// Names processes and log lines: "<name>-<n>".
  std::string name = "crew-proc";
  /// The program to run as a worker; empty means this program (/proc/self/exe). It must call
  /// crew::worker_main() when crew::is_worker_process().
  std::string executable{};
  /// Arguments after argv[0] for the worker program.
  std::vector<std::string> args{};
  /// Receives worker stdout/stderr lines on the pool's supervisor thread (keep it quick). Empty:
  /// lines go to spdlog's "crew.process" logger (stderr at warn, stdout at info).
  std::function<void(const ProcessLogLine&)> log{};
  /// Starts workers with jemalloc preloaded (Debian: libjemalloc2) and heap-profile sampling on
  /// (MALLOC_CONF prof:true, one sample per 512 KiB allocated on average; a MALLOC_CONF of the
  /// environment or `env` comes after, so its settings win). heap_profile(), or SIGUSR2 sent to
  /// a worker, then writes a profile for `jeprof` (docs/operations.md, "Heap profiles"). The
  /// pool throws std::invalid_argument at construction when the library is missing, and in a
  /// sanitizer build (whose allocator jemalloc cannot replace).
  bool heap_profiling = false;
  /// Where workers write heap profiles; must exist and be writable. Empty: $TMPDIR, else /tmp.
  std::string heap_profile_dir{};
};

/// Why a worker process ended (ProcessExit::reason).
enum class ProcessExitReason {
  signal,   ///< killed by a signal nobody in the pool sent (a crash, or another process)
  exit,     ///< exited by itself
  memory,   ///< above its memory cap (memory_limit_bytes, max_rss_restart_bytes)
  timeout,  ///< stopped because its task's timeout passed
  stop,     ///< stopped on purpose: restart_worker(), recycling, idle shrink, close, a cancel
};
/// "signal", "exit", "memory", "timeout" or "stop".
const char* to_string(ProcessExitReason reason) noexcept;

/// How a worker process ended, in ProcessWorkerStats::last_exit.
struct ProcessExit {
  int signal = 0;  ///< the signal that ended it; 0 if it exited
  int code = -1;   ///< its exit code; -1 if a signal ended it
  ProcessExitReason reason = ProcessExitReason::exit;
  std::chrono::system_clock::time_point when{};  ///< when the pool saw it end
};

/// One worker of a ProcessPool, in ProcessPoolStats: a slot that keeps its name ("crew-proc-3")
/// while processes come and go in it (a crash, a timeout, restart_worker()). A process being
/// stopped whose replacement already runs in its slot is not listed.
struct ProcessWorkerStats {
  int pid = 0;
  std::string name;   ///< "crew-proc-3"
  std::string state;  ///< "starting", "idle", "busy", "stopping"
  std::chrono::milliseconds uptime{0};
  std::uint64_t tasks_done = 0;  ///< tasks this process finished (any outcome)
  std::uint64_t errors = 0;      ///< of which failed
  std::uint64_t restarts = 0;    ///< processes that held this slot before this one
  std::size_t rss_bytes = 0;     ///< resident memory, read by stats()
  /// Proportional set size (shared pages divided among the processes sharing them), read by
  /// stats() at most once a second per process (it walks every mapping), outside the pool's lock;
  /// 0 until first read or if it cannot be read.
  std::size_t pss_bytes = 0;
  /// User plus system CPU time of the current process, read by stats() (/proc/PID/stat).
  std::chrono::nanoseconds cpu_time{0};
  /// How the last process that ended in this slot ended; empty while none has.
  std::optional<ProcessExit> last_exit;
  /// The last lines (at most 20) this slot's processes wrote to stdout or stderr, oldest first;
  /// kept across replacements, so a crashed process's last words stay next to its successor.
  std::vector<std::string> log_tail;
  /// ProcessPoolOptions::leak_watch suspects a leak now, rising this many bytes a second.
  bool leak_suspected = false;
  double leak_bytes_per_second = 0.0;
};

/// A snapshot of a ProcessPool: the ThreadPool fields plus one entry per worker process.
struct ProcessPoolStats {
  std::size_t workers = 0;
  std::size_t busy = 0;
  std::size_t idle = 0;
  std::size_t queued = 0;
  std::uint64_t completed = 0;
  /// threw, crashed, ran out of memory, bad arguments; a task counts here (or in timed_out)
  /// once, when its last attempt failed
  std::uint64_t failed = 0;
  std::uint64_t cancelled = 0;  ///< cancelled, or rejected by terminate()
  std::uint64_t timed_out = 0;
  std::uint64_t retried = 0;   ///< failed executions that were run again (RunOptions::attempts)
  std::uint64_t crashed = 0;   ///< worker processes that died while running a task
  std::uint64_t restarts = 0;  ///< worker processes started after the first min_workers
  std::uint64_t leaks_suspected = 0;  ///< suspicions of a leak that began (leak_watch)
  std::uint64_t startup_failures = 0;
  double utilization = 0.0;  ///< total run time / (elapsed x max_workers)
  LatencySummary wait_time;
  LatencySummary run_time;
  std::vector<ProcessWorkerStats> per_worker;
};

namespace detail {
class ProcessPoolCore;
/// Links a submitted call to its pool for cancellation (internal).
using ProcessArm = std::function<void(std::shared_ptr<ProcessControl>, std::stop_token)>;
}

/// Runs named tasks (see crew::Tasks) in worker processes. A task that hangs is killed at its
/// timeout; a task that crashes its worker fails alone; memory is capped; workers are recycled.
///
///     crew::ProcessPool pool({.tasks = &tasks, .max_workers = 4, .task_timeout = 5s});
///     crew::Future<long> f = pool.run<long>("fib", 30);
///     try { f.get(); } catch (const crew::WorkerCrashed& e) { ... }
///
/// Each worker runs one task at a time. The pool's supervisor thread owns the processes: it
/// spawns them, watches their sockets, exit events (pidfd) and output, and enforces deadlines.
/// Workers die with the pool's process (PR_SET_PDEATHSIG, and they exit on channel EOF).
///
/// Thread safety: every member may be called from any thread. Results happen-before the Future
/// settles. The destructor drains (close()) and waits for every worker process to exit.
class ProcessPool {
 public:
  explicit ProcessPool(ProcessPoolOptions options = {});
  ~ProcessPool();
  ProcessPool(const ProcessPool&) = delete;
  ProcessPool& operator=(const ProcessPool&) = delete;

  /// Runs task `name` with `args` in a worker; the Future yields its result as an `R`.
  /// Throws crew::PoolClosed after close(), crew::QueueFull when max_queue is reached, and
  /// crew::BadArguments for a name the pool's Tasks does not know (listing the known ones).
  template <class R, class... A>
  Future<R> run(std::string_view name, A&&... args) {
    return run<R>(RunOptions{}, name, std::forward<A>(args)...);
  }
  /// As above with per-call options: `.timeout` (kills the worker), `.stop`, `.priority`, and
  /// `.attempts` with `.backoff`: an execution that failed with WorkerCrashed, TimedOut,
  /// RemoteError or MemoryLimitExceeded runs again after its backoff, with the same priority,
  /// up to `attempts` executions; BadArguments is final. `.stop` still cancels a call waiting out
  /// its backoff. Every attempt gets the arguments as they were given: a Buffer that crosses as a
  /// memfd is copied once here, and each worker maps it copy-on-write; a SharedBuffer is shared
  /// memory, so a retry sees what earlier attempts wrote into it. Throws std::invalid_argument
  /// naming a bad option.
  template <class R, class... A>
  Future<R> run(RunOptions options, std::string_view name, A&&... args) {
    detail::check_run_options_fast(options, "crew::ProcessPool::run", true);
    auto* call = new detail::Call<R>();
    detail::Ref<detail::State<R>> owner(call);
    set_options(*call, name, options);
    call->given_types = &detail::type_list<std::decay_t<A>...>;
    {
      detail::WireScope scope(nullptr, &call->fds);
      msgpack::packer<msgpack::sbuffer> pk(call->args);
      pk.pack_array(sizeof...(A));
      (pk.pack(args), ...);
    }
    call->add_ref();  // the Future's reference
    Future<R> future(call);
    submit(*call, std::move(options.stop),
           [call](std::shared_ptr<detail::ProcessControl> c, std::stop_token s) {
             call->arm(std::move(c), std::move(s));
           });
    return future;
  }

  /// Runs task `name` on arguments already packed as a msgpack array; the result comes back
  /// packed (for bridges that do not know the task's C++ types, such as JSON front ends). The
  /// options, retries included, work as in run().
  Future<PackedValue> run_packed(RunOptions options, std::string_view name, std::string args) {
    detail::check_run_options_fast(options, "crew::ProcessPool::run_packed", true);
    auto* call = new detail::Call<PackedValue>();
    detail::Ref<detail::State<PackedValue>> owner(call);
    set_options(*call, name, options);
    call->args.write(args.data(), args.size());
    call->add_ref();
    Future<PackedValue> future(call);
    submit(*call, std::move(options.stop),
           [call](std::shared_ptr<detail::ProcessControl> c, std::stop_token s) {
             call->arm(std::move(c), std::move(s));
           });
    return future;
  }

  /// Stops accepting tasks; queued and running ones finish, and so do retries waiting out their
  /// backoff (at their time: a long backoff holds the close that long), then the workers exit.
  /// Returns at once; the destructor (or wait_closed()) waits.
  void close();
  /// Stops accepting tasks, fails queued, running and retry-waiting ones with crew::PoolClosed,
  /// and kills every worker. Returns when all worker processes have exited.
  void terminate();
  /// Blocks until close() or terminate() has finished (every worker process reaped).
  void wait_closed();
  [[nodiscard]] ProcessPoolStats stats() const;
  [[nodiscard]] const ProcessPoolOptions& options() const noexcept;
  /// Gracefully replaces the worker named `name` (ProcessWorkerStats::name): an idle or starting
  /// one is stopped at once, a busy one once it has finished the tasks it was given (it gets no
  /// more). A replacement starts in the same slot, counted in `restarts`; the slot's last_exit
  /// says ProcessExitReason::stop. Returns false when no worker has that name now (the pool
  /// shrank, or never had it: see stats()); true for a worker that is already stopping. After
  /// close(), the worker is stopped and not replaced.
  bool restart_worker(std::string_view name);
  /// Has worker `worker` (a ProcessWorkerStats::name, "crew-proc-2") write a heap profile, even
  /// while it runs a task, and returns the file's path: "<heap_profile_dir>/<worker>.<pid>.<n>
  /// .heap". Blocks until the file is complete. Diff two with `jeprof --base=<older> <program>
  /// <newer>`, <program> being the workers' executable. Throws crew::Error when heap_profiling is
  /// off, when the worker is starting or stopping, exits first, or could not write the profile
  /// (the reason); std::invalid_argument for an unknown worker (listing the pool's); and
  /// crew::TimedOut when no profile came within `timeout`.
  std::string heap_profile(std::string_view worker,
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  static void set_options(detail::CallBase& call, std::string_view name,
                          const RunOptions& options) {
    call.task = name;
    call.priority = options.priority;
    call.timeout = options.timeout;
    call.attempts = options.attempts;
    call.backoff = options.backoff;
    // A message that may go out again must not carry memory an attempt can change.
    call.fds.copy_buffers = options.attempts > 1;
  }
  void submit(detail::CallBase& call, std::stop_token stop, const detail::ProcessArm& arm);
  std::unique_ptr<detail::ProcessPoolCore> core_;
};

}  // namespace v0
}  // namespace crew
