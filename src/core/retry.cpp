#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include <crew/pool.hpp>
#include <crew/retry.hpp>

namespace crew::inline v0 {

std::chrono::milliseconds backoff_delay(const Backoff& backoff, int attempt,
                                        double random) noexcept {
  double ms = static_cast<double>(backoff.delay.count());
  if (backoff.kind == BackoffKind::exponential) {
    // 2^40 takes any delay of a millisecond or more past the cap; a larger exponent only risks
    // overflow.
    ms = std::ldexp(ms, std::clamp(attempt - 1, 0, 40));
  }
  if (backoff.jitter > 0.0) {
    const double r = random >= 0.0 ? std::min(random, 1.0) : 0.0;  // NaN draws 0
    ms *= 1.0 + backoff.jitter * (2.0 * r - 1.0);
  }
  ms = std::clamp(ms, 0.0, static_cast<double>(kMaxBackoffDelay.count()));
  return std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(ms));
}

namespace detail {

void check_run_options(const RunOptions& options, std::string_view who, bool retries) {
  auto bad = [&](std::string_view field, const std::string& rule) {
    throw std::invalid_argument(fmt::format("{}: RunOptions::{} {}", who, field, rule));
  };
  if (options.attempts < 1) bad("attempts", fmt::format("must be >= 1, got {}", options.attempts));
  if (options.backoff.delay.count() < 0) {
    bad("backoff.delay",
        fmt::format("must not be negative, got {} ms", options.backoff.delay.count()));
  }
  if (!(options.backoff.jitter >= 0.0 && options.backoff.jitter <= 1.0)) {  // NaN too
    bad("backoff.jitter", fmt::format("must be in 0..1, got {}", options.backoff.jitter));
  }
  if (!retries && options.attempts != 1) {
    bad("attempts",
        fmt::format("is {}, but a ThreadPool runs a task once: a task that crashed took the whole "
                    "process with it, and one that timed out may still be running. Run tasks that "
                    "need retries on a crew::ProcessPool",
                    options.attempts));
  }
}

}  // namespace detail
}  // namespace crew::inline v0
