// Pool statistics: snapshots and the latency histogram behind them.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace crew {
inline namespace v0 {

/// Percentiles of a latency distribution. Values are bucket upper bounds, accurate to about 6%
/// (16 buckets per power of two); `max` is exact.
struct LatencySummary {
  std::chrono::nanoseconds p50{};
  std::chrono::nanoseconds p90{};
  std::chrono::nanoseconds p99{};
  std::chrono::nanoseconds max{};
  std::uint64_t count = 0;
};

/// A snapshot of a pool, from `ThreadPool::stats()`. Counters are totals since the pool started.
/// The fields ProcessPoolStats shares have its names and meanings.
struct PoolStats {
  std::size_t workers = 0;      ///< threads alive
  std::size_t busy = 0;         ///< threads running a task
  std::size_t idle = 0;         ///< workers - busy
  std::size_t queued = 0;       ///< tasks accepted and not yet started
  std::uint64_t completed = 0;  ///< tasks that returned normally
  /// Tasks that threw (and fire-and-forget tasks whose error went to on_error).
  std::uint64_t failed = 0;
  std::uint64_t cancelled = 0;  ///< tasks cancelled, or rejected by terminate()
  /// Tasks whose Future settled with crew::TimedOut, counted at the deadline (the task itself
  /// may still be running: see `stuck`).
  std::uint64_t timed_out = 0;
  /// Tasks running more than kStuckGrace past their timeout right now (each holds a thread).
  std::size_t stuck = 0;
  std::uint64_t stuck_total = 0;  ///< tasks that were ever stuck
  /// Share of the pool's capacity spent running tasks since it started:
  /// total run time / (elapsed time x max_workers), in [0, 1] (Piscina's definition).
  double utilization = 0.0;
  LatencySummary wait_time;  ///< from submission to start
  LatencySummary run_time;   ///< from start to finish
};

/// A log-linear histogram of durations: records in a few nanoseconds, summarises on demand.
///
///     crew::LatencyHistogram h;
///     h.record(std::chrono::microseconds(250));
///     auto s = h.summary();   // s.p50 ~ 250 us
///
/// Thread safety: `record` has a single writer (each pool thread owns its histograms); `summary`
/// and `merge_into` may run concurrently with it and see a slightly stale, never torn, state.
class LatencyHistogram {
 public:
  static constexpr int kSubBits = 4;       ///< 16 buckets per power of two
  static constexpr int kMaxExponent = 47;  ///< durations above ~39 hours clamp
  static constexpr std::size_t kBuckets = (kMaxExponent - kSubBits + 2) << kSubBits;

  void record(std::chrono::nanoseconds d) noexcept {
    record_ns(d.count() < 0 ? 0 : static_cast<std::uint64_t>(d.count()));
  }
  void record_ns(std::uint64_t ns) noexcept {
    bump(counts_[bucket_of(ns)]);
    bump(total_, 1);
    if (ns > max_.load(std::memory_order_relaxed)) max_.store(ns, std::memory_order_relaxed);
  }
  /// Adds this histogram's counts into `total` (which must have no concurrent writer).
  void merge_into(LatencyHistogram& total) const noexcept;
  [[nodiscard]] LatencySummary summary() const noexcept;
  [[nodiscard]] std::uint64_t count() const noexcept {
    return total_.load(std::memory_order_relaxed);
  }

  /// The bucket a value falls in, and that bucket's upper bound (for exporters).
  static std::size_t bucket_of(std::uint64_t ns) noexcept {
    if (ns < (1U << kSubBits)) return static_cast<std::size_t>(ns);
    int exp = 63 - __builtin_clzll(ns);
    if (exp > kMaxExponent) return kBuckets - 1;
    const auto sub = (ns >> (exp - kSubBits)) & ((1U << kSubBits) - 1);
    return (static_cast<std::size_t>(exp - kSubBits + 1) << kSubBits) + sub;
  }
  static std::uint64_t upper_bound_of(std::size_t bucket) noexcept;
  [[nodiscard]] std::uint64_t bucket_count(std::size_t bucket) const noexcept {
    return counts_[bucket].load(std::memory_order_relaxed);
  }

 private:
  // Single writer: a relaxed load and store is enough and avoids a locked instruction.
  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t by = 1) noexcept {
    c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  std::array<std::atomic<std::uint64_t>, kBuckets> counts_{};
  std::atomic<std::uint64_t> total_{0};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace v0
}  // namespace crew
