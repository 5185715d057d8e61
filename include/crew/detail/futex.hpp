// Thin wrappers over the Linux futex syscall: a timed wait (which std::atomic lacks) and a wake.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace crew::inline v0::detail {

/// Blocks while `*word == expected`, until woken or `timeout` passes (negative: no timeout).
/// Returns false on timeout. Spurious returns are possible; callers re-check their condition.
/// `shared` selects a futex visible across processes (memory mapped into several of them).
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout = std::chrono::nanoseconds(-1),
                bool shared = false) noexcept;

/// Wakes up to `count` waiters blocked on `word`; returns how many were woken.
int futex_wake(std::atomic<std::uint32_t>& word, int count, bool shared = false) noexcept;

/// A hint to the CPU that we are spinning (pause on x86, yield on ARM).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace crew::inline v0::detail
