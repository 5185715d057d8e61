#include <algorithm>
#include <cmath>

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

}  // namespace crew::inline v0
