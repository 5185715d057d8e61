// The restart policy ProcessPool and Cluster share (internal): after a failed start or an
// unstable exit the next start waits `initial`, then x1.5 per further failure up to `cap`; a
// process that stays up for `stable` proves the program healthy and the delay starts over.
#pragma once

#include <algorithm>
#include <chrono>

namespace crew::inline v0::detail {

class RestartBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  using ms = std::chrono::milliseconds;
  static constexpr ms kCap{15'000};
  static constexpr ms kStable{30'000};

  explicit RestartBackoff(ms initial, ms cap = kCap, ms stable = kStable) noexcept
      : initial_(initial), cap_(cap), stable_(stable) {}

  /// A start failed, or a process died too soon: the delay grows and the next start waits it
  /// out from `now`. Returns the delay.
  ms fail(Clock::time_point now) noexcept {
    delay_ = delay_.count() == 0 ? std::min(initial_, cap_) : std::min(cap_, delay_ * 3 / 2);
    next_ = now + delay_;
    return delay_;
  }
  /// The next start waits the current delay (0 when stable) from `now`, without growing it.
  ms wait_from(Clock::time_point now) noexcept {
    next_ = now + delay_;
    return delay_;
  }
  /// No start before `now` + the cap (a circuit breaker holding off).
  void hold(Clock::time_point now) noexcept { next_ = now + cap_; }
  /// A process that has been up this long: once that reaches `stable`, the delay starts over.
  void up_for(Clock::duration uptime) noexcept {
    if (uptime >= stable_) delay_ = ms(0);
  }

  [[nodiscard]] ms delay() const noexcept { return delay_; }
  /// Whether restarts are backing off (one at a time until a process proves stable).
  [[nodiscard]] bool unstable() const noexcept { return delay_.count() > 0; }
  [[nodiscard]] Clock::time_point next() const noexcept { return next_; }
  [[nodiscard]] bool may_start(Clock::time_point now) const noexcept { return now >= next_; }
  [[nodiscard]] ms cap() const noexcept { return cap_; }
  [[nodiscard]] ms stable_after() const noexcept { return stable_; }

 private:
  ms initial_, cap_, stable_;
  ms delay_{0};
  Clock::time_point next_ = Clock::time_point::min();
};

}  // namespace crew::inline v0::detail
