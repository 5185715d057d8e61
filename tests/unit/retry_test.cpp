// Tests for crew::backoff_delay, the delay of a retry (crew/retry.hpp).
#include <chrono>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include <crew/retry.hpp>

namespace {

using namespace std::chrono_literals;

TEST(BackoffDelay, FixedWaitsTheSameEveryTime) {
  const crew::Backoff b{.kind = crew::BackoffKind::fixed, .delay = 250ms};
  for (int attempt : {1, 2, 5, 1000}) EXPECT_EQ(crew::backoff_delay(b, attempt, 0.3), 250ms);
  EXPECT_EQ(crew::backoff_delay({}, 3, 0.3), 0ms);
}

TEST(BackoffDelay, ExponentialDoublesPerAttemptUpToTheCap) {
  const crew::Backoff b{.kind = crew::BackoffKind::exponential, .delay = 100ms};
  EXPECT_EQ(crew::backoff_delay(b, 1, 0.0), 100ms);
  EXPECT_EQ(crew::backoff_delay(b, 2, 0.0), 200ms);
  EXPECT_EQ(crew::backoff_delay(b, 3, 0.0), 400ms);
  EXPECT_EQ(crew::backoff_delay(b, 11, 0.0), 102'400ms);
  // 100 ms · 2^20 is past 24 h; huge attempt numbers neither overflow nor pass the cap.
  EXPECT_EQ(crew::backoff_delay(b, 21, 0.0), crew::kMaxBackoffDelay);
  EXPECT_EQ(crew::backoff_delay(b, std::numeric_limits<int>::max(), 0.0), crew::kMaxBackoffDelay);
  EXPECT_EQ(crew::backoff_delay({.kind = crew::BackoffKind::fixed, .delay = 48h}, 1, 0.0),
            crew::kMaxBackoffDelay);
}

TEST(BackoffDelay, JitterStaysWithinItsBounds) {
  const crew::Backoff b{.kind = crew::BackoffKind::exponential, .delay = 1000ms, .jitter = 0.25};
  // The factor is 1 + jitter · (2 · random − 1): 0.75 at random 0, 1 at 0.5, toward 1.25 at 1.
  EXPECT_EQ(crew::backoff_delay(b, 1, 0.0), 750ms);
  EXPECT_EQ(crew::backoff_delay(b, 1, 0.5), 1000ms);
  EXPECT_EQ(crew::backoff_delay(b, 3, 0.5), 4000ms);
  for (int i = 0; i < 1000; ++i) {
    const double random = i / 1000.0;
    const auto d = crew::backoff_delay(b, 2, random);
    EXPECT_GE(d, 1500ms) << random;
    EXPECT_LT(d, 2500ms) << random;
  }
  // Full jitter reaches down to no wait at all; out-of-range randomness is clamped.
  EXPECT_EQ(crew::backoff_delay({.delay = 100ms, .jitter = 1.0}, 1, 0.0), 0ms);
  EXPECT_EQ(crew::backoff_delay({.delay = 100ms, .jitter = 1.0}, 1, 7.0), 200ms);
  EXPECT_EQ(crew::backoff_delay({.delay = 100ms, .jitter = 1.0}, 1, std::nan("")), 0ms);
}

}  // namespace
