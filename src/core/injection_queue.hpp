// The shared queue where tasks from outside the pool enter: one lane per priority, each an
// intrusive multi-producer list that producers append to with a single atomic exchange (no lock,
// no allocation), drained by the pool's threads one at a time. Written here because it is the
// scheduler's hot path: a mutex-guarded deque made every producer contend with every consumer.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include <crew/detail/task.hpp>

namespace crew::inline v0::detail {

/// D. Vyukov's intrusive MPSC queue. Push is wait-free from any thread; pop and peek need the
/// consumers to be serialised by the caller. FIFO per producer and across producers in the order
/// of their exchanges.
class MpscList {
 public:
  MpscList() noexcept : head_(&stub_), tail_(&stub_) {}
  MpscList(const MpscList&) = delete;
  MpscList& operator=(const MpscList&) = delete;

  void push(QueueNode* n) noexcept {
    n->next.store(nullptr, std::memory_order_relaxed);
    // The exchange orders producers; linking the predecessor afterwards publishes the node (and
    // the task it heads) to the consumer.
    QueueNode* prev = tail_.exchange(n, std::memory_order_acq_rel);
    prev->next.store(n, std::memory_order_release);
  }

  /// Consumer only. Null when empty, or when a producer has exchanged but not yet linked its
  /// node: then the list is not empty and the caller retries later.
  QueueNode* pop() noexcept {
    QueueNode* h = head_;
    QueueNode* next = h->next.load(std::memory_order_acquire);
    if (h == &stub_) {
      if (next == nullptr) return nullptr;
      head_ = next;
      h = next;
      next = h->next.load(std::memory_order_acquire);
    }
    if (next != nullptr) {
      head_ = next;
      return h;
    }
    // h is the last linked node. Detaching it needs a successor, so append the stub behind it,
    // unless a producer is already appending.
    if (h != tail_.load(std::memory_order_acquire)) return nullptr;
    push(&stub_);
    next = h->next.load(std::memory_order_acquire);
    if (next != nullptr) {
      head_ = next;
      return h;
    }
    return nullptr;
  }

  /// Consumer only. The oldest linked node, without removing it.
  QueueNode* peek() const noexcept {
    QueueNode* h = head_;
    return h == &stub_ ? h->next.load(std::memory_order_acquire) : h;
  }

 private:
  QueueNode* head_;  // consumer only
  alignas(64) std::atomic<QueueNode*> tail_;
  QueueNode stub_;
};

/// Priority lanes over MpscList. Producers: push(). Consumers, serialised by the caller:
/// pop_batch().
class InjectionQueue {
 public:
  /// Distinct priority values with a lane of their own; further values share the lane of the
  /// nearest lower priority (or the lowest lane).
  static constexpr std::size_t kMaxLanes = 32;
  /// While more than one priority has been used, every kAgingPeriod-th task taken is the oldest
  /// task of any lane.
  static constexpr std::uint64_t kAgingPeriod = 8;

  void push(Task* t) noexcept { lane_for(t->priority).list.push(t); }

  /// Takes up to `max` tasks from one lane, oldest first. Consumers only, one at a time.
  std::size_t pop_batch(Task** out, std::size_t max) {
    const std::size_t lanes = lane_count_.load(std::memory_order_acquire);
    if (lanes != order_.size()) rebuild_order(lanes);
    std::size_t n = max;
    if (lanes > 1) {
      const std::uint64_t phase = taken_ % kAgingPeriod;
      if (phase == kAgingPeriod - 1) {
        if (Lane* oldest = oldest_lane()) {
          const std::size_t got = take(*oldest, out, 1);
          taken_ += got;
          return got;
        }
        return 0;
      }
      n = std::min<std::size_t>(n, kAgingPeriod - 1 - phase);
    }
    for (const std::size_t i : order_) {
      const std::size_t got = take(lanes_[i], out, n);
      if (got != 0) {
        if (lanes > 1) taken_ += got;
        return got;
      }
    }
    return 0;
  }

 private:
  struct alignas(64) Lane {
    int priority = 0;  // written once, before lane_count_ publishes the lane
    MpscList list;
  };

  static std::size_t take(Lane& lane, Task** out, std::size_t max) noexcept {
    std::size_t got = 0;
    while (got < max) {
      QueueNode* n = lane.list.pop();
      if (n == nullptr) break;
      out[got++] = static_cast<Task*>(n);
    }
    return got;
  }

  Lane* oldest_lane() noexcept {
    Lane* best = nullptr;
    std::uint64_t best_ticks = 0;
    for (const std::size_t i : order_) {
      QueueNode* head = lanes_[i].list.peek();
      if (head == nullptr) continue;
      const std::uint64_t ticks = static_cast<Task*>(head)->enqueued_ticks;
      if (best == nullptr || ticks < best_ticks) {
        best = &lanes_[i];
        best_ticks = ticks;
      }
    }
    return best;
  }

  Lane& lane_for(int priority) noexcept {
    std::size_t n = lane_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      if (lanes_[i].priority == priority) return lanes_[i];
    }
    std::lock_guard lock(lane_mutex_);
    n = lane_count_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < n; ++i) {
      if (lanes_[i].priority == priority) return lanes_[i];
    }
    if (n < kMaxLanes) {
      lanes_[n].priority = priority;
      lane_count_.store(n + 1, std::memory_order_release);
      return lanes_[n];
    }
    Lane* nearest = nullptr;
    Lane* lowest = &lanes_[0];
    for (auto& lane : lanes_) {
      if (lane.priority < priority && (nearest == nullptr || lane.priority > nearest->priority)) {
        nearest = &lane;
      }
      if (lane.priority < lowest->priority) lowest = &lane;
    }
    return nearest != nullptr ? *nearest : *lowest;
  }

  void rebuild_order(std::size_t lanes) {
    order_.resize(lanes);
    for (std::size_t i = 0; i < lanes; ++i) order_[i] = i;
    std::sort(order_.begin(), order_.end(), [this](std::size_t a, std::size_t b) {
      return lanes_[a].priority > lanes_[b].priority;
    });
  }

  std::array<Lane, kMaxLanes> lanes_{};
  std::atomic<std::size_t> lane_count_{0};
  std::mutex lane_mutex_;
  // Consumer side.
  std::vector<std::size_t> order_;  // lane indices, highest priority first
  std::uint64_t taken_ = 0;
};

}  // namespace crew::inline v0::detail
