// The queue behind channels and message ports: FIFO, optionally bounded, closable, with a
// listener for push-style delivery.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>

#include <crew/detail/futex.hpp>

namespace crew::inline v0::detail {

/// Thread safety: every member may be called from any thread. A push happens-before the pop that
/// returns the item.
template <class T>
class Inbox {
 public:
  enum class Push { ok, full, closed };

  explicit Inbox(std::size_t high_water_mark) : high_water_mark_(high_water_mark) {}

  /// Moves from `item` only when it returns Push::ok. With `wait`, blocks while the inbox is at
  /// its high-water mark (until space frees up or the inbox closes).
  Push push(T& item, bool wait) {
    std::function<void()> listener;
    {
      std::unique_lock lock(mutex_);
      while (true) {
        if (closed_) return Push::closed;
        if (high_water_mark_ == 0 || items_.size() < high_water_mark_) break;
        if (!wait) return Push::full;
        space_.wait(lock);
      }
      items_.push_back(std::move(item));
      count_.store(items_.size(), std::memory_order_release);
      if (listener_) listener = listener_;
    }
    items_ready_.notify_one();
    if (listener) listener();
    return Push::ok;
  }

  /// Blocks until an item arrives (returns it), or the inbox is closed and drained, or `deadline`
  /// passes (both: empty).
  std::optional<T> pop(std::optional<std::chrono::steady_clock::time_point> deadline) {
    // Look for a while before sleeping: a reply that comes within microseconds (the usual round
    // trip) is then picked up without a futex sleep and wake on either side.
    const auto spin_until = std::chrono::steady_clock::now() + kSpinFor;
    for (int i = 1; count_.load(std::memory_order_acquire) == 0 &&
                    !closed_flag_.load(std::memory_order_acquire);
         ++i) {
      cpu_relax();
      if ((i & 63) == 0 && std::chrono::steady_clock::now() > spin_until) break;
    }
    std::unique_lock lock(mutex_);
    const auto ready = [this] { return !items_.empty() || closed_; };
    if (deadline) {
      if (!items_ready_.wait_until(lock, *deadline, ready)) return std::nullopt;
    } else {
      items_ready_.wait(lock, ready);
    }
    return take_locked(lock);
  }

  std::optional<T> try_pop() {
    std::unique_lock lock(mutex_);
    return take_locked(lock);
  }

  /// Further pushes fail; items already queued can still be popped; blocked callers wake; the
  /// listener runs once more so push-style consumers notice the end.
  void close() {
    std::function<void()> listener;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
      listener = listener_;
    }
    items_ready_.notify_all();
    space_.notify_all();
    if (listener) listener();
  }

  [[nodiscard]] bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lock(mutex_);
    return items_.size();
  }

  /// Called (outside the lock, on the pushing thread) after every successful push and on close;
  /// also once now if items are waiting or the inbox is closed. Pass an empty function to remove
  /// it.
  void set_listener(std::function<void()> listener) {
    bool pending = false;
    {
      std::lock_guard lock(mutex_);
      listener_ = listener;
      pending = !items_.empty() || closed_;
    }
    if (pending && listener) listener();
  }

 private:
  std::optional<T> take_locked(std::unique_lock<std::mutex>& lock) {
    if (items_.empty()) return std::nullopt;
    std::optional<T> item(std::move(items_.front()));
    items_.pop_front();
    count_.store(items_.size(), std::memory_order_release);
    const bool was_full = high_water_mark_ != 0 && items_.size() + 1 == high_water_mark_;
    lock.unlock();
    if (was_full) space_.notify_one();
    return item;
  }

  mutable std::mutex mutex_;
  std::condition_variable items_ready_;
  std::condition_variable space_;
  std::deque<T> items_;
  std::function<void()> listener_;
  const std::size_t high_water_mark_;
  bool closed_ = false;
  // Mirrors of items_.size() and closed_ (written under the mutex) for the lock-free spin in pop().
  std::atomic<std::size_t> count_{0};
  std::atomic<bool> closed_flag_{false};
  static constexpr auto kSpinFor = std::chrono::microseconds(20);
};

}  // namespace crew::inline v0::detail
