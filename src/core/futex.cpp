#include <cerrno>
#include <climits>
#include <ctime>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <crew/detail/futex.hpp>

namespace crew::inline v0::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t),
              "futex needs a plain 32-bit word");

bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout, bool shared) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout.count() >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    tsp = &ts;
  }
  const int op = shared ? FUTEX_WAIT : (FUTEX_WAIT | FUTEX_PRIVATE_FLAG);
  // The kernel compares *word with expected atomically with queueing us, so a wake that happens
  // after the caller's last check cannot be lost.
  const long rc =
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, expected, tsp, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

int futex_wake(std::atomic<std::uint32_t>& word, int count, bool shared) noexcept {
  const int op = shared ? FUTEX_WAKE : (FUTEX_WAKE | FUTEX_PRIVATE_FLAG);
  const long rc =
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, count, nullptr, nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

}  // namespace crew::inline v0::detail
