// The ProcessPool supervisor. One thread per pool owns every worker process: it forks them, waits
// on their exit notifications (pidfd), output pipes and the pool's doorbell with epoll, and
// enforces task deadlines, memory caps and recycling. Other threads touch the queue (under
// mutex_) and wake the supervisor through the doorbell, an eventfd.
//
// Small frames cross in shared-memory rings (channel.hpp). Replies do not wake the supervisor
// when they need not: a thread waiting for a result of this pool reads the workers' rings itself
// for a while ("driving", PoolPage::drivers), and a worker rings the doorbell after a reply only
// when nobody will read without it. A round trip then costs no system call and no wake-up when
// the worker is still watching its ring for the next request.
//
// A failed execution with attempts left (RunOptions::attempts) does not settle: its call waits out
// its backoff in retries_, a deadline like any other, and the supervisor then puts it back in the
// queue. No thread waits for it, and a cancellation or terminate() finds it there.
//
// Futures are settled, and log lines delivered, after mutex_ is released: a continuation or a log
// callback may call back into the pool. Continuations of Futures the supervisor settles run on
// the pool's ContinuationRunner, never on the supervisor: one that blocks (waiting for another
// task of this pool, say) would stop every spawn, timeout and memory check.
//
// This private header is the map of the supervisor's parts, one .cpp each:
//   pool.cpp            construction, the calls any thread makes (submit, stats, ...), ProcessPool
//   pool_drive.cpp      the supervisor loop; reading what workers send, also on waiting threads
//   pool_dispatch.cpp   the queue: handing calls to workers, a task's start and end, retries
//   pool_spawn.cpp      starting workers; backing off when they fail to start
//   pool_supervise.cpp  deadlines, memory caps, stopping workers, their exits
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <sys/types.h>

#include <crew/detail/continuation_runner.hpp>
#include <crew/memory.hpp>
#include <crew/process/pool.hpp>
#include <crew/shared_buffer.hpp>
#include <crew/stats.hpp>

#include "backoff.hpp"
#include "channel.hpp"
#include "frame.hpp"
#include "heap_profile.hpp"
#include "worker_env.hpp"

namespace crew::inline v0 {
namespace detail {

class ProcessControl {
 public:
  std::mutex mutex;
  ProcessPoolCore* core = nullptr;  // null once the pool is gone
};

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
constexpr Clock::time_point kNever = Clock::time_point::max();
constexpr milliseconds kRssPoll{5};
constexpr std::size_t kTailLines = 20;
constexpr milliseconds kPssEvery{1000};
constexpr std::size_t kMaxLine = 4096;
constexpr std::size_t kPipelineDepth = 128;
// How long a waiting thread reads replies itself before it sleeps. About two wake-ups on a busy
// machine: shorter tasks are answered without any, longer ones cost this much CPU once.
constexpr nanoseconds kDriveFor{50'000};
// While a thread drives, the supervisor still looks at the rings this often, in case that
// thread was preempted with a reply waiting.
constexpr milliseconds kDriverBackstop{1};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// Sanitizers reserve terabytes of address space: RLIMIT_AS would stop the worker from starting.
// The resident-memory watchdog still enforces the cap.
constexpr bool kUseAddressLimit = false;
// Instrumented code runs several times slower; what counts as a tiny task scales with it.
constexpr nanoseconds kPipelineBelow{2'000'000};
#else
constexpr bool kUseAddressLimit = true;
constexpr nanoseconds kPipelineBelow{200'000};  // tasks shorter than this are pipelined
#endif

// Releases the supervisor's reference on a call's Future state.
struct CallDeleter {
  void operator()(CallBase* c) const noexcept { c->state().release(); }
};
using CallPtr = std::unique_ptr<CallBase, CallDeleter>;

enum class WState { starting, idle, busy, stopping };
// Why the pool stops a worker. memory_recycle: replaced gracefully for its memory (an allocation
// failed under the cap, or max_rss_restart_bytes); restart: restart_worker().
enum class Reason {
  none,
  timeout,
  memory,
  memory_recycle,
  cancel,
  recycle,
  restart,
  shutdown,
  protocol,
  terminate
};

struct Proc {
  std::uint64_t serial = 0;
  std::size_t slot = 0;
  std::string name;
  pid_t pid = -1;
  int pidfd = -1;
  int sock = -1;
  SharedBuffer shared;         // a sealed memfd the worker maps too
  WorkerPage* page = nullptr;  // in `shared`: the rings and the worker's flags
  std::optional<Channel> channel;
  int out = -1;
  int err = -1;
  WState state = WState::starting;
  Reason reason = Reason::none;
  bool killed = false;
  bool restart = false;  // restart_worker() asked: no more tasks; stopped once they are done
  bool full = false;     // its channel had no room for the last request; cleared by its next reply
  Clock::time_point started{};
  Clock::time_point ready_at = kNever;
  Clock::time_point busy_since{};
  Clock::time_point idle_since{};
  Clock::time_point deadline = kNever;
  Clock::time_point kill_at = kNever;
  Clock::time_point next_rss = kNever;
  std::optional<LeakWatch> leak;  // ProcessPoolOptions::leak_watch
  Clock::time_point next_sample = kNever;
  CallPtr current;
  std::string current_task;  // kept after the call settles, for messages
  // Sent behind `current` (tiny tasks are pipelined) and not started yet: if the worker dies
  // they go back to the queue, untouched.
  std::deque<CallPtr> pending;
  std::uint64_t tasks_done = 0;
  std::uint64_t errors = 0;
  std::size_t rss = 0;
  // Its proportional set size, read by stats() at most once a second (kPssEvery).
  std::size_t pss = 0;
  Clock::time_point pss_at{};
  std::deque<std::string> tail;  // stderr only: for the messages of its task's failure
  std::string partial[2];
};

// A worker's place and name. A process gives its slot up when the pool stops it, so that its
// replacement takes the name at once; its exit is still recorded here.
struct Slot {
  std::uint64_t processes = 0;  // processes that held this slot so far
  std::uint64_t holder = 0;     // the serial of the process holding it; 0: free
  std::optional<ProcessExit> last_exit;
  std::deque<std::string> log;  // the last kTailLines lines of its processes, both streams
};

// A settlement or log line to deliver once the lock is released.
struct Settle {
  CallPtr call;
  std::exception_ptr error;
  std::optional<Frame> result;
};
struct LogOut {
  std::string worker;
  int pid;
  bool is_stderr;
  std::string line;
};

constexpr std::string_view kWho = "crew::ProcessPool";

class ProcessPoolCore {
 public:
  explicit ProcessPoolCore(ProcessPoolOptions options);
  ~ProcessPoolCore();

  void submit(CallBase& call, std::stop_token stop, const ProcessArm& arm);
  /// Reads replies on a waiting thread until `state` is ready or kDriveFor has passed.
  void drive(const StateBase& state) noexcept;
  std::atomic<int> drivers_in{0};  // threads inside drive(), counted under ProcessControl::mutex
  void post_cancel(std::uint64_t id);
  void close();
  void terminate();
  void wait_closed();
  ProcessPoolStats stats() const;
  bool restart_worker(std::string_view name);
  const ProcessPoolOptions& options() const noexcept { return options_; }
  HeapTarget heap_target(std::string_view worker) const;

 private:
  void run();
  void wake() noexcept;
  Clock::time_point next_deadline() const;
  void handle_event(std::uint64_t data, Clock::time_point now);
  std::size_t on_channel(Proc& p, Clock::time_point now);
  void wake_if_waiting(Proc& p, std::atomic<std::uint32_t>& flag);
  std::size_t poll_replies(Clock::time_point now);
  bool needs_supervisor() const;
  void reap_as_driver(bool block);
  void on_frame(Proc& p, Frame frame, Clock::time_point now);
  void on_output(Proc& p, int which);
  void on_exit(Proc& p, Clock::time_point now);
  void on_protocol_error(Proc& p, const std::string& what);
  void timers(Clock::time_point now);
  void dispatch(Clock::time_point now);
  CallPtr pop_queued();
  bool send_call(Proc& p, CallPtr& call, Clock::time_point now);
  void start_call(Proc& p, CallPtr call, Clock::time_point now);
  void requeue_pending(Proc& p);
  void spawn_as_needed(Clock::time_point now);
  void spawn(Clock::time_point now, std::optional<std::size_t> slot);
  void release_slot(Proc& p);
  void stop_proc(Proc& p, Reason reason, bool force, Clock::time_point now);
  void signal_worker(Proc& p, int sig);
  void startup_failed(std::string why, Clock::time_point now);
  void finish_task(Proc& p, Clock::time_point now, bool failed);
  void fail_attempt(CallPtr call, std::exception_ptr error, std::uint64_t& counter, bool may_retry,
                    Clock::time_point now);
  void promote_retries(Clock::time_point now);
  void fail_queued(const std::function<std::exception_ptr()>& error);
  void log_line(Proc& p, bool is_stderr, std::string line);
  // ProcessPoolOptions::leak_watch: one sample of the worker's resident memory.
  void sample_memory(Proc& p, Clock::time_point now);
  std::exception_ptr breaker_error() const;
  std::size_t live_procs() const;
  void flush(std::vector<Settle> settles, std::vector<LogOut> logs, ContinuationDeferral* deferral);

  ProcessPoolOptions options_;
  std::string executable_;
  std::vector<std::string> base_env_;
  std::shared_ptr<ProcessControl> control_;
  const Clock::time_point created_ = Clock::now();

  mutable std::mutex mutex_;
  // Guarded by mutex_: the queue, the cancel inbox, flags, procs (for stats), counters.
  std::map<int, std::deque<CallPtr>, std::greater<>> queue_;
  std::size_t queued_ = 0;
  std::vector<std::uint64_t> cancels_;
  bool closing_ = false;
  bool terminating_ = false;
  bool done_ = false;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, std::unique_ptr<Proc>> procs_;
  std::vector<Slot> slots_;
  // Slots whose worker restart_worker() stopped: each gets a replacement once it is free, even
  // with nothing queued.
  std::vector<std::size_t> owed_slots_;
  std::uint64_t completed_ = 0, failed_ = 0, cancelled_ = 0, timed_out_ = 0, crashed_ = 0;
  std::uint64_t restarts_ = 0, startup_failures_ = 0, spawned_ = 0, retried_ = 0;
  std::uint64_t leaks_suspected_ = 0;
  // Calls waiting out their backoff before their next attempt, by when it is due.
  std::multimap<Clock::time_point, CallPtr> retries_;
  std::minstd_rand jitter_random_{std::random_device{}()};
  nanoseconds busy_total_{0};
  // Recent task run time, for the pipelining decision; a new pool starts well above the
  // threshold, so nothing is pipelined before tasks have shown they are short.
  std::int64_t ewma_run_ns_ = 5 * kPipelineBelow.count();
  LatencyHistogram wait_hist_, run_hist_;
  // Restart policy (supervisor only, read by stats under mutex_).
  RestartBackoff backoff_{milliseconds(0)};
  // spawn_as_needed() was held back by the backoff: the supervisor must wake at its end even
  // if that passes before it goes to sleep.
  bool spawn_due_ = false;
  std::size_t startup_failures_in_row_ = 0;
  bool breaker_open_ = false;
  std::string last_startup_error_;

  std::condition_variable closed_cv_;
  int epoll_ = -1;
  int event_ = -1;
  int page_fd_ = -1;
  PoolPage* page_ = nullptr;
  // Guarded by mutex_: when the sleeping supervisor will wake by itself (min() while it is awake),
  // and whether a driver changed something only the supervisor acts on.
  Clock::time_point sleep_until_ = Clock::time_point::min();
  bool kick_ = false;
  std::uint64_t next_serial_ = 1;
  // Guarded by mutex_; handed out of the lock (take_output) and delivered by flush().
  std::vector<Settle> settles_;
  std::vector<LogOut> logs_;
  std::shared_ptr<spdlog::logger> logger_;
  // Continuations of what the supervisor settles; closed after the supervisor has stopped.
  ContinuationRunner continuations_{options_.name};
  std::thread thread_;
};

}  // namespace detail
}  // namespace crew::inline v0
