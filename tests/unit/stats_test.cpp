// Tests for crew/stats.hpp: LatencyHistogram buckets, summaries and merging.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/stats.hpp>

namespace {

using crew::LatencyHistogram;
using namespace std::chrono_literals;

// Values per generated distribution; lower it if a sanitizer run gets too slow.
constexpr int kSamples = 100'000;
// Documented accuracy is about 6% (16 buckets per power of two); allow 7%.
constexpr double kTolerance = 0.07;

// The histogram is ~6 KB of atomics: keep it off the stack.
std::unique_ptr<LatencyHistogram> make_histogram() {
  return std::make_unique<LatencyHistogram>();
}

// Largest value that still gets its own bucket; everything above clamps into the last one.
constexpr std::uint64_t kLargestUnclamped =
    (std::uint64_t{1} << (LatencyHistogram::kMaxExponent + 1)) - 1;

std::vector<std::uint64_t> interesting_values() {
  std::vector<std::uint64_t> v;
  for (std::uint64_t i = 0; i <= 4096; ++i) v.push_back(i);
  for (int e = 0; e < 64; ++e) {
    const std::uint64_t p = std::uint64_t{1} << e;
    for (std::uint64_t d : {p - 1, p, p + 1, p + p / 3, p + p / 2}) v.push_back(d);
  }
  std::mt19937_64 rng(12345);
  for (int i = 0; i < 20'000; ++i) {
    // Uniform over exponents, then over the mantissa: covers every bucket range.
    const int e = static_cast<int>(rng() % 64);
    v.push_back((std::uint64_t{1} << e) | (rng() & ((std::uint64_t{1} << e) - 1)));
  }
  v.push_back(kLargestUnclamped);
  v.push_back(kLargestUnclamped + 1);
  v.push_back(std::numeric_limits<std::uint64_t>::max());
  return v;
}

TEST(LatencyHistogram, BucketOfAndUpperBoundRoundTrip) {
  for (const std::uint64_t v : interesting_values()) {
    const std::size_t b = LatencyHistogram::bucket_of(v);
    ASSERT_LT(b, LatencyHistogram::kBuckets) << "v=" << v;
    if (v > kLargestUnclamped) {
      EXPECT_EQ(b, LatencyHistogram::kBuckets - 1) << "v=" << v << " should clamp";
      continue;
    }
    EXPECT_LE(v, LatencyHistogram::upper_bound_of(b)) << "v=" << v << " bucket=" << b;
    if (b > 0) {
      EXPECT_GT(v, LatencyHistogram::upper_bound_of(b - 1)) << "v=" << v << " bucket=" << b;
    }
  }
}

TEST(LatencyHistogram, SmallValuesAreExact) {
  for (std::uint64_t v = 0; v < 32; ++v) {
    EXPECT_EQ(LatencyHistogram::bucket_of(v), v);
    EXPECT_EQ(LatencyHistogram::upper_bound_of(v), v);
  }
  // The first log-linear buckets, spelled out: 15 | 16 | 17 and 32..33 share a bucket.
  EXPECT_EQ(LatencyHistogram::bucket_of(15), 15U);
  EXPECT_EQ(LatencyHistogram::bucket_of(16), 16U);
  EXPECT_EQ(LatencyHistogram::bucket_of(17), 17U);
  EXPECT_EQ(LatencyHistogram::bucket_of(32), LatencyHistogram::bucket_of(33));
  EXPECT_NE(LatencyHistogram::bucket_of(33), LatencyHistogram::bucket_of(34));
}

TEST(LatencyHistogram, BucketBoundsAreStrictlyIncreasingAndTight) {
  for (std::size_t b = 0; b + 1 < LatencyHistogram::kBuckets; ++b) {
    const std::uint64_t hi = LatencyHistogram::upper_bound_of(b);
    ASSERT_LT(hi, LatencyHistogram::upper_bound_of(b + 1)) << "bucket " << b;
    EXPECT_EQ(LatencyHistogram::bucket_of(hi), b);
    EXPECT_EQ(LatencyHistogram::bucket_of(hi + 1), b + 1);
  }
  EXPECT_EQ(LatencyHistogram::upper_bound_of(LatencyHistogram::kBuckets - 1), kLargestUnclamped);
}

TEST(LatencyHistogram, BucketWidthIsWithinOneSixteenth) {
  for (std::size_t b = 32; b < LatencyHistogram::kBuckets; ++b) {
    const double lo = static_cast<double>(LatencyHistogram::upper_bound_of(b - 1) + 1);
    const double hi = static_cast<double>(LatencyHistogram::upper_bound_of(b));
    EXPECT_LE((hi - lo) / lo, 1.0 / 16.0) << "bucket " << b;
  }
}

// Exact percentile with the same rank rule as summary(): the smallest r with r >= q * n.
std::uint64_t exact_percentile(std::vector<std::uint64_t> values, double q) {
  const auto n = static_cast<double>(values.size());
  auto rank = static_cast<std::size_t>(std::ceil(q * n - 1e-9));
  rank = std::max<std::size_t>(rank, 1);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(rank - 1),
                   values.end());
  return values[rank - 1];
}

void expect_close(std::chrono::nanoseconds got, std::uint64_t want, const char* what) {
  const double g = static_cast<double>(got.count());
  const double w = static_cast<double>(want);
  EXPECT_LE(std::abs(g - w), kTolerance * w) << what << ": got " << g << " want " << w;
}

void check_distribution(const std::vector<std::uint64_t>& values) {
  auto h = make_histogram();
  for (auto v : values) h->record_ns(v);
  const auto s = h->summary();
  EXPECT_EQ(s.count, values.size());
  EXPECT_EQ(h->count(), values.size());
  expect_close(s.p50, exact_percentile(values, 0.50), "p50");
  expect_close(s.p90, exact_percentile(values, 0.90), "p90");
  expect_close(s.p99, exact_percentile(values, 0.99), "p99");
  EXPECT_EQ(static_cast<std::uint64_t>(s.max.count()),
            *std::max_element(values.begin(), values.end()));
}

TEST(LatencySummary, UniformDistribution) {
  std::vector<std::uint64_t> values;
  for (int i = 1; i <= kSamples; ++i) values.push_back(static_cast<std::uint64_t>(i) * 37);
  check_distribution(values);
}

TEST(LatencySummary, LogUniformDistribution) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> exponent(std::log(100.0), std::log(1e10));
  std::vector<std::uint64_t> values;
  for (int i = 0; i < kSamples; ++i) {
    values.push_back(static_cast<std::uint64_t>(std::exp(exponent(rng))));
  }
  check_distribution(values);
}

TEST(LatencySummary, ExponentialDistribution) {
  std::mt19937_64 rng(99);
  std::exponential_distribution<double> d(1.0 / 250'000.0);  // mean 250 us
  std::vector<std::uint64_t> values;
  for (int i = 0; i < kSamples; ++i) values.push_back(1 + static_cast<std::uint64_t>(d(rng)));
  check_distribution(values);
}

TEST(LatencySummary, Bimodal) {
  auto h = make_histogram();
  for (int i = 0; i < 900; ++i) h->record(1us);
  for (int i = 0; i < 100; ++i) h->record(1ms);
  const auto s = h->summary();
  expect_close(s.p50, 1'000, "p50");
  expect_close(s.p90, 1'000, "p90");  // rank 900 is still the fast mode
  expect_close(s.p99, 1'000'000, "p99");
  EXPECT_EQ(s.max, 1ms);
}

TEST(LatencySummary, ConstantValueIsReportedExactly) {
  // Every percentile is capped at the exact maximum, so a constant reads back exactly.
  auto h = make_histogram();
  for (int i = 0; i < 1000; ++i) h->record(std::chrono::nanoseconds(123'457));
  const auto s = h->summary();
  EXPECT_EQ(s.p50.count(), 123'457);
  EXPECT_EQ(s.p90.count(), 123'457);
  EXPECT_EQ(s.p99.count(), 123'457);
  EXPECT_EQ(s.max.count(), 123'457);
  EXPECT_EQ(s.count, 1000U);
}

TEST(LatencySummary, MaxIsExact) {
  auto h = make_histogram();
  h->record(10ns);
  h->record(std::chrono::nanoseconds(999'999'937));  // not a bucket bound
  h->record(5us);
  EXPECT_EQ(h->summary().max.count(), 999'999'937);

  // A clamped value keeps its exact maximum, and no percentile exceeds it.
  auto big = make_histogram();
  const std::uint64_t huge = std::uint64_t{1} << 60;
  big->record_ns(huge);
  const auto s = big->summary();
  EXPECT_EQ(static_cast<std::uint64_t>(s.max.count()), huge);
  EXPECT_LE(s.p99, s.max);
  EXPECT_EQ(big->bucket_count(LatencyHistogram::kBuckets - 1), 1U);
}

TEST(LatencySummary, NegativeDurationsCountAsZero) {
  auto h = make_histogram();
  h->record(-5ns);
  EXPECT_EQ(h->count(), 1U);
  EXPECT_EQ(h->bucket_count(0), 1U);
  EXPECT_EQ(h->summary().max.count(), 0);
}

TEST(LatencySummary, EmptyHistogramIsAllZero) {
  auto h = make_histogram();
  const auto s = h->summary();
  EXPECT_EQ(s.count, 0U);
  EXPECT_EQ(s.p50.count(), 0);
  EXPECT_EQ(s.p90.count(), 0);
  EXPECT_EQ(s.p99.count(), 0);
  EXPECT_EQ(s.max.count(), 0);
  EXPECT_EQ(h->count(), 0U);
}

TEST(LatencyHistogram, MergeIntoSumsCounts) {
  auto a = make_histogram();
  auto b = make_histogram();
  auto both = make_histogram();
  std::mt19937_64 rng(3);
  for (int i = 0; i < 5000; ++i) {
    const std::uint64_t v = rng() % 10'000'000;
    ((i % 3 == 0) ? *a : *b).record_ns(v);
    both->record_ns(v);
  }
  auto total = make_histogram();
  total->record_ns(42);  // merge adds to what is already there
  both->record_ns(42);
  a->merge_into(*total);
  b->merge_into(*total);
  EXPECT_EQ(total->count(), 5001U);
  for (std::size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
    ASSERT_EQ(total->bucket_count(i), both->bucket_count(i)) << "bucket " << i;
  }
  const auto s = total->summary();
  const auto t = both->summary();
  EXPECT_EQ(s.count, t.count);
  EXPECT_EQ(s.p50, t.p50);
  EXPECT_EQ(s.p90, t.p90);
  EXPECT_EQ(s.p99, t.p99);
  EXPECT_EQ(s.max, t.max);

  // Merging an empty histogram changes nothing.
  make_histogram()->merge_into(*total);
  EXPECT_EQ(total->count(), 5001U);
  EXPECT_EQ(total->summary().max, t.max);
}

// One writer, one reader: the reader sees monotonically growing, never torn, counts. Mainly for
// TSan.
TEST(LatencyHistogram, SummaryWhileRecording) {
  auto h = make_histogram();
  constexpr int kRecords = kSamples;
  std::atomic<bool> done{false};
  std::uint64_t last = 0;
  bool monotonic = true;
  std::jthread writer([&] {
    for (int i = 0; i < kRecords; ++i) h->record_ns(static_cast<std::uint64_t>(i % 5000));
    done = true;
  });
  while (!done.load()) {
    const auto s = h->summary();
    if (s.count < last || s.count > static_cast<std::uint64_t>(kRecords)) monotonic = false;
    last = s.count;
    auto total = make_histogram();
    h->merge_into(*total);
  }
  writer.join();
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(h->summary().count, static_cast<std::uint64_t>(kRecords));
  EXPECT_EQ(h->summary().max.count(), 4999);
}

}  // namespace
