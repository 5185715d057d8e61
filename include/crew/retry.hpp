// crew::Backoff — how long a failed task waits before it runs again; one vocabulary for a local
// ProcessPool (RunOptions) and the Redis queue (crew::redis::JobOptions).
#pragma once

#include <chrono>

namespace crew {
inline namespace v0 {

enum class BackoffKind {
  fixed,        ///< every retry waits `delay`
  exponential,  ///< the retry after attempt n waits `delay · 2^(n−1)`
};

/// The wait before a failed task runs again: `delay`, or `delay · 2^(attempt−1)` for exponential,
/// times a random factor in `1 ± jitter` (which spreads out retries that failed together), capped
/// at kMaxBackoffDelay. The default retries at once.
struct Backoff {
  BackoffKind kind = BackoffKind::fixed;
  /// Must not be negative.
  std::chrono::milliseconds delay{0};
  /// 0..1: the delay is multiplied by a factor drawn uniformly from [1 − jitter, 1 + jitter).
  double jitter = 0.0;
};

/// No backoff waits longer than this, whatever the attempt and jitter.
inline constexpr std::chrono::milliseconds kMaxBackoffDelay = std::chrono::hours(24);

/// The wait after failed attempt `attempt` (1 for the first execution) under `backoff`, with
/// `random` in [0, 1) drawing the jitter factor `1 + jitter · (2 · random − 1)`; rounded down to a
/// millisecond, at most kMaxBackoffDelay. The same rule as the Redis queue's `crew_fail`. Pure: the
/// caller supplies the randomness, so tests can pin it.
[[nodiscard]] std::chrono::milliseconds backoff_delay(const Backoff& backoff, int attempt,
                                                      double random) noexcept;

}  // namespace v0
}  // namespace crew
