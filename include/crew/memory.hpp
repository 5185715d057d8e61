// The memory a process uses, as the kernel and its allocator see it: what a dashboard shows, a
// leak watch follows and a memory cap enforces. Linux (/proc).
//
//     crew::MemoryUsage m = crew::memory_usage({.pss = true});
//     fmt::print("rss {} pss {} heap {}\n", m.rss, m.pss.value_or(0), m.allocated.value_or(0));
#pragma once

#include <cstddef>
#include <optional>

namespace crew::inline v0 {

/// What memory_usage() reads beyond its cheap figures.
struct MemoryUsageOptions {
  /// Also the proportional set size: each shared page divided among the processes mapping it.
  /// Forked workers share their parent's pages, which the RSS of each counts in full, so only
  /// their PSS adds up to what they cost together. The kernel walks every mapping to sum it
  /// (/proc/<pid>/smaps_rollup): milliseconds for a large process, so it is asked for.
  bool pss = false;
};

/// A snapshot of one process's memory. A figure that could not be read is 0 (or empty).
struct MemoryUsage {
  std::size_t rss = 0;             ///< resident set size, bytes
  std::size_t peak_rss = 0;        ///< the highest RSS since the process started (VmHWM), bytes
  std::optional<std::size_t> pss;  ///< with MemoryUsageOptions::pss, bytes
  /// This process only: bytes its allocator handed out and has not had back, and bytes the
  /// allocator holds from the system for them. From jemalloc (`stats.allocated`,
  /// `stats.resident`) when it is the allocator, from a sanitizer's allocator under ASan or TSan,
  /// else from glibc (`mallinfo2`: in use; arenas plus mmapped blocks).
  std::optional<std::size_t> allocated, allocator_resident;
  std::size_t open_fds = 0;  ///< open file descriptors
  std::size_t threads = 0;   ///< threads of the process
};

/// This process's memory. Never throws.
[[nodiscard]] MemoryUsage memory_usage(MemoryUsageOptions options = {}) noexcept;

/// Another process's memory, as far as /proc lets this user read it (the allocator figures stay
/// empty: they live inside that process). A pid that does not exist, or one ≤ 0, gives all zeros.
[[nodiscard]] MemoryUsage memory_usage(int pid, MemoryUsageOptions options = {}) noexcept;

/// Resident memory of a process in bytes (0: this one): one small read, for frequent checks such
/// as a memory cap's. 0 when it cannot be read.
[[nodiscard]] std::size_t resident_memory_bytes(int pid = 0) noexcept;

}  // namespace crew::inline v0
