// The shared state behind crew::Future: one allocation, reference counted, settled exactly once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <optional>
#include <utility>

namespace crew::inline v0::detail {

class StateBase;

/// Run once, on the thread that settles a state (or on the installing thread if it was already
/// settled and the installer chose to run it).
class Continuation {
 public:
  virtual void on_ready(StateBase& state) noexcept = 0;
  /// True when on_ready only hands the result to another thread and never blocks (an
  /// asio::post, say): such a continuation runs on the settling thread even where others are
  /// deferred (see ContinuationDeferral).
  [[nodiscard]] virtual bool hands_off() const noexcept { return false; }

 protected:
  Continuation() = default;
  Continuation(const Continuation&) = default;
  Continuation& operator=(const Continuation&) = default;
  ~Continuation() = default;
};

/// Runs a settled state's continuation on another thread instead of the settling one (a thread
/// pool's timer thread and a process pool's supervisor hand them to a ContinuationRunner, so no
/// user code runs on either). `defer` must call state.run_continuation() exactly once, now or
/// later, and keep `state` alive until then (add_ref/release).
class ContinuationDeferral {
 public:
  virtual void defer(StateBase& state) noexcept = 0;

 protected:
  ~ContinuationDeferral() = default;
};

/// Lets Future::wait() on a pool thread run other queued work instead of blocking (fork-join).
class Helper {
 public:
  /// Runs one queued task if there is one; returns false when there was nothing to run.
  virtual bool help_one() noexcept = 0;

 protected:
  ~Helper() = default;
};

/// Set by a pool's worker threads for their lifetime; null on every other thread.
inline thread_local Helper* tl_helper = nullptr;

/// Settlement protocol: a settler first claims (kClaimed, exactly one wins), writes the result,
/// then publishes (kReady, release). Readers that observe kReady (acquire) see the result.
/// Thread safety: all members may be called concurrently; the result is read only after ready().
class StateBase {
 public:
  StateBase() = default;
  StateBase(const StateBase&) = delete;
  StateBase& operator=(const StateBase&) = delete;

  void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
  }

  [[nodiscard]] bool ready() const noexcept {
    return (word_.load(std::memory_order_acquire) & kReady) != 0;
  }
  [[nodiscard]] bool claimed() const noexcept {
    return (word_.load(std::memory_order_acquire) & kClaimed) != 0;
  }

  /// True for the single caller that may write the result and then call publish().
  bool try_claim() noexcept {
    return (word_.fetch_or(kClaimed, std::memory_order_acq_rel) & kClaimed) == 0;
  }
  /// try_claim() for a timeout: the claim is marked in the same atomic step, so a settler that
  /// lost the race learns why at once (timed_out_claim()) and a pool counts the task once.
  bool try_claim_timeout() noexcept {
    std::uint32_t s = word_.load(std::memory_order_relaxed);
    while ((s & kClaimed) == 0) {
      if (word_.compare_exchange_weak(s, s | kClaimed | kTimedOut, std::memory_order_acq_rel)) {
        return true;
      }
    }
    return false;
  }
  /// True once try_claim_timeout() won the claim.
  [[nodiscard]] bool timed_out_claim() const noexcept {
    return (word_.load(std::memory_order_acquire) & kTimedOut) != 0;
  }

  /// Makes the result visible, wakes blocked waiters and runs the continuation, if any: here, or
  /// through `deferral` when one is given (unless the continuation hands_off()). The caller must
  /// hold a reference for the call.
  void publish(ContinuationDeferral* deferral = nullptr) noexcept;

  bool set_exception(std::exception_ptr error, ContinuationDeferral* deferral = nullptr) noexcept {
    if (!try_claim()) return false;
    error_ = std::move(error);
    publish(deferral);
    return true;
  }

  /// Runs the installed continuation; only for a ContinuationDeferral, once, after publish().
  void run_continuation() noexcept { continuation_->on_ready(*this); }

  /// Settles with crew::Cancelled if nobody has settled yet. Task states also request stop.
  virtual bool cancel() noexcept;

  /// Blocks until ready. On a pool thread it runs other queued tasks meanwhile.
  void wait() const noexcept;
  /// Lets the producer of this state use the waiting thread for a while before it sleeps (a
  /// process pool reads its workers' replies there, saving two thread wake-ups). Returns true if
  /// it spent the waiter's spinning time, false if it did nothing. Called only by wait().
  virtual bool drive() const noexcept { return false; }
  /// Blocks until ready or the timeout passes; true if ready. Never runs other tasks.
  bool wait_for(std::chrono::nanoseconds timeout) const noexcept;

  /// Installs `c` to run when the state settles. Returns false, leaving `c` uninstalled, when the
  /// state is already ready: the caller then handles the result itself. At most one per state.
  bool try_set_continuation(Continuation* c) noexcept;

  [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }
  /// Moves the stored exception out; only for the state's single consumer, after ready().
  std::exception_ptr take_error() noexcept { return std::exchange(error_, nullptr); }

 protected:
  // The consumer takes the exception out, so the object dies on the consuming thread rather than
  // wherever the last reference to this state happens to drop. (libstdc++'s exception_ptr count
  // is not visible to ThreadSanitizer; this keeps its reports meaningful.)
  void rethrow_if_error() {
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }
  virtual ~StateBase() = default;
  virtual void destroy() noexcept { delete this; }
  std::exception_ptr error_;

 private:
  static constexpr std::uint32_t kClaimed = 1;
  static constexpr std::uint32_t kReady = 2;
  static constexpr std::uint32_t kWaiters = 4;
  static constexpr std::uint32_t kContinuation = 8;
  static constexpr std::uint32_t kTimedOut = 16;

  void block_until_ready(std::chrono::nanoseconds slice) const noexcept;

  mutable std::atomic<std::uint32_t> word_{0};
  std::atomic<std::uint32_t> refs_{1};
  Continuation* continuation_ = nullptr;
};

template <class T>
class State : public StateBase {
 public:
  template <class... A>
  bool set_value(A&&... args) noexcept {
    return set_value_deferred(nullptr, std::forward<A>(args)...);
  }
  /// As set_value, with the continuation run through `deferral` (see publish()).
  template <class... A>
  bool set_value_deferred(ContinuationDeferral* deferral, A&&... args) noexcept {
    if (!try_claim()) return false;
    try {
      value_.emplace(std::forward<A>(args)...);
    } catch (...) {
      error_ = std::current_exception();
    }
    publish(deferral);
    return true;
  }
  /// Moves the result out, or rethrows the stored exception. Only after ready().
  T take() {
    rethrow_if_error();
    return std::move(*value_);
  }

 private:
  std::optional<T> value_;
};

template <>
class State<void> : public StateBase {
 public:
  bool set_value() noexcept { return set_value_deferred(nullptr); }
  bool set_value_deferred(ContinuationDeferral* deferral) noexcept {
    if (!try_claim()) return false;
    publish(deferral);
    return true;
  }
  void take() { rethrow_if_error(); }
};

/// Owning handle to one reference on a state.
template <class S>
class Ref {
 public:
  Ref() = default;
  explicit Ref(S* adopt) noexcept : p_(adopt) {}
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(Ref&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  ~Ref() { reset(); }
  void reset() noexcept {
    if (p_) std::exchange(p_, nullptr)->release();
  }
  S* release_ownership() noexcept { return std::exchange(p_, nullptr); }
  S* get() const noexcept { return p_; }
  S* operator->() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  S* p_ = nullptr;
};

}  // namespace crew::inline v0::detail
