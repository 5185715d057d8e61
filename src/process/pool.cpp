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
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/detail/continuation_runner.hpp>
#include <crew/detail/futex.hpp>
#include <crew/process/cluster.hpp>
#include <crew/process/pool.hpp>
#include <crew/shared_buffer.hpp>

#include "backoff.hpp"
#include "channel.hpp"
#include "frame.hpp"
#include "spawn.hpp"
#include "worker_env.hpp"

extern char** environ;

namespace crew::inline v0 {
namespace detail {

int worker_socket_from_env() noexcept {
  static const int fd = [] {
    const char* v = std::getenv(kWorkerFdEnv);
    if (v == nullptr || *v == '\0') return -1;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 0 || n > INT_MAX || ::fcntl(static_cast<int>(n), F_GETFD) < 0) {
      return -1;
    }
    return static_cast<int>(n);
  }();
  return fd;
}

class ProcessControl {
 public:
  std::mutex mutex;
  ProcessPoolCore* core = nullptr;  // null once the pool is gone
};

namespace {

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

ProcessExitReason exit_reason(Reason reason, int signal) {
  switch (reason) {
    case Reason::timeout:
      return ProcessExitReason::timeout;
    case Reason::memory:
    case Reason::memory_recycle:
      return ProcessExitReason::memory;
    case Reason::none:
    case Reason::protocol:  // killed for what it sent, not on anyone's request
      return signal != 0 ? ProcessExitReason::signal : ProcessExitReason::exit;
    case Reason::cancel:
    case Reason::recycle:
    case Reason::restart:
    case Reason::shutdown:
    case Reason::terminate:
      return ProcessExitReason::stop;
  }
  return ProcessExitReason::exit;
}

const char* state_name(WState s) {
  switch (s) {
    case WState::starting:
      return "starting";
    case WState::idle:
      return "idle";
    case WState::busy:
      return "busy";
    case WState::stopping:
      return "stopping";
  }
  return "?";
}

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

std::string describe_exit(int code, int signal) {
  if (signal != 0) {
    const char* name = ::sigabbrev_np(signal);
    return fmt::format("killed by signal {} (SIG{})", signal, name != nullptr ? name : "?");
  }
  if (code >= 0) return fmt::format("exited with code {}", code);
  return "exited (status not available)";
}

// User plus system CPU time of a process (/proc/PID/stat); 0 when it cannot be read.
nanoseconds cpu_time_of(int pid) noexcept {
  char path[40];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nanoseconds(0);
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return nanoseconds(0);
  buf[n] = '\0';
  // The command name may hold spaces and parentheses: the fields start after the last ')'.
  const char* fields = std::strrchr(buf, ')');
  unsigned long user = 0, system = 0;
  if (fields == nullptr ||
      std::sscanf(fields + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &user,
                  &system) != 2) {
    return nanoseconds(0);
  }
  static const long ticks = ::sysconf(_SC_CLK_TCK);
  if (ticks <= 0) return nanoseconds(0);
  return nanoseconds(static_cast<std::int64_t>((user + system) * (1'000'000'000 / ticks)));
}

std::string tail_text(const std::deque<std::string>& tail) {
  if (tail.empty()) return " (no stderr output)";
  std::string out = "; last stderr lines:";
  for (const auto& l : tail) out += "\n  | " + l;
  return out;
}

}  // namespace

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

// ---- construction ------------------------------------------------------------------------------

ProcessPoolCore::ProcessPoolCore(ProcessPoolOptions options) : options_(std::move(options)) {
  auto invalid = [](const std::string& what) {
    throw std::invalid_argument("crew::ProcessPool: " + what);
  };
  if (options_.max_workers == 0) options_.max_workers = default_thread_count();
  if (options_.min_workers > options_.max_workers) {
    invalid(fmt::format("min_workers ({}) must be <= max_workers ({})", options_.min_workers,
                        options_.max_workers));
  }
  if (options_.tasks == nullptr && options_.executable.empty()) {
    invalid(
        "give .tasks (this program's registry, for workers that re-run this program) or "
        ".executable (another program that calls crew::serve)");
  }
  if (options_.name.empty()) invalid("name must not be empty");
  if (options_.restart_backoff.count() <= 0) {
    invalid(fmt::format("restart_backoff ({} ms) must be > 0", options_.restart_backoff.count()));
  }
  if (options_.max_startup_failures == 0) invalid("max_startup_failures must be >= 1");
  if (options_.leak_watch) (void)LeakWatch(*options_.leak_watch);  // throws naming a bad field
  backoff_ = RestartBackoff(options_.restart_backoff);
  if (options_.idle_timeout.count() < 0 || options_.task_timeout.count() < 0 ||
      options_.terminate_grace.count() < 0) {
    invalid("idle_timeout, task_timeout and terminate_grace must not be negative");
  }
  executable_ = options_.executable.empty() ? std::string("/proc/self/exe") : options_.executable;
  if (!options_.executable.empty() && ::access(executable_.c_str(), X_OK) != 0) {
    invalid(
        fmt::format("executable '{}' cannot be run ({}); give the path of a program that "
                    "calls crew::serve",
                    executable_, std::strerror(errno)));
  }
  if (executable_ == "/proc/self/exe") {
    // Resolve now: a worker started later must run the same file even if the path changes.
    char buf[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) executable_.assign(buf, static_cast<std::size_t>(n));
  }
  for (const auto& [key, value] : options_.env) {
    if (key.empty() || key.find('=') != std::string::npos) {
      invalid(fmt::format("env key '{}' must be non-empty and contain no '='", key));
    }
  }
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    const std::string_view key = kv.substr(0, kv.find('='));
    if (key == kWorkerFdEnv || key == kWorkerNameEnv || options_.env.contains(std::string(key))) {
      continue;
    }
    base_env_.emplace_back(kv);
  }
  for (const auto& [key, value] : options_.env) base_env_.push_back(key + "=" + value);

  if (!options_.log) {
    logger_ = spdlog::get("crew.process");
    if (!logger_) {
      try {
        logger_ = spdlog::stderr_color_mt("crew.process");
      } catch (const spdlog::spdlog_ex&) {
        logger_ = spdlog::get("crew.process");  // another pool registered it meanwhile
      }
    }
  }

  {
    // Each step names itself when it fails; what was made so far is closed again.
    auto fail = [](const char* step, const char* hint) {
      const int err = errno;
      throw std::system_error(
          err, std::generic_category(),
          fmt::format("crew::ProcessPool: {} for the pool failed{}", step, hint));
    };
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll) fail("epoll_create1", "");
    UniqueFd event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!event) fail("eventfd", "");
    UniqueFd page_fd(::memfd_create("crew-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!page_fd) fail("memfd_create", " (Linux 3.17 or later is needed)");
    if (::ftruncate(page_fd.get(), kPoolPageSize) != 0) fail("ftruncate of the memfd", "");
    // Mapped writable before the seal, which forbids any further writable mapping.
    void* page =
        ::mmap(nullptr, kPoolPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, page_fd.get(), 0);
    if (page == MAP_FAILED) fail("mmap of the shared page", "");
    // Workers may map the page only read-only: a broken worker cannot silence the others.
    if (::fcntl(page_fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE) !=
        0) {
      const int err = errno;
      ::munmap(page, kPoolPageSize);
      errno = err;
      fail("sealing the memfd", " (F_SEAL_FUTURE_WRITE needs Linux 5.1 or later)");
    }
    try {
      epoll_watch(kWho, epoll.get(), event.get(), 0);
    } catch (...) {
      ::munmap(page, kPoolPageSize);
      throw;
    }
    page_ = new (page) PoolPage;
    epoll_ = epoll.release();
    event_ = event.release();
    page_fd_ = page_fd.release();
  }

  control_ = std::make_shared<ProcessControl>();
  control_->core = this;
  // PR_SET_PDEATHSIG fires when the *thread* that forked exits, so every fork happens on this
  // thread, which lives exactly as long as the pool.
  thread_ = std::thread([this] { run(); });
  wake();  // starts min_workers
}

ProcessPoolCore::~ProcessPoolCore() {
  close();
  wait_closed();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(control_->mutex);
    control_->core = nullptr;
  }
  // A thread may still be reading replies for a future it got before the pool closed.
  while (drivers_in.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  ::munmap(page_, kPoolPageSize);
  for (int fd : {epoll_, event_, page_fd_}) ::close(fd);
}

void ProcessPoolCore::wake() noexcept {
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto n = ::write(event_, &one, sizeof one);
}

// ---- calls from any thread ---------------------------------------------------------------------

std::exception_ptr ProcessPoolCore::breaker_error() const {
  return std::make_exception_ptr(WorkerCrashed(
      fmt::format("crew::ProcessPool '{}': workers keep failing to start ({} times in a row), so "
                  "tasks are not run; the pool retries every {} s. Last failure: {}",
                  options_.name, startup_failures_in_row_, backoff_.cap().count() / 1000,
                  last_startup_error_),
      "", 0, 0, -1, {}));
}

void ProcessPoolCore::submit(CallBase& call, std::stop_token stop, const ProcessArm& arm) {
  if (options_.tasks != nullptr && options_.executable.empty() &&
      !options_.tasks->contains(call.task)) {
    std::string known;
    for (const auto& n : options_.tasks->names()) known += (known.empty() ? "" : ", ") + n;
    throw BadArguments(fmt::format("crew::ProcessPool::run: unknown task '{}'; known tasks: {}",
                                   call.task, known.empty() ? "(none)" : known));
  }
  bool need_wake = false;
  {
    std::lock_guard lock(mutex_);
    if (closing_ || terminating_) {
      throw PoolClosed(
          fmt::format("crew::ProcessPool '{}': closed; no new tasks are accepted (task '{}')",
                      options_.name, call.task));
    }
    // Once the breaker has held off for its time, a new task is let through: it is the probe
    // that a worker can start again (or fails with the reason, like the queue did).
    if (breaker_open_ && !backoff_.may_start(Clock::now())) {
      std::rethrow_exception(breaker_error());
    }
    if (options_.max_queue != 0 && queued_ >= options_.max_queue) {
      throw QueueFull(fmt::format(
          "crew::ProcessPool '{}': the queue is full ({} tasks waiting, max_queue = {}); retry "
          "later or raise max_queue",
          options_.name, queued_, options_.max_queue));
    }
    call.id = next_id_++;
    call.submitted = Clock::now();
    if (call.timeout.count() == 0) call.timeout = options_.task_timeout;
    call.state().add_ref();
    queue_[call.priority].emplace_back(&call);
    ++queued_;
    // Send from this thread when a worker can take the task: one thread hop less on the way.
    // A task left queued goes out when a worker answers (whoever reads the answer dispatches);
    // the supervisor only has to hear of what it alone acts on, or of anything to deliver.
    dispatch(Clock::now());
    need_wake = !settles_.empty() || needs_supervisor();
  }
  // Armed outside the lock: a stop token that already fired cancels right here, which posts
  // to this pool.
  arm(control_, std::move(stop));
  if (need_wake) wake();
}

void ProcessPoolCore::post_cancel(std::uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    cancels_.push_back(id);
  }
  wake();
}

void ProcessPoolCore::close() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
  }
  wake();
}

void ProcessPoolCore::terminate() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
    terminating_ = true;
  }
  wake();
  wait_closed();
}

void ProcessPoolCore::wait_closed() {
  std::unique_lock lock(mutex_);
  closed_cv_.wait(lock, [&] { return done_; });
}

ProcessPoolStats ProcessPoolCore::stats() const {
  // The /proc reads happen outside the lock (PSS takes milliseconds for a large worker), through
  // a copy of each worker's pidfd: once the reads are done, a process that still lives is the one
  // its pid named, even if the supervisor reaped it meanwhile and the number went to another.
  struct Probe {
    std::uint64_t serial;
    UniqueFd pidfd;
    bool pss;
  };
  std::vector<Probe> probes;
  ProcessPoolStats s;
  const auto now = Clock::now();
  std::unique_lock lock(mutex_);
  for (const auto& [serial, p] : procs_) {
    if (p->state != WState::stopping) ++s.workers;
    if (p->state == WState::busy) ++s.busy;
    if (p->state == WState::idle) ++s.idle;
    const Slot& slot = slots_[p->slot];
    if (slot.holder != 0 && slot.holder != serial) continue;  // its replacement has the row
    ProcessWorkerStats w;
    w.pid = p->pid;
    w.name = p->name;
    w.state = state_name(p->state);
    w.uptime = std::chrono::duration_cast<milliseconds>(now - p->started);
    w.tasks_done = p->tasks_done;
    w.errors = p->errors;
    w.restarts = slot.processes - 1;
    w.pss_bytes = p->pss;
    if (p->leak) {
      w.leak_suspected = p->leak->suspected();
      w.leak_bytes_per_second = p->leak->bytes_per_second();
    }
    w.last_exit = slot.last_exit;
    w.log_tail.assign(slot.log.begin(), slot.log.end());
    s.per_worker.push_back(std::move(w));
    probes.push_back(
        {serial, UniqueFd(::fcntl(p->pidfd, F_DUPFD_CLOEXEC, 0)), now - p->pss_at >= kPssEvery});
  }
  s.queued = queued_;
  s.completed = completed_;
  s.failed = failed_;
  s.cancelled = cancelled_;
  s.timed_out = timed_out_;
  s.retried = retried_;
  s.crashed = crashed_;
  s.restarts = restarts_;
  s.leaks_suspected = leaks_suspected_;
  s.startup_failures = startup_failures_;
  const double elapsed = std::chrono::duration<double>(now - created_).count();
  s.utilization = elapsed > 0 ? std::chrono::duration<double>(busy_total_).count() /
                                    (elapsed * static_cast<double>(options_.max_workers))
                              : 0.0;
  s.wait_time = wait_hist_.summary();
  s.run_time = run_hist_.summary();
  lock.unlock();

  std::vector<std::pair<std::uint64_t, std::size_t>> fresh_pss;
  for (std::size_t i = 0; i < probes.size(); ++i) {
    ProcessWorkerStats& w = s.per_worker[i];
    if (!probes[i].pidfd) continue;
    const std::size_t rss = resident_memory_bytes(w.pid);
    const nanoseconds cpu = cpu_time_of(w.pid);
    const std::optional<std::size_t> pss =
        probes[i].pss ? memory_usage(w.pid, {.pss = true}).pss : std::nullopt;
    // Gone: its pid may name another process by now, so the figures may not be its.
    if (signal_process(probes[i].pidfd.get(), 0) != 0) continue;
    w.rss_bytes = rss;
    w.cpu_time = cpu;
    if (pss) {
      w.pss_bytes = *pss;
      fresh_pss.emplace_back(probes[i].serial, *pss);
    }
  }
  if (!fresh_pss.empty()) {
    lock.lock();
    for (const auto& [serial, pss] : fresh_pss) {
      const auto it = procs_.find(serial);
      if (it == procs_.end()) continue;
      it->second->pss = pss;
      it->second->pss_at = now;
    }
  }
  return s;
}

bool ProcessPoolCore::restart_worker(std::string_view name) {
  {
    std::lock_guard lock(mutex_);
    Proc* target = nullptr;
    bool found = false;  // perhaps only a process already stopping
    for (auto& [serial, p] : procs_) {
      if (p->name != name) continue;
      found = true;
      if (p->state != WState::stopping) target = p.get();
    }
    if (target == nullptr) return found;
    if (target->restart) return true;  // asked already
    if (!closing_ && std::ranges::find(owed_slots_, target->slot) == owed_slots_.end()) {
      owed_slots_.push_back(target->slot);
    }
    if (target->state == WState::busy) {
      target->restart = true;  // finish_task() stops it
      return true;
    }
    stop_proc(*target, Reason::restart, false, Clock::now());
  }
  wake();
  return true;
}

// ---- the supervisor ----------------------------------------------------------------------------

std::size_t ProcessPoolCore::live_procs() const {
  std::size_t n = 0;
  for (const auto& [serial, p] : procs_) n += p->state != WState::stopping ? 1 : 0;
  return n;
}

Clock::time_point ProcessPoolCore::next_deadline() const {
  Clock::time_point t = kNever;
  // An idle worker's timeout is a deadline only when it would stop it: past it, a worker the
  // pool keeps (min_workers) would wake this thread at once, again and again.
  const bool may_shrink = options_.idle_timeout.count() > 0 && live_procs() > options_.min_workers;
  for (const auto& [serial, p] : procs_) {
    t = std::min({t, p->deadline, p->kill_at, p->next_rss, p->next_sample});
    if (p->state == WState::idle && may_shrink) {
      t = std::min(t, p->idle_since + options_.idle_timeout);
    }
    if (p->ready_at != kNever && backoff_.unstable()) {
      t = std::min(t, p->ready_at + backoff_.stable_after());
    }
  }
  // A spawn waiting out its backoff; once the time has come, spawn_as_needed() acts at once.
  if (spawn_due_) t = std::min(t, backoff_.next());
  if (!retries_.empty()) t = std::min(t, retries_.begin()->first);
  return t;
}

void ProcessPoolCore::run() {
  ::prctl(PR_SET_NAME, (options_.name.substr(0, 11) + "-sup").c_str(), 0, 0, 0);
  std::vector<epoll_event> events(64);
  for (;;) {
    int timeout_ms;
    {
      std::lock_guard lock(mutex_);
      // Workers ring again from here on; what they sent before is read now.
      page_->supervisor_awake.store(0, std::memory_order_seq_cst);
      const bool more = poll_replies(Clock::now()) > 0;
      const auto deadline = more ? Clock::time_point::min() : next_deadline();
      sleep_until_ = deadline;
      kick_ = false;
      if (more) {
        timeout_ms = 0;
      } else if (deadline == kNever) {
        timeout_ms = -1;
      } else {
        const auto left = deadline - Clock::now();
        timeout_ms = left <= nanoseconds(0)
                         ? 0
                         : static_cast<int>(std::chrono::ceil<milliseconds>(left).count());
      }
      if (page_->drivers.load(std::memory_order_relaxed) != 0) {
        const int backstop = static_cast<int>(kDriverBackstop.count());
        timeout_ms = timeout_ms < 0 ? backstop : std::min(timeout_ms, backstop);
      }
    }
    const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), timeout_ms);
    page_->supervisor_awake.store(1, std::memory_order_relaxed);
    bool finished = false;
    std::vector<Settle> settles;
    std::vector<LogOut> logs;
    {
      std::unique_lock lock(mutex_);
      sleep_until_ = Clock::time_point::min();
      const auto now = Clock::now();
      for (int i = 0; i < n; ++i) handle_event(events[i].data.u64, now);
      if (n == 0) poll_replies(now);  // the backstop, or a deadline
      timers(now);
      promote_retries(now);
      // Cancellations: a queued call was already settled (skipped at dispatch); a running one
      // loses its worker; one waiting for its retry never runs again.
      for (const std::uint64_t id : std::exchange(cancels_, {})) {
        for (auto& [serial, p] : procs_) {
          if (p->current && p->current->id == id && p->reason == Reason::none) {
            ++cancelled_;
            ++p->errors;
            p->current.reset();
            stop_proc(*p, Reason::cancel, true, now);
          }
        }
        const auto waiting =
            std::ranges::find_if(retries_, [&](const auto& r) { return r.second->id == id; });
        if (waiting != retries_.end()) {
          ++cancelled_;
          retries_.erase(waiting);
        }
      }
      if (terminating_) {
        fail_queued([&] {
          return std::make_exception_ptr(PoolClosed(fmt::format(
              "crew::ProcessPool '{}': terminated while the task waited to run", options_.name)));
        });
        for (auto& [serial, p] : procs_) {
          if (p->current) {
            settles_.push_back({std::move(p->current),
                                std::make_exception_ptr(PoolClosed(
                                    fmt::format("crew::ProcessPool '{}': terminated while the "
                                                "task '{}' was running; its worker was killed",
                                                options_.name, p->current_task))),
                                std::nullopt});
            ++cancelled_;
          }
          if (p->reason != Reason::terminate) stop_proc(*p, Reason::terminate, true, now);
        }
      } else {
        dispatch(now);
        spawn_as_needed(now);
        if (closing_ && queued_ == 0 && retries_.empty()) {
          for (auto& [serial, p] : procs_) {
            if (p->state == WState::idle || p->state == WState::starting) {
              stop_proc(*p, Reason::shutdown, false, now);
            }
          }
        }
      }
      if (closing_ && queued_ == 0 && retries_.empty() && procs_.empty()) finished = true;
      settles = std::exchange(settles_, {});
      logs = std::exchange(logs_, {});
    }
    flush(std::move(settles), std::move(logs), &continuations_);
    if (finished) break;
  }
  std::lock_guard lock(mutex_);
  done_ = true;
  closed_cv_.notify_all();
}

void ProcessPoolCore::flush(std::vector<Settle> settles, std::vector<LogOut> logs,
                            ContinuationDeferral* deferral) {
  for (auto& s : settles) {
    if (s.result) {
      WireScope scope(&s.result->fds, nullptr);
      try {
        // One zone for every reply this thread reads: its memory is reused, not reallocated.
        thread_local msgpack::zone zone;
        zone.clear();
        s.call->deliver(unpack_payload(s.result->payload, zone), deferral);
      } catch (const std::exception& e) {
        s.call->fail(std::make_exception_ptr(WorkerCrashed(
                         fmt::format("crew::ProcessPool: the result of task '{}' could not be "
                                     "read: {}",
                                     s.call->task, e.what()),
                         s.call->task, 0, 0, -1, {})),
                     deferral);
      }
    } else {
      s.call->fail(std::move(s.error), deferral);  // the consumer must own the last reference
    }
  }
  settles.clear();
  for (auto& l : logs) {
    if (options_.log) {
      options_.log(ProcessLogLine{l.worker, l.pid, l.is_stderr, l.line});
    } else if (logger_) {
      logger_->log(l.is_stderr ? spdlog::level::warn : spdlog::level::info, "[{} pid {}] {}",
                   l.worker, l.pid, l.line);
    }
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

void ProcessPoolCore::handle_event(std::uint64_t data, Clock::time_point now) {
  if (data == 0) {
    std::uint64_t v;
    while (::read(event_, &v, sizeof v) > 0) {
    }
    poll_replies(now);
    return;
  }
  const auto it = procs_.find(data >> 2);
  if (it == procs_.end()) return;
  Proc& p = *it->second;
  switch (data & 3) {
    case 1:
      on_output(p, 0);
      break;
    case 2:
      on_output(p, 1);
      break;
    case 3:
      on_exit(p, now);
      break;
  }
}

void ProcessPoolCore::wake_if_waiting(Proc& p, std::atomic<std::uint32_t>& flag) {
  // Pairs with the worker's "set the flag, then look once more" (both sides seq_cst).
  if (p.sock >= 0 && flag.exchange(0, std::memory_order_seq_cst) != 0) {
    try {
      p.channel->wake();
    } catch (const std::exception&) {  // the worker is going; its exit is handled
    }
  }
}

std::size_t ProcessPoolCore::on_channel(Proc& p, Clock::time_point now) {
  std::size_t frames = 0;
  while (p.sock >= 0) {
    Frame frame;
    RecvStatus st;
    try {
      st = p.channel->get(frame);
    } catch (const std::exception& e) {
      on_protocol_error(p, e.what());
      return frames + 1;
    }
    if (st == RecvStatus::would_block) {
      if (frames > 0) wake_if_waiting(p, p.page->wants_room);
      return frames;
    }
    if (st == RecvStatus::closed) {
      // The worker is exiting or closed its channel: it can serve no more. The exit event
      // (pidfd) settles whatever it was running.
      ::close(p.sock);
      p.sock = -1;
      if (p.state != WState::stopping) {
        p.state = WState::stopping;
        p.kill_at = std::min(p.kill_at, now + options_.terminate_grace);
        kick_ = true;
      }
      return frames + 1;
    }
    ++frames;
    p.full = false;
    on_frame(p, std::move(frame), now);
  }
  return frames;
}

std::size_t ProcessPoolCore::poll_replies(Clock::time_point now) {
  // Only a worker starting up or with tasks in flight has anything to say; what an idle worker
  // sends is read with its next reply (and is then a protocol error) or when it exits.
  std::size_t frames = 0;
  for (auto& [serial, pp] : procs_) {
    Proc& p = *pp;
    if (p.sock >= 0 && (p.state == WState::starting || p.current || !p.pending.empty()) &&
        p.channel->has_input()) {
      frames += on_channel(p, now);
    }
  }
  return frames;
}

bool ProcessPoolCore::needs_supervisor() const {
  // Only the supervisor forks, times tasks out, delivers log lines and winds the pool down.
  return kick_ || closing_ || !logs_.empty() ||
         (queued_ > 0 && live_procs() < options_.max_workers) || next_deadline() < sleep_until_;
}

void ProcessPoolCore::reap_as_driver(bool block) {
  std::vector<Settle> settles;
  bool wake_supervisor = false;
  {
    std::unique_lock lock(mutex_, std::defer_lock);
    if (block) {
      lock.lock();
    } else if (!lock.try_lock()) {
      return;
    }
    const auto now = Clock::now();
    if (poll_replies(now) > 0) {
      if (!closing_ && !terminating_) dispatch(now);
      wake_supervisor = needs_supervisor();
    }
    settles = std::exchange(settles_, {});
  }
  if (wake_supervisor) wake();
  // On a thread that waits for a result anyway: continuations run here, as a settling thread's.
  flush(std::move(settles), {}, nullptr);
}

void ProcessPoolCore::drive(const StateBase& state) noexcept {
  try {
    page_->drivers.fetch_add(1, std::memory_order_seq_cst);
    const auto until = Clock::now() + kDriveFor;
    for (int i = 1; !state.ready(); ++i) {
      reap_as_driver(false);
      if (state.ready()) break;
      cpu_relax();
      if ((i & 7) == 0 && Clock::now() >= until) break;
    }
    page_->drivers.fetch_sub(1, std::memory_order_seq_cst);
    // A worker that answered while we were counted did not ring: read what it sent.
    reap_as_driver(true);
  } catch (...) {
    // Out of memory while delivering: the supervisor still reads every reply.
    wake();
  }
}

void ProcessPoolCore::on_protocol_error(Proc& p, const std::string& what) {
  const auto now = Clock::now();
  if (p.current) {
    ++p.errors;
    fail_attempt(std::move(p.current),
                 std::make_exception_ptr(WorkerCrashed(
                     fmt::format("crew::ProcessPool: worker {} (pid {}) sent a malformed message "
                                 "while running task '{}' ({}); the worker was replaced",
                                 p.name, p.pid, p.current_task, what),
                     p.current_task, p.pid, 0, -1, {p.tail.begin(), p.tail.end()})),
                 failed_, true, now);
  }
  log_line(p, true, "crew: malformed message from this worker: " + what + "; killing it");
  stop_proc(p, Reason::protocol, true, now);
}

void ProcessPoolCore::on_frame(Proc& p, Frame frame, Clock::time_point now) {
  switch (frame.type) {
    case FrameType::ready:
      if (p.state != WState::starting) return on_protocol_error(p, "a second ready message");
      p.state = WState::idle;
      p.ready_at = now;
      p.idle_since = now;
      startup_failures_in_row_ = 0;
      breaker_open_ = false;
      return;
    case FrameType::result:
    case FrameType::error: {
      if (p.state != WState::busy && p.reason == Reason::none) {
        return on_protocol_error(p, "a reply while no task was running");
      }
      if (!p.current || frame.id != p.current->id) {
        // Its task already settled (timed out or cancelled) and the worker is on its way out.
        if (p.reason != Reason::none) return;
        return on_protocol_error(p, fmt::format("a reply for unknown task id {}", frame.id));
      }
      if (frame.type == FrameType::result) {
        ++completed_;
        settles_.push_back({std::move(p.current), nullptr, std::move(frame)});
        finish_task(p, now, false);
      } else {
        ErrorReply r;
        try {
          r = parse_error(frame.payload);
        } catch (const std::exception& e) {
          return on_protocol_error(p, e.what());
        }
        std::exception_ptr error;
        const std::string& task = p.current->task;
        switch (r.kind) {
          case ErrorKind::unknown_task:
            error = std::make_exception_ptr(BadArguments(r.message));
            break;
          case ErrorKind::bad_arguments:
            error = std::make_exception_ptr(BadArguments(
                p.current->given_types != nullptr
                    ? fmt::format("{}; the caller passed ({})", r.message, p.current->given_types())
                    : r.message));
            break;
          case ErrorKind::out_of_memory:
            error = options_.memory_limit_bytes != 0
                        ? std::make_exception_ptr(MemoryLimitExceeded(
                              fmt::format("crew::ProcessPool: task '{}' ran out of memory in "
                                          "worker {} (pid {}): memory_limit_bytes is {}",
                                          task, p.name, p.pid, options_.memory_limit_bytes),
                              options_.memory_limit_bytes))
                        : std::make_exception_ptr(
                              RemoteError(fmt::format("crew::ProcessPool: task '{}' threw {}: {}",
                                                      task, r.type, r.message),
                                          r.type, r.message));
            break;
          case ErrorKind::remote:
            error = std::make_exception_ptr(RemoteError(
                fmt::format("crew::ProcessPool: task '{}' threw {}: {}", task, r.type, r.message),
                r.type, r.message));
            break;
        }
        // Arguments the task cannot take stay wrong however often it runs.
        const bool may_retry =
            r.kind != ErrorKind::unknown_task && r.kind != ErrorKind::bad_arguments;
        fail_attempt(std::move(p.current), std::move(error), failed_, may_retry, now);
        finish_task(p, now, true);
        // After running out of memory the heap may be in no shape for more work.
        if (r.kind == ErrorKind::out_of_memory) stop_proc(p, Reason::memory_recycle, false, now);
      }
      return;
    }
    default:
      return on_protocol_error(p, "a frame type workers never send");
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

void ProcessPoolCore::on_output(Proc& p, int which) {
  int& fd = which == 0 ? p.out : p.err;
  char buf[8192];
  for (;;) {
    const ssize_t n = fd >= 0 ? ::read(fd, buf, sizeof buf) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        if (fd >= 0) {
          ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
          ::close(fd);
          fd = -1;
        }
        if (!p.partial[which].empty()) log_line(p, which == 1, std::move(p.partial[which]));
        p.partial[which].clear();
      }
      return;
    }
    std::string& part = p.partial[which];
    part.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (;;) {
      const std::size_t nl = part.find('\n', start);
      if (nl == std::string::npos) break;
      log_line(p, which == 1, part.substr(start, nl - start));
      start = nl + 1;
    }
    part.erase(0, start);
    while (part.size() >= kMaxLine) {
      log_line(p, which == 1, part.substr(0, kMaxLine));
      part.erase(0, kMaxLine);
    }
  }
}

void ProcessPoolCore::sample_memory(Proc& p, Clock::time_point now) {
  const auto& o = *options_.leak_watch;
  p.next_sample = p.state == WState::stopping ? kNever : now + o.window / (3 * o.spans);
  if (p.state == WState::stopping) return;
  const bool before = p.leak->suspected();
  if (!p.leak->observe(now, resident_memory_bytes(p.pid)) || before) return;
  ++leaks_suspected_;
  log_line(p, true,
           fmt::format("crew: this worker's lowest resident memory has risen for {} ms, by {:.0f} "
                       "KB/s, and is {} bytes now: a leak? (ProcessPoolOptions::leak_watch; "
                       "max_rss_restart_bytes replaces such a worker)",
                       o.window.count(), p.leak->bytes_per_second() / 1024,
                       resident_memory_bytes(p.pid)));
}

void ProcessPoolCore::log_line(Proc& p, bool is_stderr, std::string line) {
  if (is_stderr) {
    p.tail.push_back(line);
    if (p.tail.size() > kTailLines) p.tail.pop_front();
  }
  auto& log = slots_[p.slot].log;
  log.push_back(line);
  if (log.size() > kTailLines) log.pop_front();
  logs_.push_back({p.name, p.pid, is_stderr, std::move(line)});
}

void ProcessPoolCore::on_exit(Proc& p, Clock::time_point now) {
  // Whatever the worker sent or printed before it died comes first.
  on_channel(p, now);
  on_output(p, 0);
  on_output(p, 1);
  requeue_pending(p);  // sent but never started: they run on another worker
  int code = -1, sig = 0;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(p.pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r == p.pid) {
    if (WIFEXITED(status)) code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) sig = WTERMSIG(status);
  }
  const std::string how = describe_exit(code, sig);
  const bool before_ready = p.ready_at == kNever;

  if (p.current) {
    if (p.reason == Reason::memory) {
      fail_attempt(std::move(p.current),
                   std::make_exception_ptr(MemoryLimitExceeded(
                       fmt::format("crew::ProcessPool: task '{}' went over memory_limit_bytes ({} "
                                   "bytes) in worker {} (pid {}), which was {}",
                                   p.current_task, options_.memory_limit_bytes, p.name, p.pid, how),
                       options_.memory_limit_bytes)),
                   failed_, true, now);
    } else {
      ++crashed_;
      // Out of address space inside an allocation often ends in one of these signals.
      const bool maybe_memory = options_.memory_limit_bytes != 0 && kUseAddressLimit &&
                                (sig == SIGSEGV || sig == SIGABRT || sig == SIGBUS);
      fail_attempt(
          std::move(p.current),
          std::make_exception_ptr(WorkerCrashed(
              fmt::format("crew::ProcessPool: worker {} (pid {}) running task '{}' {}{}{}", p.name,
                          p.pid, p.current_task, how,
                          maybe_memory ? fmt::format(" (its memory cap of {} bytes may have "
                                                     "been hit)",
                                                     options_.memory_limit_bytes)
                                       : "",
                          tail_text(p.tail)),
              p.current_task, p.pid, sig, sig != 0 ? -1 : code, {p.tail.begin(), p.tail.end()})),
          failed_, true, now);
    }
    ++p.errors;
  }

  if (before_ready && p.reason == Reason::none) {
    startup_failed(fmt::format("worker {} (pid {}) {} before it was ready{}", p.name, p.pid, how,
                               tail_text(p.tail)),
                   now);
  } else if (p.reason == Reason::none && p.current_task.empty() &&
             now - p.ready_at < backoff_.stable_after()) {
    // Died idle soon after starting: unstable, so restarts back off.
    backoff_.fail(now);
  }

  for (int* fd : {&p.sock, &p.out, &p.err, &p.pidfd}) {
    if (*fd >= 0) {
      ::epoll_ctl(epoll_, EPOLL_CTL_DEL, *fd, nullptr);
      ::close(*fd);
      *fd = -1;
    }
  }
  p.channel.reset();
  slots_[p.slot].last_exit = ProcessExit{sig, sig != 0 ? -1 : code, exit_reason(p.reason, sig),
                                         std::chrono::system_clock::now()};
  release_slot(p);
  procs_.erase(p.serial);
}

void ProcessPoolCore::startup_failed(std::string why, Clock::time_point now) {
  ++startup_failures_;
  ++startup_failures_in_row_;
  last_startup_error_ = std::move(why);
  backoff_.fail(now);
  if (startup_failures_in_row_ >= options_.max_startup_failures) {
    // The breaker: what waits fails with the reason; the next try is after the longest delay.
    breaker_open_ = true;
    backoff_.hold(now);
    fail_queued([&] { return breaker_error(); });
  }
}

void ProcessPoolCore::signal_worker(Proc& p, int sig) {
  // Through the pidfd: the pid of a worker reaped meanwhile could name another process.
  const int err = signal_process(p.pidfd, sig);
  if (err != 0) {
    const char* name = ::sigabbrev_np(sig);
    log_line(p, true,
             fmt::format("crew: could not send SIG{} to this worker: pidfd_send_signal failed "
                         "({}: {})",
                         name != nullptr ? name : "?", ::strerrorname_np(err), std::strerror(err)));
  }
}

void ProcessPoolCore::release_slot(Proc& p) {
  if (slots_[p.slot].holder == p.serial) slots_[p.slot].holder = 0;
}

void ProcessPoolCore::stop_proc(Proc& p, Reason reason, bool force, Clock::time_point now) {
  kick_ = true;
  requeue_pending(p);
  release_slot(p);
  if (p.reason == Reason::none || reason == Reason::terminate) p.reason = reason;
  p.state = WState::stopping;
  p.deadline = kNever;
  p.next_rss = kNever;
  if (force) {
    signal_worker(p, SIGKILL);
    p.killed = true;
    p.kill_at = kNever;
    return;
  }
  if (p.sock >= 0) {
    try {
      if (p.channel->put(FrameType::shutdown, 0, {}, FdList{}) == SendStatus::sent) {
        wake_if_waiting(p, p.page->asleep);
      }
    } catch (const std::exception&) {  // the grace timer below still stops it
    }
  }
  p.kill_at = std::min(p.kill_at, now + options_.terminate_grace);
}

void ProcessPoolCore::timers(Clock::time_point now) {
  if (backoff_.unstable()) {
    for (auto& [serial, p] : procs_) {
      if (p->ready_at != kNever) backoff_.up_for(now - p->ready_at);
    }
  }
  std::size_t idle_above_min =
      live_procs() > options_.min_workers ? live_procs() - options_.min_workers : 0;
  for (auto& [serial, pp] : procs_) {
    Proc& p = *pp;
    if (p.state == WState::busy && p.deadline <= now) {
      ++p.errors;
      fail_attempt(std::move(p.current),
                   std::make_exception_ptr(TimedOut(fmt::format(
                       "crew::ProcessPool: task '{}' timed out after {} ms; its worker {} (pid {}) "
                       "was stopped (SIGTERM, SIGKILL after {} ms) and is replaced",
                       p.current_task,
                       std::chrono::duration_cast<milliseconds>(p.deadline - p.busy_since).count(),
                       p.name, p.pid, options_.terminate_grace.count()))),
                   timed_out_, true, now);
      signal_worker(p, SIGTERM);
      p.reason = Reason::timeout;
      requeue_pending(p);
      release_slot(p);
      p.state = WState::stopping;
      p.deadline = kNever;
      p.next_rss = kNever;
      p.kill_at = now + options_.terminate_grace;
    }
    if (p.state == WState::busy && p.next_rss <= now) {
      p.rss = resident_memory_bytes(p.pid);
      if (p.rss > options_.memory_limit_bytes) {
        log_line(p, true,
                 fmt::format("crew: resident memory {} bytes is above memory_limit_bytes {}; "
                             "killing this worker",
                             p.rss, options_.memory_limit_bytes));
        stop_proc(p, Reason::memory, true, now);
      } else {
        p.next_rss = now + kRssPoll;
      }
    }
    if (p.leak && p.next_sample <= now) sample_memory(p, now);
    if (p.state == WState::stopping && p.kill_at <= now && !p.killed) {
      signal_worker(p, SIGKILL);
      p.killed = true;
      p.kill_at = kNever;
    }
    if (p.state == WState::idle && options_.idle_timeout.count() > 0 && idle_above_min > 0 &&
        now - p.idle_since >= options_.idle_timeout && queued_ == 0) {
      --idle_above_min;
      stop_proc(p, Reason::shutdown, false, now);
    }
  }
}

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

void ProcessPoolCore::spawn_as_needed(Clock::time_point now) {
  spawn_due_ = !backoff_.may_start(now);
  if (spawn_due_) return;
  if (closing_) owed_slots_.clear();
  for (;;) {
    std::size_t live = 0, available = 0;
    for (const auto& [serial, p] : procs_) {
      // A worker we stopped is replaced at once; one that closed its channel by itself counts
      // until its exit is seen, so that a start-up failure backs off before the next attempt.
      if (p->state == WState::stopping && p->reason != Reason::none) continue;
      if (p->state == WState::stopping) return;  // its exit decides whether to back off
      ++live;
      if (p->state == WState::idle || p->state == WState::starting) ++available;
    }
    if (breaker_open_) {
      // Half-open: one probe worker at a time, only when there is something to run.
      if (live > 0 || queued_ == 0) return;
    }
    const bool below_min = live < options_.min_workers && !closing_;
    const bool demand = queued_ > available && live < options_.max_workers;
    // A slot owed a replacement is filled first, while the pool has room for it.
    auto owed =
        std::ranges::find_if(owed_slots_, [&](std::size_t k) { return slots_[k].holder == 0; });
    std::optional<std::size_t> slot;
    if (owed != owed_slots_.end()) {
      if (live < options_.max_workers) slot = *owed;
      owed_slots_.erase(owed);
    }
    if (!below_min && !demand && !slot) return;
    try {
      spawn(now, slot);
    } catch (const std::exception& e) {
      // Nothing was started (spawn() leaves nothing open behind). Counted like a worker that
      // died before it was ready: the next try backs off, and enough failures in a row fail
      // what waits with this reason. Logged at once either way, so it is never silent.
      logs_.push_back(
          {options_.name, 0, true, fmt::format("crew: could not start a worker: {}", e.what())});
      startup_failed(e.what(), now);
      spawn_due_ = true;
      return;
    }
    if (backoff_.unstable() || breaker_open_) return;  // one at a time while unstable
  }
}

void ProcessPoolCore::spawn(Clock::time_point now, std::optional<std::size_t> wanted) {
  std::size_t slot = 0;
  if (wanted) {
    slot = *wanted;
  } else {
    while (slot < slots_.size() && slots_[slot].holder != 0) ++slot;
    if (slot == slots_.size()) slots_.emplace_back();
  }
  auto p = std::make_unique<Proc>();
  const std::uint64_t serial = next_serial_++;
  p->serial = serial;
  p->slot = slot;
  p->name = fmt::format("{}-{}", options_.name, slot);
  p->started = now;
  if (options_.leak_watch) {
    p->leak.emplace(*options_.leak_watch);
    p->next_sample = now;
  }

  // Every descriptor is owned until the end: a step that throws closes all of them, and a
  // started child is killed and reaped (Child).
  FdPair channel = make_socketpair(kWho);
  FdPair out = make_pipe(kWho);
  FdPair err = make_pipe(kWho);
  UniqueFd devnull = open_fd(kWho, "/dev/null", O_RDONLY);
  p->shared = SharedBuffer::create(kWorkerPageSize, {.across_processes = true});
  p->page = new (p->shared.data()) WorkerPage;
  for (int fd : {channel.first.get(), out.first.get(), err.first.get()}) set_nonblocking(kWho, fd);

  SpawnRequest request;
  request.who = kWho;
  request.executable = executable_;
  request.argv.push_back(executable_);
  request.argv.insert(request.argv.end(), options_.args.begin(), options_.args.end());
  request.env = base_env_;
  request.env.push_back(fmt::format("{}={}", kWorkerFdEnv, 3));
  request.env.push_back(fmt::format("{}={}", kWorkerNameEnv, p->name));
  request.fds = {{devnull.get(), 0},
                 {out.second.get(), 1},
                 {err.second.get(), 2},
                 {channel.second.get(), 3},
                 {event_, kWorkerDoorbellFd},
                 {page_fd_, kWorkerPageFd},
                 {p->shared.fd(), kWorkerOwnPageFd}};
  request.default_signals = {SIGPIPE, SIGINT, SIGTERM, SIGCHLD, SIGHUP};
  request.address_limit = kUseAddressLimit ? options_.memory_limit_bytes : 0;
  Child child = spawn_process(request);
  // The worker has its own copies now; ours would hide its exit from the pipes and the socket.
  devnull.reset();
  out.second.reset();
  err.second.reset();
  channel.second.reset();

  const std::uint64_t tag = p->serial << 2;
  std::vector<int> watched;
  try {
    for (const auto& [fd, kind] :
         {std::pair{out.first.get(), 1}, {err.first.get(), 2}, {child.pidfd(), 3}}) {
      epoll_watch(kWho, epoll_, fd, tag | static_cast<std::uint64_t>(kind));
      watched.push_back(fd);
    }
    Proc& q = *procs_.emplace(p->serial, std::move(p)).first->second;
    // Nothing below throws.
    q.pid = child.pid();
    q.pidfd = child.release().release();
    q.sock = channel.first.release();
    q.out = out.first.release();
    q.err = err.first.release();
    q.channel.emplace(q.sock, &q.page->requests, &q.page->replies, false);
  } catch (...) {
    for (int fd : watched) ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
    throw;
  }
  slots_[slot].holder = serial;
  if (slots_[slot].processes++ > 0 || spawned_ >= options_.min_workers) ++restarts_;
  ++spawned_;
}

}  // namespace detail

// ---- ProcessPool
// ---------------------------------------------------------------------------------

bool detail::process_drive(const std::shared_ptr<ProcessControl>& control,
                           const StateBase& state) noexcept {
  ProcessPoolCore* core = nullptr;
  {
    std::lock_guard lock(control->mutex);
    core = control->core;
    if (core == nullptr) return false;
    core->drivers_in.fetch_add(1, std::memory_order_relaxed);
  }
  core->drive(state);
  core->drivers_in.fetch_sub(1, std::memory_order_release);
  return true;
}

void detail::process_cancel(const std::shared_ptr<ProcessControl>& control,
                            std::uint64_t id) noexcept {
  std::lock_guard lock(control->mutex);
  if (control->core != nullptr) {
    try {
      control->core->post_cancel(id);
    } catch (...) {  // out of memory: the task runs to its end; its result is dropped
    }
  }
}

ProcessPool::ProcessPool(ProcessPoolOptions options)
    : core_(std::make_unique<detail::ProcessPoolCore>(std::move(options))) {}
ProcessPool::~ProcessPool() = default;

void ProcessPool::submit(detail::CallBase& call, std::stop_token stop,
                         const detail::ProcessArm& arm) {
  core_->submit(call, std::move(stop), arm);
}
void ProcessPool::close() {
  core_->close();
}
void ProcessPool::terminate() {
  core_->terminate();
}
void ProcessPool::wait_closed() {
  core_->wait_closed();
}
ProcessPoolStats ProcessPool::stats() const {
  return core_->stats();
}
const ProcessPoolOptions& ProcessPool::options() const noexcept {
  return core_->options();
}
bool ProcessPool::restart_worker(std::string_view name) {
  return core_->restart_worker(name);
}

const char* to_string(ProcessExitReason reason) noexcept {
  switch (reason) {
    case ProcessExitReason::signal:
      return "signal";
    case ProcessExitReason::exit:
      return "exit";
    case ProcessExitReason::memory:
      return "memory";
    case ProcessExitReason::timeout:
      return "timeout";
    case ProcessExitReason::stop:
      return "stop";
  }
  return "?";
}

}  // namespace crew::inline v0
