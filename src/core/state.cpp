#include <climits>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include <crew/detail/futex.hpp>
#include <crew/detail/state.hpp>
#include <crew/errors.hpp>

namespace crew::inline v0::detail {
namespace {
// A waiter spins this long before sleeping (a pool thread keeps looking for work to help with
// instead): a task that finishes within a couple of microseconds
// (the common round trip) is seen without a syscall on either side.
constexpr auto kSpinFor = std::chrono::microseconds(20);
// While a pool thread waits and finds nothing to help with, it sleeps in slices this long, so work
// submitted meanwhile is picked up even if only this thread could run it.
constexpr auto kHelperSlice = std::chrono::microseconds(200);
}  // namespace

void StateBase::publish(ContinuationDeferral* deferral) noexcept {
  const std::uint32_t old = word_.fetch_or(kReady, std::memory_order_acq_rel);
  if ((old & kWaiters) != 0) futex_wake(word_, INT_MAX);
  // The installer saw kContinuation unset or kReady set; exactly one side runs the continuation.
  if ((old & kContinuation) == 0) return;
  if (deferral != nullptr && !continuation_->hands_off()) {
    deferral->defer(*this);
  } else {
    continuation_->on_ready(*this);
  }
}

bool StateBase::cancel() noexcept {
  return set_exception(std::make_exception_ptr(Cancelled()));
}

bool StateBase::try_set_continuation(Continuation* c) noexcept {
  continuation_ = c;
  // acq_rel: publishes continuation_ to the settler, and acquires the result if already ready.
  const std::uint32_t old = word_.fetch_or(kContinuation, std::memory_order_acq_rel);
  return (old & kReady) == 0;
}

void StateBase::block_until_ready(std::chrono::nanoseconds slice) const noexcept {
  std::uint32_t s = word_.load(std::memory_order_acquire);
  if ((s & kReady) != 0) return;
  if ((s & kWaiters) == 0) {
    if (!word_.compare_exchange_strong(s, s | kWaiters, std::memory_order_acq_rel)) return;
    s |= kWaiters;
  }
  futex_wait(word_, s, slice);
}

void StateBase::wait() const noexcept {
  if (ready()) return;
  if (Helper* helper = tl_helper) {
    // Run other work while waiting. With nothing to run, keep looking for a while (in fork-join
    // code the thread we wait for keeps producing stealable work), then sleep in slices.
    auto spin_until = std::chrono::steady_clock::time_point::min();
    for (int i = 0; !ready(); ++i) {
      if (helper->help_one()) {
        spin_until = std::chrono::steady_clock::time_point::min();
        continue;
      }
      if ((i & 15) != 15) {
        cpu_relax();
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      if (spin_until == std::chrono::steady_clock::time_point::min()) spin_until = now + kSpinFor;
      if (now < spin_until) {
        std::this_thread::yield();
      } else {
        block_until_ready(kHelperSlice);
      }
    }
    return;
  }
  const auto spin_until = drive() ? std::chrono::steady_clock::time_point::min()
                                  : std::chrono::steady_clock::now() + kSpinFor;
  for (int i = 0; !ready(); ++i) {
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > spin_until) break;
  }
  while (!ready()) block_until_ready(std::chrono::nanoseconds(-1));
}

bool StateBase::wait_for(std::chrono::nanoseconds timeout) const noexcept {
  if (ready()) return true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ready()) {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds::zero()) return false;
    block_until_ready(std::chrono::duration_cast<std::chrono::nanoseconds>(left));
  }
  return true;
}

void throw_no_state(const char* what) {
  throw std::logic_error(fmt::format(
      "crew::Future::{}: this Future has no shared state (default-constructed, moved from, or "
      "already consumed by get()/then()/co_await)",
      what));
}

std::exception_ptr continuation_dropped() {
  return std::make_exception_ptr(
      PoolClosed("crew: the executor given to then() destroyed the continuation without running "
                 "it (it was terminated or closed first); keep the executor running until the "
                 "continuation has run, or handle crew::PoolClosed"));
}

std::exception_ptr broken_promise() {
  return std::make_exception_ptr(
      Error("crew: a Promise was destroyed without a result (broken promise); fulfil every "
            "Promise with set_value or set_exception"));
}

}  // namespace crew::inline v0::detail
