#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>

#include <crew/detail/continuation_runner.hpp>
#include <crew/detail/futex.hpp>
#include <crew/detail/ws_deque.hpp>
#include <crew/errors.hpp>
#include <crew/pool.hpp>

#include "clock.hpp"
#include "injection_queue.hpp"

namespace crew::inline v0 {

namespace {
constexpr std::size_t kMaxThreads = 1024;
// Most tasks a thread takes from the shared queue in one go (see pop_shared()).
constexpr std::size_t kMaxBatch = 16;
// An idle thread keeps looking for work this long before it parks: a task that arrives within it
// starts without a wake-up syscall. Spent only right after work ran out, so an idle pool costs
// nothing.
constexpr auto kSpinFor = std::chrono::microseconds(50);
// Longest pause between two looks for work while spinning (in cpu_relax() calls, ~1-2 us).
constexpr unsigned kMaxBackoff = 64;
// A thread of a pool's continuation runner (see PoolCore::defer_continuation) that found nothing
// to run for this long exits: timeouts come in bursts, and the runner is empty in between.
constexpr auto kRunnerIdle = std::chrono::milliseconds(1000);

std::size_t read_thread_env() {
  const char* v = std::getenv("CREW_THREADS");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < 1) {
    std::fprintf(stderr, "crew: ignoring CREW_THREADS=\"%s\": expected a whole number >= 1\n", v);
    return 0;
  }
  return std::min<std::size_t>(static_cast<std::size_t>(n), kMaxThreads);
}
}  // namespace

std::size_t default_thread_count() {
  static const std::size_t n = [] {
    if (const std::size_t env = read_thread_env(); env != 0) return env;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? std::size_t{1} : std::min<std::size_t>(hw, kMaxThreads);
  }();
  return n;
}

namespace detail {

double ns_per_tick() noexcept {
  static const double rate = [] {
#if defined(__x86_64__)
    const auto c0 = std::chrono::steady_clock::now();
    const std::uint64_t t0 = ticks();
    std::chrono::steady_clock::time_point c1;
    do {
      c1 = std::chrono::steady_clock::now();
    } while (c1 - c0 < std::chrono::microseconds(200));
    const std::uint64_t t1 = ticks();
    const auto ns = std::chrono::duration<double, std::nano>(c1 - c0).count();
    return t1 > t0 ? ns / static_cast<double>(t1 - t0) : 1.0;
#else
    return 1.0;
#endif
  }();
  return rate;
}

std::exception_ptr make_timed_out(std::chrono::nanoseconds timeout) {
  const double ms = std::chrono::duration<double, std::milli>(timeout).count();
  return std::make_exception_ptr(TimedOut(fmt::format(
      "crew: the task ran past its timeout of {} ms and its Future was settled; its stop_token "
      "was signalled but a thread cannot be killed, so the task keeps its thread until it "
      "returns. Raise RunOptions::timeout, make the task check its std::stop_token, or use a "
      "ProcessPool for work that must be killed",
      ms)));
}

struct alignas(64) WorkerSlot {
  WorkStealingDeque<Task> deque;
  std::atomic<std::uint32_t> park_word{0};
  std::atomic<std::uint32_t> running{0};  // nesting depth of tasks running on this thread
  // Counters and histograms below have this slot's thread as their only writer.
  std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> cancelled{0};
  std::atomic<std::uint64_t> run_ns{0};
  LatencyHistogram wait_hist;
  LatencyHistogram run_hist;
  std::size_t index = 0;
  std::uint64_t rng = 0;
  std::size_t unflushed = 0;   // tasks finished here, not yet subtracted from pending_
  std::uint64_t last_end = 0;  // end tick of the task just run; 0 after idling
  std::jthread thread;         // guarded by PoolCore::park_mutex_
  bool active = false;         // guarded by PoolCore::park_mutex_
};

// A pthread mutex of glibc's adaptive kind: it spins briefly before sleeping. The shared queue's
// critical sections are a few pointer moves, so a contender usually gets the lock within the spin
// instead of paying two futex syscalls and a context switch (measured: the largest cost of the
// plain std::mutex in the fire-and-forget benchmark).
class AdaptiveMutex {
 public:
  AdaptiveMutex() noexcept {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#if defined(PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP)
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&m_, &attr);
    pthread_mutexattr_destroy(&attr);
  }
  AdaptiveMutex(const AdaptiveMutex&) = delete;
  AdaptiveMutex& operator=(const AdaptiveMutex&) = delete;
  ~AdaptiveMutex() {
    pthread_mutex_destroy(&m_);
  }
  void lock() noexcept {
    pthread_mutex_lock(&m_);
  }
  void unlock() noexcept {
    pthread_mutex_unlock(&m_);
  }
  bool try_lock() noexcept {
    return pthread_mutex_trylock(&m_) == 0;
  }

 private:
  pthread_mutex_t m_;
};

void bump(std::atomic<std::uint64_t>& c, std::uint64_t by = 1) noexcept {
  c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

class PoolCore {
 public:
  explicit PoolCore(PoolOptions o);
  ~PoolCore() { shutdown(false); }
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  bool submit(Task* t, SubmitMode mode);
  void close() { shutdown(false); }
  void terminate() { shutdown(true); }
  void wait_idle();
  PoolStats stats() const;
  bool needs_drain() const noexcept {
    return opts_.max_queue != 0 && queued_.load(std::memory_order_relaxed) >= opts_.max_queue;
  }
  [[nodiscard]] bool on_own_thread() const noexcept { return tl_core == this; }
  void set_on_error(std::function<void(std::exception_ptr)> cb) {
    std::lock_guard lock(callback_mutex_);
    on_error_ = std::make_shared<std::function<void(std::exception_ptr)>>(std::move(cb));
  }
  void set_on_drain(std::function<void()> cb) {
    std::lock_guard lock(callback_mutex_);
    on_drain_ = std::make_shared<std::function<void()>>(std::move(cb));
  }
  std::size_t threads() const noexcept { return threads_.load(std::memory_order_relaxed); }
  const std::string& name() const noexcept { return opts_.name; }

 private:
  struct Helper final : detail::Helper {
    PoolCore* core = nullptr;
    WorkerSlot* slot = nullptr;
    bool help_one() noexcept override {
      Task* t = core->find_task(*slot);
      if (t == nullptr) {
        slot->last_end = 0;  // the caller now blocks; the next task's start must be read fresh
        return false;
      }
      core->execute(*slot, t);
      return true;
    }
  };

  static thread_local PoolCore* tl_core;
  static thread_local WorkerSlot* tl_slot;

  void check_not_own_thread(const char* what) const {
    if (on_own_thread()) {
      throw std::logic_error(fmt::format(
          "crew::ThreadPool '{}': {}() called from one of the pool's own threads would wait for "
          "itself; call it from outside the pool",
          opts_.name, what));
    }
  }

  void worker_main(WorkerSlot& slot);
  Task* find_task(WorkerSlot& slot);
  Task* pop_shared(WorkerSlot& slot);
  Task* steal(WorkerSlot& self);
  bool any_work_visible() const noexcept;
  void execute(WorkerSlot& slot, Task* t) noexcept;
  void finish(std::size_t n) noexcept;  // n accepted tasks are done
  void flush_finished(WorkerSlot& slot) noexcept {
    if (slot.unflushed != 0) finish(std::exchange(slot.unflushed, 0));
  }
  bool park(WorkerSlot& slot);  // false: this thread should exit
  void signal_work();
  [[noreturn]] void throw_closed() const;
  bool try_reserve() noexcept;
  bool reserve_slot(
      SubmitMode mode);  // false: full in try mode; throws QueueFull/PoolClosed           // work
                         // is queued: wake a sleeper, or grow when every thread is busy
  void wake_one() noexcept;
  void wake_all() noexcept;
  void maybe_grow();
  bool spawn_locked();  // park_mutex_ held
  // max_workers plus a replacement for each stuck task, up to max_stuck_replacements.
  std::size_t capacity() const noexcept {
    return max_workers_ +
           std::min(stuck_.load(std::memory_order_relaxed), opts_.max_stuck_replacements);
  }
  void mark_stuck(Task* t);
  bool retire_if_surplus(WorkerSlot& slot);  // true: this thread leaves (a stuck task returned)
  void shutdown(bool reject_queued);
  void report_error(const std::exception_ptr& e) noexcept;
  void arm_timer(Task* t);
  void disarm_timer(Task* t);
  void timer_main(std::stop_token st);

  const PoolOptions opts_;
  const std::size_t min_workers_;
  const std::size_t max_workers_;
  const double ns_per_tick_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<WorkerSlot>> slots_;
  std::atomic<std::size_t> slots_used_{0};  // slots [0, slots_used_) may hold a live worker

  // Shared queue. Producers push without a lock; pool threads take from it one at a time under
  // consume_mutex_. Lock order: lifecycle_mutex_ > consume_mutex_ > park_mutex_; space_mutex_ is
  // taken alone.
  InjectionQueue queue_;
  AdaptiveMutex consume_mutex_;
  // Tasks in queue_, counted when a producer reserves its place (before the push), so the bound
  // is exact; consumers may briefly see a reserved task that is not linked yet.
  std::atomic<std::size_t> queued_{0};
  std::atomic<bool> closed_{false};
  std::atomic<bool> terminating_{false};
  std::atomic<bool> drain_armed_{false};
  std::mutex space_mutex_;  // OnFull::wait producers sleep on space_cv_
  std::condition_variable space_cv_;
  std::atomic<std::size_t> space_waiters_{0};

  // Parking.
  std::mutex park_mutex_;
  std::vector<WorkerSlot*> sleepers_;
  std::atomic<std::size_t> num_sleepers_{0};
  std::atomic<std::size_t> spinning_{0};
  std::atomic<std::size_t> idle_{0};
  std::atomic<std::size_t> threads_{0};
  std::atomic<bool> stopping_{false};

  // Tasks accepted and not yet finished; wait_idle/close wait for zero.
  std::atomic<std::size_t> pending_{0};
  std::mutex idle_mutex_;
  std::condition_variable idle_cv_;
  std::atomic<std::size_t> idle_waiters_{0};

  std::atomic<std::uint64_t> rejected_{0};   // terminate() rejections, counted as cancelled
  std::atomic<std::uint64_t> timed_out_{0};  // Futures the timer settled; the timer's own counter
  std::atomic<std::size_t> stuck_{0};        // tasks now running past timeout + kStuckGrace
  std::atomic<std::uint64_t> stuck_total_{0};
  std::stop_source terminate_source_;

  std::mutex callback_mutex_;
  std::shared_ptr<std::function<void(std::exception_ptr)>> on_error_;
  std::shared_ptr<std::function<void()>> on_drain_;

  // Timeouts: started on first use.
  std::mutex timer_mutex_;
  std::condition_variable_any timer_cv_;
  std::multimap<std::chrono::steady_clock::time_point, Task*> deadlines_;
  // Expired tasks to look at again kStuckGrace later (each holds the timer's reference).
  std::multimap<std::chrono::steady_clock::time_point, Task*> overdue_;
  // When the timer thread next wakes by itself. Arming a later deadline (the usual case: tasks
  // share one timeout) leaves it asleep, and disarming never wakes it: it may wake for a deadline
  // already gone, and then finds nothing to expire. A notify per task cost a context switch each.
  std::chrono::steady_clock::time_point timer_wakes_at_ =
      std::chrono::steady_clock::time_point::max();
  std::jthread timer_;
  // Continuations of timed-out tasks run here, never on the timer thread; closed after it stops.
  ContinuationRunner continuations_{opts_.name};

  std::mutex lifecycle_mutex_;
  bool shut_down_ = false;
};

thread_local PoolCore* PoolCore::tl_core = nullptr;
thread_local WorkerSlot* PoolCore::tl_slot = nullptr;

namespace {
// Checks the options and fills in the defaults, so min_workers is set and max_workers nonzero.
PoolOptions validated(PoolOptions o) {
  const auto fail = [&](const std::string& msg) {
    throw std::invalid_argument(fmt::format("ThreadPool '{}': {}", o.name, msg));
  };
  if (o.name.empty()) fail("name must not be empty");
  const std::size_t max = o.max_workers != 0
                              ? o.max_workers
                              : std::max(default_thread_count(), o.min_workers.value_or(0));
  if (max > kMaxThreads) {
    fail(fmt::format("{} ({}) must be <= {}", o.max_workers != 0 ? "max_workers" : "min_workers",
                     max, kMaxThreads));
  }
  if (o.min_workers && *o.min_workers > max) {
    fail(fmt::format("min_workers ({}) must be <= max_workers ({})", *o.min_workers, max));
  }
  if (o.idle_timeout.count() < 0) {
    fail(fmt::format("idle_timeout ({} ms) must be >= 0", o.idle_timeout.count()));
  }
  if (o.max_stuck_replacements > kMaxThreads) {
    fail(fmt::format("max_stuck_replacements ({}) must be <= {}", o.max_stuck_replacements,
                     kMaxThreads));
  }
  o.max_workers = max;
  o.min_workers = o.min_workers.value_or(max);
  return o;
}
}  // namespace

PoolCore::PoolCore(PoolOptions o)
    : opts_(validated(std::move(o))),
      min_workers_(*opts_.min_workers),
      max_workers_(opts_.max_workers),
      ns_per_tick_(ns_per_tick()) {
  const std::size_t slots = max_workers_ + opts_.max_stuck_replacements;
  slots_.reserve(slots);
  for (std::size_t i = 0; i < slots; ++i) {
    auto s = std::make_unique<WorkerSlot>();
    s->index = i;
    s->rng = 0x9e3779b97f4a7c15ULL * (i + 1);
    slots_.push_back(std::move(s));
  }
  std::lock_guard lock(park_mutex_);
  for (std::size_t i = 0; i < min_workers_; ++i) spawn_locked();
}

bool PoolCore::spawn_locked() {
  if (threads_.load(std::memory_order_relaxed) >= capacity() || stopping_.load()) return false;
  for (auto& s : slots_) {
    if (s->active) continue;
    if (s->thread.joinable()) s->thread.join();  // a thread that shrank away; already exiting
    s->active = true;
    threads_.fetch_add(1, std::memory_order_relaxed);
    // idle_ counts this thread until it finds work, so a burst does not spawn one per task.
    idle_.fetch_add(1, std::memory_order_seq_cst);
    const std::size_t used = slots_used_.load(std::memory_order_relaxed);
    if (s->index + 1 > used) slots_used_.store(s->index + 1, std::memory_order_release);
    WorkerSlot* slot = s.get();
    try {
      slot->thread = std::jthread([this, slot] { worker_main(*slot); });
    } catch (const std::system_error& e) {
      // Out of threads: keep running with the ones we have; queued work is not lost.
      s->active = false;
      threads_.fetch_sub(1, std::memory_order_relaxed);
      idle_.fetch_sub(1, std::memory_order_seq_cst);
      std::fprintf(stderr, "crew: pool '%s' could not start a thread (%s); continuing with %zu\n",
                   opts_.name.c_str(), e.what(), threads_.load(std::memory_order_relaxed));
      return false;
    }
    return true;
  }
  return false;
}

void PoolCore::maybe_grow() {
  std::lock_guard lock(park_mutex_);
  if (idle_.load(std::memory_order_seq_cst) == 0) spawn_locked();
}

bool PoolCore::submit(Task* t, SubmitMode mode) {
  if (t->timeout.count() < 0) {
    throw std::invalid_argument(
        fmt::format("ThreadPool '{}': RunOptions::timeout ({} ns) must be >= 0", opts_.name,
                    t->timeout.count()));
  }
  t->enqueued_ticks = ticks();
  if (on_own_thread()) {
    // Nested: the submitting thread's own deque, accepted even while closing so that fork-join
    // code inside a draining pool completes; refused only once terminate() has begun.
    if (terminating_.load(std::memory_order_acquire)) {
      throw PoolClosed(
          fmt::format("crew: pool '{}' is terminating and accepts no new tasks", opts_.name));
    }
    pending_.fetch_add(1, std::memory_order_relaxed);
    tl_slot->deque.push(t);  // seq_cst store: ordered before the sleeper check below
    if (num_sleepers_.load(std::memory_order_seq_cst) > 0 &&
        spinning_.load(std::memory_order_seq_cst) == 0) {
      wake_one();
    }
    return true;
  }
  // Counted pending before checking closed_: close() sets closed_ and then waits for pending_ to
  // reach zero, so either we see it closed, or it waits for this task (both seq_cst: Dekker).
  pending_.fetch_add(1, std::memory_order_seq_cst);
  try {
    if (closed_.load(std::memory_order_seq_cst)) throw_closed();
    if (!reserve_slot(mode)) {
      finish(1);
      return false;
    }
  } catch (...) {
    finish(1);
    throw;
  }
  queue_.push(t);
  // queued_ was raised with a seq_cst RMW before this load; a parking thread raises num_sleepers_
  // and then reads queued_. One of us sees the other (see park()).
  signal_work();
  return true;
}

void PoolCore::throw_closed() const {
  throw PoolClosed(fmt::format(
      "crew: pool '{}' is closed and accepts no new tasks; submit before close() or terminate(), "
      "or create a new pool",
      opts_.name));
}

bool PoolCore::try_reserve() noexcept {
  std::size_t cur = queued_.load(std::memory_order_seq_cst);
  while (cur < opts_.max_queue) {
    if (queued_.compare_exchange_weak(cur, cur + 1, std::memory_order_seq_cst)) {
      if (cur + 1 >= opts_.max_queue) drain_armed_.store(true, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

bool PoolCore::reserve_slot(SubmitMode mode) {
  if (opts_.max_queue == 0) {
    queued_.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }
  if (try_reserve()) return true;
  drain_armed_.store(true, std::memory_order_relaxed);
  if (mode == SubmitMode::try_only) return false;
  if (opts_.on_full == OnFull::reject) {
    throw QueueFull(fmt::format(
        "crew: pool '{}' queue is full (max_queue = {}); retry later, use try_run(), or set "
        "on_full = OnFull::wait to make producers wait",
        opts_.name, opts_.max_queue));
  }
  std::unique_lock lock(space_mutex_);
  // Counted before re-checking: a consumer lowers queued_ and then reads space_waiters_ (Dekker),
  // and notifies under space_mutex_, which we hold until the wait releases it.
  space_waiters_.fetch_add(1, std::memory_order_seq_cst);
  bool ok = true;
  while (!try_reserve()) {
    if (closed_.load(std::memory_order_seq_cst)) {
      ok = false;
      break;
    }
    space_cv_.wait(lock);
  }
  space_waiters_.fetch_sub(1, std::memory_order_seq_cst);
  if (!ok) throw_closed();
  return true;
}

void PoolCore::signal_work() {
  // Wake a sleeper unless a thread is spinning (it will find the task). Even when another thread
  // is busy: its task may run for a long time, and the queued one must not wait for it.
  if (num_sleepers_.load(std::memory_order_seq_cst) > 0 &&
      spinning_.load(std::memory_order_seq_cst) == 0) {
    wake_one();
  } else if (idle_.load(std::memory_order_relaxed) == 0 &&
             threads_.load(std::memory_order_relaxed) < capacity()) {
    maybe_grow();
  }
}

Task* PoolCore::pop_shared(WorkerSlot& slot) {
  const std::size_t visible = queued_.load(std::memory_order_relaxed);
  if (visible == 0) return nullptr;
  // A deep queue is taken in batches: one lock per batch instead of per task. The batch goes to
  // our own deque, where idle threads can steal from it.
  const std::size_t threads = std::max<std::size_t>(1, threads_.load(std::memory_order_relaxed));
  const std::size_t want =
      visible > 4 * threads ? std::min(kMaxBatch, visible / (2 * threads)) : std::size_t{1};
  std::array<Task*, kMaxBatch> batch{};
  std::size_t got = 0;
  {
    std::lock_guard lock(consume_mutex_);
    got = queue_.pop_batch(batch.data(), want);
  }
  if (got == 0) return nullptr;
  const std::size_t left = queued_.fetch_sub(got, std::memory_order_seq_cst) - got;
  if (space_waiters_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard lock(space_mutex_);
    space_cv_.notify_all();
  }
  if (got > 1) {
    // Newest first, so that popping our deque (LIFO) runs them in submission order.
    for (std::size_t i = got - 1; i > 0; --i) slot.deque.push(batch[i]);
    if (num_sleepers_.load(std::memory_order_seq_cst) > 0 &&
        spinning_.load(std::memory_order_seq_cst) == 0) {
      wake_one();
    }
  }
  if (left == 0 && drain_armed_.load(std::memory_order_relaxed) &&
      drain_armed_.exchange(false, std::memory_order_acq_rel)) {
    std::shared_ptr<std::function<void()>> drained;
    {
      std::lock_guard cb_lock(callback_mutex_);
      drained = on_drain_;
    }
    if (drained && *drained) {
      try {
        (*drained)();
      } catch (...) {
        report_error(std::current_exception());
      }
    }
  }
  return batch[0];
}

Task* PoolCore::steal(WorkerSlot& self) {
  const std::size_t n = slots_used_.load(std::memory_order_acquire);
  if (n <= 1) return nullptr;
  self.rng ^= self.rng << 13;
  self.rng ^= self.rng >> 7;
  self.rng ^= self.rng << 17;
  const std::size_t start = self.rng % n;
  for (std::size_t k = 0; k < n; ++k) {
    WorkerSlot& victim = *slots_[(start + k) % n];
    if (&victim == &self) continue;
    if (Task* t = victim.deque.steal()) return t;
  }
  return nullptr;
}

Task* PoolCore::find_task(WorkerSlot& slot) {
  if (Task* t = slot.deque.pop()) return t;
  if (Task* t = pop_shared(slot)) return t;
  return steal(slot);
}

bool PoolCore::any_work_visible() const noexcept {
  if (queued_.load(std::memory_order_relaxed) != 0) return true;
  const std::size_t n = slots_used_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    if (!slots_[i]->deque.empty_approx()) return true;
  }
  return false;
}

void PoolCore::execute(WorkerSlot& slot, Task* t) noexcept {
  // Back to back, the previous task's end is this one's start: one clock read per task.
  const std::uint64_t start = slot.last_end != 0 ? slot.last_end : ticks();
  slot.wait_hist.record_ns(start > t->enqueued_ticks
                               ? static_cast<std::uint64_t>(
                                     static_cast<double>(start - t->enqueued_ticks) * ns_per_tick_)
                               : 0);
  Outcome outcome = Outcome::cancelled;
  std::exception_ptr unobserved;
  slot.last_end = 0;  // tasks run while this one waits (helping) read their own start
  if (!t->settled()) {
    const std::uint32_t depth = slot.running.load(std::memory_order_relaxed);
    slot.running.store(depth + 1, std::memory_order_relaxed);
    const bool timed = t->timeout.count() > 0;
    if (timed) arm_timer(t);
    if (t->stop_aware()) {
      // terminate() reaches running tasks through their own stop tokens.
      std::stop_callback on_terminate(terminate_source_.get_token(), [t] { t->request_stop(); });
      outcome = t->run(&unobserved);
    } else {
      outcome = t->run(&unobserved);
    }
    if (timed) {
      disarm_timer(t);
      if (t->phase.exchange(Task::kReturned, std::memory_order_acq_rel) == Task::kStuck) {
        stuck_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    slot.running.store(depth, std::memory_order_relaxed);
  }
  const std::uint64_t end = ticks();
  slot.last_end = end;
  const auto ran =
      static_cast<std::uint64_t>(static_cast<double>(end > start ? end - start : 0) * ns_per_tick_);
  slot.run_hist.record_ns(ran);
  bump(slot.run_ns, ran);
  switch (outcome) {
    case Outcome::completed:
      bump(slot.completed);
      break;
    case Outcome::failed:
      bump(slot.failed);
      break;
    case Outcome::cancelled:
      bump(slot.cancelled);
      break;
    case Outcome::timed_out:
      break;  // counted by the timer thread when it settled the Future
  }
  if (unobserved) report_error(unobserved);
  t->drop();
  // Counted locally and subtracted from pending_ when this thread runs out of work: one shared
  // read-modify-write per busy stretch instead of one per task. Nothing waits on pending_ reaching
  // zero while this thread still has work, so the delay is invisible.
  ++slot.unflushed;
}

void PoolCore::finish(std::size_t n) noexcept {
  if (pending_.fetch_sub(n, std::memory_order_seq_cst) == n &&
      idle_waiters_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard lock(idle_mutex_);
    idle_cv_.notify_all();
  }
}

void PoolCore::report_error(const std::exception_ptr& e) noexcept {
  std::shared_ptr<std::function<void(std::exception_ptr)>> handler;
  {
    std::lock_guard lock(callback_mutex_);
    handler = on_error_;
  }
  if (handler && *handler) {
    try {
      (*handler)(e);
      return;
    } catch (...) {
      std::fprintf(stderr, "crew: pool '%s': the on_error handler threw; it must not\n",
                   opts_.name.c_str());
    }
  }
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    std::fprintf(
        stderr,
        "crew: pool '%s': a posted task threw: %s (set ThreadPool::on_error to handle it)\n",
        opts_.name.c_str(), ex.what());
  } catch (...) {
    std::fprintf(stderr,
                 "crew: pool '%s': a posted task threw a non-std exception (set "
                 "ThreadPool::on_error to handle it)\n",
                 opts_.name.c_str());
  }
}

void PoolCore::worker_main(WorkerSlot& slot) {
  std::string thread_name = fmt::format("{}-w{}", opts_.name, slot.index);
  if (thread_name.size() > 15) thread_name.erase(0, thread_name.size() - 15);  // keep the index
  pthread_setname_np(pthread_self(), thread_name.c_str());
  Helper helper;
  helper.core = this;
  helper.slot = &slot;
  detail::tl_helper = &helper;
  tl_core = this;
  tl_slot = &slot;
  bool idle = true;  // spawn_locked() counted us idle
  while (true) {
    if (Task* t = find_task(slot)) {
      if (idle) {
        idle_.fetch_sub(1, std::memory_order_seq_cst);
        idle = false;
      }
      // More work waiting: pass the baton to a sleeper, or grow, before running ours.
      if (queued_.load(std::memory_order_relaxed) != 0) signal_work();
      execute(slot, t);
      // Above max_workers only while tasks are stuck: once one returns, a thread leaves.
      if (threads_.load(std::memory_order_relaxed) > max_workers_ && retire_if_surplus(slot)) {
        break;
      }
      continue;
    }
    slot.last_end = 0;
    flush_finished(slot);
    if (!idle) {
      idle_.fetch_add(1, std::memory_order_seq_cst);
      idle = true;
    }
    if (stopping_.load(std::memory_order_acquire)) break;
    // Spin a little before parking (see kSpinFor). Checks back off exponentially: each one reads
    // cache lines that producers write on every submission, and reading them in a tight loop
    // slows the producer down. Yield once the backoff is at its longest, so a producer sharing
    // our core runs.
    spinning_.fetch_add(1, std::memory_order_seq_cst);
    const auto until = std::chrono::steady_clock::now() + kSpinFor;
    bool found = false;
    for (unsigned backoff = 1;; backoff = std::min(backoff * 2, kMaxBackoff)) {
      if (any_work_visible() || stopping_.load(std::memory_order_relaxed)) {
        found = true;
        break;
      }
      for (unsigned i = 0; i < backoff; ++i) cpu_relax();
      if (backoff == kMaxBackoff) {
        if (std::chrono::steady_clock::now() > until) break;
        sched_yield();
      }
    }
    spinning_.fetch_sub(1, std::memory_order_seq_cst);
    if (found) continue;
    if (!park(slot)) break;
  }
  if (idle) idle_.fetch_sub(1, std::memory_order_seq_cst);
  detail::tl_helper = nullptr;
  tl_core = nullptr;
  tl_slot = nullptr;
}

bool PoolCore::park(WorkerSlot& slot) {
  {
    std::lock_guard lock(park_mutex_);
    sleepers_.push_back(&slot);
    num_sleepers_.fetch_add(1, std::memory_order_seq_cst);
  }
  // Re-check after counting ourselves a sleeper: a submitter raises queued_ (or, for a deque,
  // stores bottom) with seq_cst and then reads num_sleepers_, so one of us sees the other (Dekker).
  bool work =
      stopping_.load(std::memory_order_seq_cst) || queued_.load(std::memory_order_seq_cst) != 0;
  if (!work) {
    const std::size_t n = slots_used_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n && !work; ++i) work = !slots_[i]->deque.empty_approx();
  }
  const bool may_shrink = threads_.load(std::memory_order_relaxed) > min_workers_;
  bool timed_out = false;
  if (!work) {
    trim_task_memory();  // a burst is over: give back what it left in the recycling depot
    const auto limit =
        may_shrink ? std::chrono::nanoseconds(opts_.idle_timeout) : std::chrono::nanoseconds(-1);
    while (slot.park_word.load(std::memory_order_acquire) == 0) {
      if (!futex_wait(slot.park_word, 0, limit)) {
        timed_out = true;
        break;
      }
    }
  }
  std::lock_guard lock(park_mutex_);
  auto it = std::find(sleepers_.begin(), sleepers_.end(), &slot);
  if (it != sleepers_.end()) {
    // Nobody woke us (we found work, timed out, or are stopping): withdraw.
    sleepers_.erase(it);
    num_sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }
  slot.park_word.store(0, std::memory_order_relaxed);
  if (timed_out && !stopping_.load() && threads_.load(std::memory_order_relaxed) > min_workers_ &&
      !any_work_visible()) {
    slot.active = false;
    threads_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void PoolCore::mark_stuck(Task* t) {
  // Counted before the claim, so that the task's return, which undoes the count only after it,
  // never takes stuck_ below zero.
  stuck_.fetch_add(1, std::memory_order_relaxed);
  auto running = static_cast<std::uint8_t>(Task::kRunning);
  if (!t->phase.compare_exchange_strong(running, Task::kStuck, std::memory_order_acq_rel)) {
    stuck_.fetch_sub(1, std::memory_order_relaxed);  // it returned within the grace
    return;
  }
  bump(stuck_total_);
  // Work queued behind the stuck task gets a thread now; later work grows the pool as usual.
  if (opts_.max_stuck_replacements != 0) maybe_grow();
}

bool PoolCore::retire_if_surplus(WorkerSlot& slot) {
  if (!slot.deque.empty_approx()) return false;  // nested tasks of ours still to run
  {
    std::lock_guard lock(park_mutex_);
    if (stopping_.load() || threads_.load(std::memory_order_relaxed) <= capacity()) return false;
    slot.active = false;
    threads_.fetch_sub(1, std::memory_order_relaxed);
  }
  slot.last_end = 0;
  flush_finished(slot);
  return true;
}

void PoolCore::wake_one() noexcept {
  WorkerSlot* s = nullptr;
  {
    std::lock_guard lock(park_mutex_);
    if (sleepers_.empty()) return;
    s = sleepers_.back();
    sleepers_.pop_back();
    num_sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    s->park_word.store(1, std::memory_order_release);
    futex_wake(s->park_word, 1);
  }
}

void PoolCore::wake_all() noexcept {
  std::lock_guard lock(park_mutex_);
  for (WorkerSlot* s : sleepers_) {
    s->park_word.store(1, std::memory_order_release);
    futex_wake(s->park_word, 1);
  }
  sleepers_.clear();
  num_sleepers_.store(0, std::memory_order_seq_cst);
}

void PoolCore::wait_idle() {
  check_not_own_thread("wait_idle");
  std::unique_lock lock(idle_mutex_);
  idle_waiters_.fetch_add(1, std::memory_order_seq_cst);
  // finish() decrements pending_ and then reads idle_waiters_; with both seq_cst, either it
  // sees us (and notifies under idle_mutex_) or we see its zero here.
  idle_cv_.wait(lock, [this] { return pending_.load(std::memory_order_seq_cst) == 0; });
  idle_waiters_.fetch_sub(1, std::memory_order_seq_cst);
}

void PoolCore::shutdown(bool reject_queued) {
  check_not_own_thread(reject_queued ? "terminate" : "close");
  std::lock_guard life(lifecycle_mutex_);
  if (shut_down_) return;
  std::vector<Task*> dropped;
  closed_.store(true, std::memory_order_seq_cst);
  {
    std::lock_guard lock(space_mutex_);
    space_cv_.notify_all();  // producers waiting for space give up with PoolClosed
  }
  if (reject_queued) {
    terminating_.store(true, std::memory_order_seq_cst);
    std::array<Task*, kMaxBatch> batch{};
    std::lock_guard lock(consume_mutex_);
    while (std::size_t n = queue_.pop_batch(batch.data(), kMaxBatch)) {
      dropped.insert(dropped.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
      queued_.fetch_sub(n, std::memory_order_seq_cst);
    }
  }
  if (reject_queued) {
    const std::size_t n = slots_used_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      while (Task* t = slots_[i]->deque.steal()) dropped.push_back(t);
    }
    const std::string why = fmt::format(
        "crew: pool '{}' was terminated before this task started; it never ran", opts_.name);
    for (Task* t : dropped) {
      t->reject(std::make_exception_ptr(PoolClosed(why)));  // one exception object per Future
      t->drop();
      rejected_.fetch_add(1, std::memory_order_relaxed);
      finish(1);
    }
    terminate_source_.request_stop();
  }
  wait_idle();
  {
    std::lock_guard lock(park_mutex_);
    stopping_.store(true, std::memory_order_seq_cst);
  }
  wake_all();
  for (auto& s : slots_) {
    if (s->thread.joinable()) s->thread.join();
    s->active = false;
  }
  threads_.store(0, std::memory_order_relaxed);
  if (timer_.joinable()) {
    timer_.request_stop();
    timer_.join();
  }
  for (const auto& [when, t] : overdue_) t->drop();  // every task has returned: none is stuck
  overdue_.clear();
  // Runs what timeouts deferred. From one of the runner's own threads (a continuation closing
  // this pool) it returns at once, and the runner drains when this pool is destroyed.
  continuations_.close();
  shut_down_ = true;
}

void PoolCore::arm_timer(Task* t) {
  std::lock_guard lock(timer_mutex_);
  if (!timer_.joinable()) timer_ = std::jthread([this](std::stop_token st) { timer_main(st); });
  const auto deadline = std::chrono::steady_clock::now() + t->timeout;
  deadlines_.emplace(deadline, t);
  if (deadline < timer_wakes_at_) {
    timer_wakes_at_ = deadline;
    timer_cv_.notify_one();
  }
}

void PoolCore::disarm_timer(Task* t) {
  std::lock_guard lock(timer_mutex_);
  for (auto it = deadlines_.begin(); it != deadlines_.end(); ++it) {
    if (it->second == t) {
      deadlines_.erase(it);
      return;
    }
  }
}

void PoolCore::timer_main(std::stop_token st) {
  pthread_setname_np(pthread_self(), "crew-timer");
  using Time = std::chrono::steady_clock::time_point;
  std::vector<Task*> due;
  std::vector<Task*> overdue;
  std::unique_lock lock(timer_mutex_);
  while (!st.stop_requested()) {
    // Taken out under the lock with a reference each (disarm_timer() may run and the task finish
    // meanwhile), expired after it is released: settling wakes waiters and may free memory, and
    // arm_timer() on a pool thread must never wait for that.
    const Time now = std::chrono::steady_clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      Task* t = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      t->retain();
      due.push_back(t);
    }
    while (!overdue_.empty() && overdue_.begin()->first <= now) {
      overdue.push_back(overdue_.begin()->second);
      overdue_.erase(overdue_.begin());
    }
    if (!due.empty() || !overdue.empty()) {
      lock.unlock();
      for (Task* t : due) t->expire(&continuations_, timed_out_);
      for (Task* t : overdue) {
        mark_stuck(t);
        t->drop();
      }
      overdue.clear();
      lock.lock();
      // Looked at again once the grace is over; the reference taken above goes with the entry.
      const Time look_again = std::chrono::steady_clock::now() + kStuckGrace;
      for (Task* t : due) overdue_.emplace(look_again, t);
      due.clear();
      continue;  // deadlines may have passed meanwhile
    }
    Time next = deadlines_.empty() ? Time::max() : deadlines_.begin()->first;
    if (!overdue_.empty()) next = std::min(next, overdue_.begin()->first);
    timer_wakes_at_ = next;
    // Woken early only by arm_timer() with an earlier deadline.
    if (next == Time::max()) {
      timer_cv_.wait(lock, st, [this] { return timer_wakes_at_ != Time::max(); });
    } else {
      timer_cv_.wait_until(lock, st, next, [this, next] { return timer_wakes_at_ < next; });
    }
  }
}

ContinuationRunner::ContinuationRunner(std::string name) : name_(std::move(name) + "-then") {}

ContinuationRunner::~ContinuationRunner() {
  {
    std::lock_guard lock(mutex_);
    if (core_ && core_->on_own_thread()) {
      // A continuation is destroying the pool that owns this runner: its own thread cannot join
      // itself, so another thread closes the runner once that continuation has returned.
      try {
        std::thread([core = core_.release()] {
          core->close();
          delete core;
        }).detach();
        return;
      } catch (const std::system_error& e) {
        std::fprintf(stderr, "crew: pool '%s': cannot start a thread to close it (%s)\n",
                     name_.c_str(), e.what());
        std::terminate();
      }
    }
  }
  close();
}

void ContinuationRunner::close() noexcept {
  std::lock_guard lock(mutex_);
  if (core_ && core_->on_own_thread()) return;
  closed_ = true;
  if (core_) core_->close();
}

void ContinuationRunner::defer(StateBase& state) noexcept {
  state.add_ref();
  auto resume = [&state] {
    state.run_continuation();
    state.release();
  };
  PostTask<decltype(resume)>* task = nullptr;
  try {
    std::unique_lock lock(mutex_);
    if (!closed_) {
      if (!core_) {
        core_ = std::make_unique<PoolCore>(PoolOptions{.min_workers = 0,
                                                       .max_workers = kMaxThreads,
                                                       .idle_timeout = kRunnerIdle,
                                                       .name = name_});
      }
      PoolCore* core = core_.get();
      lock.unlock();  // close() waits for this continuation, and it may call defer() again
      task = new PostTask<decltype(resume)>(resume);
      core->submit(task, SubmitMode::block_or_throw);
      return;
    }
  } catch (const std::exception& e) {
    if (task != nullptr) task->drop();
    std::fprintf(stderr,
                 "crew: pool '%s': could not hand a continuation to a thread of its own (%s); "
                 "running it on the settling thread\n",
                 name_.c_str(), e.what());
  }
  resume();  // closed: its owner is shutting down, and nothing of it may block any more
}

PoolStats PoolCore::stats() const {
  PoolStats s;
  LatencyHistogram wait_total;
  LatencyHistogram run_total;
  std::uint64_t run_ns = 0;
  const std::size_t n = slots_used_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    const WorkerSlot& w = *slots_[i];
    if (w.running.load(std::memory_order_relaxed) != 0) ++s.busy;
    s.queued += w.deque.size_approx();
    s.completed += w.completed.load(std::memory_order_relaxed);
    s.failed += w.failed.load(std::memory_order_relaxed);
    s.cancelled += w.cancelled.load(std::memory_order_relaxed);
    run_ns += w.run_ns.load(std::memory_order_relaxed);
    w.wait_hist.merge_into(wait_total);
    w.run_hist.merge_into(run_total);
  }
  s.workers = threads_.load(std::memory_order_relaxed);
  s.busy = std::min(s.busy, s.workers);
  s.idle = s.workers - s.busy;
  s.queued += queued_.load(std::memory_order_relaxed);
  s.cancelled += rejected_.load(std::memory_order_relaxed);
  s.timed_out = timed_out_.load(std::memory_order_relaxed);
  s.stuck = stuck_.load(std::memory_order_relaxed);
  s.stuck_total = stuck_total_.load(std::memory_order_relaxed);
  const double elapsed =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - started_).count();
  if (elapsed > 0) {
    s.utilization =
        std::min(1.0, static_cast<double>(run_ns) / (elapsed * static_cast<double>(max_workers_)));
  }
  s.wait_time = wait_total.summary();
  s.run_time = run_total.summary();
  return s;
}

}  // namespace detail

ThreadPool::ThreadPool(PoolOptions options)
    : core_(std::make_unique<detail::PoolCore>(std::move(options))) {}

ThreadPool::~ThreadPool() {
  try {
    core_->close();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew: ThreadPool destructor: %s\n", e.what());
    std::terminate();
  }
}

bool ThreadPool::submit_or_drop(detail::Task* task, detail::SubmitMode mode) {
  try {
    if (core_->submit(task, mode)) return true;
  } catch (...) {
    task->drop();
    throw;
  }
  task->drop();
  return false;
}

void ThreadPool::on_error(std::function<void(std::exception_ptr)> handler) {
  core_->set_on_error(std::move(handler));
}
bool ThreadPool::needs_drain() const noexcept {
  return core_->needs_drain();
}
void ThreadPool::on_drain(std::function<void()> callback) {
  core_->set_on_drain(std::move(callback));
}
void ThreadPool::wait_idle() {
  core_->wait_idle();
}
void ThreadPool::close() {
  core_->close();
}
void ThreadPool::terminate() {
  core_->terminate();
}
PoolStats ThreadPool::stats() const {
  return core_->stats();
}
std::size_t ThreadPool::thread_count() const noexcept {
  return core_->threads();
}
const std::string& ThreadPool::name() const noexcept {
  return core_->name();
}

}  // namespace crew::inline v0
