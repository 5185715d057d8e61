// The ProcessPool: its construction, the calls any thread makes (submit, cancel, close, stats,
// restart_worker) and the public API over them. pool_core.hpp maps the rest of the supervisor.
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <set>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <crew/pool.hpp>

#include "pool_core.hpp"
#include "spawn.hpp"

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

namespace {

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

}  // namespace

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
        ".executable (another program that calls crew::worker_main)");
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
                    "calls crew::worker_main",
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
    if (key == kWorkerFdEnv || key == kWorkerNameEnv || key == kWorkerHeapDirEnv ||
        options_.env.contains(std::string(key))) {
      continue;
    }
    base_env_.emplace_back(kv);
  }
  for (const auto& [key, value] : options_.env) base_env_.push_back(key + "=" + value);
  if (options_.heap_profiling) enable_heap_profiling(options_, base_env_);

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

HeapTarget ProcessPoolCore::heap_target(std::string_view worker) const {
  std::lock_guard lock(mutex_);
  // A slot's name passes to the replacement while the old process stops: the running one counts.
  const Proc* found = nullptr;
  std::set<std::string> names;
  for (const auto& [serial, p] : procs_) {
    names.insert(p->name);
    if (p->name == worker && (found == nullptr || found->state == WState::stopping)) {
      found = p.get();
    }
  }
  if (found == nullptr) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw std::invalid_argument(
        fmt::format("crew::ProcessPool::heap_profile: pool '{}' has no worker named '{}'; its "
                    "workers: {}",
                    options_.name, worker, list.empty() ? "(none running)" : list));
  }
  // Until it is ready its SIGUSR2 handler may not be installed: the signal would kill it.
  if (found->state == WState::starting || found->state == WState::stopping) {
    throw Error(
        fmt::format("crew::ProcessPool::heap_profile: worker {} is {}; ask again once "
                    "it (or its replacement) is idle or busy",
                    worker, state_name(found->state)));
  }
  // Our own copy: the supervisor closes the worker's when it exits.
  UniqueFd pidfd(::fcntl(found->pidfd, F_DUPFD_CLOEXEC, 0));
  if (!pidfd) {
    throw std::system_error(errno, std::generic_category(),
                            "crew::ProcessPool::heap_profile: duplicating the worker's pidfd");
  }
  return HeapTarget{found->name, found->pid, std::move(pidfd)};
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

}  // namespace detail

// ---- ProcessPool -------------------------------------------------------------------------------

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
std::string ProcessPool::heap_profile(std::string_view worker, std::chrono::milliseconds timeout) {
  if (!core_->options().heap_profiling) {
    throw Error(fmt::format(
        "crew::ProcessPool::heap_profile: pool '{}' was started without heap profiling; set "
        "ProcessPoolOptions::heap_profiling (crew serve: --heap-profiling)",
        core_->options().name));
  }
  if (timeout.count() <= 0) {
    throw std::invalid_argument(fmt::format(
        "crew::ProcessPool::heap_profile: timeout ({} ms) must be > 0", timeout.count()));
  }
  return detail::take_heap_profile(core_->options(), core_->heap_target(worker), timeout);
}

}  // namespace crew::inline v0
