#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <crew/atomics.hpp>

namespace crew::inline v0::atomics::detail {

void throw_index(const char* op, std::size_t index, std::size_t bytes, std::size_t element) {
  throw std::out_of_range(fmt::format(
      "crew::atomics::{}: index {} is out of range for a SharedBuffer of {} bytes ({} elements of "
      "{} bytes); indexes count elements of the operation's type",
      op, index, bytes, bytes / element, element));
}

WaitResult wait_word(const void* word, std::uint32_t expected, std::chrono::nanoseconds timeout,
                     bool shared) {
  // A process-shared block needs a shared futex (keyed by the page, not by this address space).
  const int op = shared ? FUTEX_WAIT : (FUTEX_WAIT | FUTEX_PRIVATE_FLAG);
  const bool forever = timeout.count() < 0;
  const auto deadline =
      std::chrono::steady_clock::now() + (forever ? std::chrono::nanoseconds(0) : timeout);
  while (true) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (!forever) {
      // With no time left the call still compares (EAGAIN) before it times out at once.
      const auto left = std::max(deadline - std::chrono::steady_clock::now(),
                                 std::chrono::steady_clock::duration::zero());
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      tsp = &ts;
    }
    // The kernel checks *word == expected atomically with queueing us: a notify() after our
    // caller's store cannot slip between the check and the sleep.
    const long rc = ::syscall(SYS_futex, word, op, expected, tsp, nullptr, 0);
    if (rc == 0) return WaitResult::ok;
    if (errno == EAGAIN) return WaitResult::not_equal;
    if (errno == ETIMEDOUT) return WaitResult::timed_out;
    if (errno != EINTR) {
      throw std::system_error(errno, std::generic_category(), "crew::atomics::wait: futex failed");
    }
  }
}

std::size_t notify_word(const void* word, std::size_t count, bool shared) {
  const int op = shared ? FUTEX_WAKE : (FUTEX_WAKE | FUTEX_PRIVATE_FLAG);
  const int n = count > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(count);
  const long rc = ::syscall(SYS_futex, word, op, n, nullptr, nullptr, 0);
  return rc < 0 ? 0 : static_cast<std::size_t>(rc);
}

}  // namespace crew::inline v0::atomics::detail
