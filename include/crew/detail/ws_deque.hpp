// A Chase-Lev work-stealing deque (Le, Pop, Cohen, Zappa Nardelli, PPoPP 2013), written here
// because it is the heart of the scheduler. The owner pushes and pops at the bottom (LIFO, cache
// warm for fork-join); thieves take from the top (FIFO, the oldest and usually largest work).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace crew::inline v0::detail {

template <class T>
class WorkStealingDeque {
 public:
  explicit WorkStealingDeque(std::size_t capacity = 256) {
    std::size_t cap = 16;
    while (cap < capacity) cap <<= 1;
    auto first = std::make_unique<Ring>(cap);
    ring_.store(first.get(), std::memory_order_relaxed);
    rings_.push_back(std::move(first));
  }
  WorkStealingDeque(const WorkStealingDeque&) = delete;
  WorkStealingDeque& operator=(const WorkStealingDeque&) = delete;

  /// Owner only.
  void push(T* item) {
    const std::int64_t b = bottom_.load(std::memory_order_relaxed);
    const std::int64_t t = top_.load(std::memory_order_acquire);
    Ring* r = ring_.load(std::memory_order_relaxed);
    if (b - t >= static_cast<std::int64_t>(r->mask)) r = grow(r, t, b);
    r->put(b, item);
    // seq_cst (not just release): it also orders this push before the pool's later load of its
    // sleeper count, so a worker going to sleep either sees this item or gets woken.
    bottom_.store(b + 1, std::memory_order_seq_cst);
  }

  /// Owner only. Newest item, or null when empty.
  T* pop() {
    const std::int64_t b = bottom_.load(std::memory_order_relaxed) - 1;
    Ring* r = ring_.load(std::memory_order_relaxed);
    // The seq_cst store/load pair stands in for the paper's full fence between them: a thief
    // and the owner cannot both take the last item.
    bottom_.store(b, std::memory_order_seq_cst);
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    if (t > b) {
      bottom_.store(b + 1, std::memory_order_relaxed);
      return nullptr;
    }
    T* item = r->get(b);
    if (t == b) {
      // Last item: race the thieves for it through top.
      if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
        item = nullptr;
      }
      bottom_.store(b + 1, std::memory_order_relaxed);
    }
    return item;
  }

  /// Any thread. Oldest item, or null when empty or when another thread won the race.
  T* steal() {
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    const std::int64_t b = bottom_.load(std::memory_order_seq_cst);
    if (t >= b) return nullptr;
    Ring* r = ring_.load(std::memory_order_acquire);
    T* item = r->get(t);
    if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
      return nullptr;
    }
    return item;
  }

  /// Any thread; exact only when the deque is quiescent.
  [[nodiscard]] std::size_t size_approx() const noexcept {
    const std::int64_t b = bottom_.load(std::memory_order_seq_cst);
    const std::int64_t t = top_.load(std::memory_order_seq_cst);
    return b > t ? static_cast<std::size_t>(b - t) : 0;
  }
  [[nodiscard]] bool empty_approx() const noexcept { return size_approx() == 0; }

 private:
  struct Ring {
    explicit Ring(std::size_t cap) : mask(cap - 1), slots(new std::atomic<T*>[cap]) {}
    // Slots are atomics because a thief may read a slot the owner is overwriting after the
    // thief's CAS on top already failed; the value read is then discarded.
    void put(std::int64_t i, T* v) noexcept {
      slots[static_cast<std::size_t>(i) & mask].store(v, std::memory_order_relaxed);
    }
    T* get(std::int64_t i) const noexcept {
      return slots[static_cast<std::size_t>(i) & mask].load(std::memory_order_relaxed);
    }
    std::size_t mask;
    std::unique_ptr<std::atomic<T*>[]> slots;
  };

  Ring* grow(Ring* old, std::int64_t t, std::int64_t b) {
    auto bigger = std::make_unique<Ring>((old->mask + 1) * 2);
    for (std::int64_t i = t; i < b; ++i) bigger->put(i, old->get(i));
    Ring* r = bigger.get();
    // Old rings stay alive until the deque dies: a thief may still be reading one.
    rings_.push_back(std::move(bigger));
    ring_.store(r, std::memory_order_release);
    return r;
  }

  alignas(64) std::atomic<std::int64_t> top_{0};
  alignas(64) std::atomic<std::int64_t> bottom_{0};
  std::atomic<Ring*> ring_{nullptr};
  std::vector<std::unique_ptr<Ring>> rings_;
};

}  // namespace crew::inline v0::detail
