#include <crew/stats.hpp>

namespace crew::inline v0 {

std::uint64_t LatencyHistogram::upper_bound_of(std::size_t bucket) noexcept {
  constexpr std::size_t kSub = std::size_t{1} << kSubBits;
  if (bucket < kSub) return bucket;
  const int exp = static_cast<int>(bucket >> kSubBits) + kSubBits - 1;
  const std::uint64_t sub = bucket & (kSub - 1);
  const int shift = exp - kSubBits;
  return ((kSub + sub + 1) << shift) - 1;
}

void LatencyHistogram::merge_into(LatencyHistogram& total) const noexcept {
  for (std::size_t i = 0; i < kBuckets; ++i) {
    const auto c = counts_[i].load(std::memory_order_relaxed);
    if (c != 0) bump(total.counts_[i], c);
  }
  bump(total.total_, total_.load(std::memory_order_relaxed));
  const auto m = max_.load(std::memory_order_relaxed);
  if (m > total.max_.load(std::memory_order_relaxed))
    total.max_.store(m, std::memory_order_relaxed);
}

LatencySummary LatencyHistogram::summary() const noexcept {
  LatencySummary s;
  std::uint64_t n = 0;
  for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
  s.count = n;
  const std::uint64_t max = max_.load(std::memory_order_relaxed);
  s.max = std::chrono::nanoseconds(max);
  if (n == 0) return s;
  // Rank r (1-based) of each percentile: the smallest r with r >= q * n.
  const auto rank = [n](double q) {
    auto r = static_cast<std::uint64_t>(q * static_cast<double>(n) + 0.999999);
    return r == 0 ? std::uint64_t{1} : r;
  };
  const std::uint64_t want[3] = {rank(0.50), rank(0.90), rank(0.99)};
  std::chrono::nanoseconds* out[3] = {&s.p50, &s.p90, &s.p99};
  std::uint64_t seen = 0;
  int next = 0;
  for (std::size_t b = 0; b < kBuckets && next < 3; ++b) {
    seen += counts_[b].load(std::memory_order_relaxed);
    while (next < 3 && seen >= want[next]) {
      // A bucket's bound can exceed the exact maximum; never report more than it.
      const std::uint64_t bound = upper_bound_of(b);
      *out[next] = std::chrono::nanoseconds(bound < max ? bound : max);
      ++next;
    }
  }
  return s;
}

}  // namespace crew::inline v0
