// The memory a process uses, as the kernel and its allocator see it: what a dashboard shows, a
// leak watch follows and a memory cap enforces. Linux (/proc).
//
//     crew::MemoryUsage m = crew::memory_usage({.pss = true});
//     fmt::print("rss {} pss {} heap {}\n", m.rss, m.pss.value_or(0), m.allocated.value_or(0));
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <optional>
#include <utility>

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

/// What counts as a leak for a LeakWatch.
struct LeakWatchOptions {
  /// How far back the watch looks; a leak shows about this long after it began. At least 1 s.
  std::chrono::milliseconds window{30'000};
  /// The window is cut into this many spans, 2..64; each span's floor is its least sample. More
  /// spans make a chance rise of the floors (random lows of a steady load) rarer.
  int spans = 10;
  /// How much the floor must have risen across the window, in bytes.
  std::size_t min_growth = std::size_t{16} << 20;
};

/// Watches one process's memory for a leak, from samples of its resident memory (one a second
/// suits the defaults). Memory under a steady load rises and falls with the work, and after its
/// warm-up its lows stay put; leaked memory is never given back, so the lows rise with it. The
/// watch takes the floor (the least sample) of each span of the window and suspects a leak while
/// the floors rise consistently (Kendall's S of at least 0.75 over the pairs of spans), the last is
/// `min_growth` and twice the load's own swing above the first, and both halves of the window rise
/// (a warm-up that ended inside it does not). A 1 MB/s leak shows within `window` plus a span (33 s
/// by default).
///
/// Not thread-safe: one sampling thread calls observe().
class LeakWatch {
 public:
  using Clock = std::chrono::steady_clock;

  /// Throws std::invalid_argument naming a bad option.
  explicit LeakWatch(LeakWatchOptions options = {});

  /// Adds a sample taken at `when` (not before the previous one); returns suspected().
  bool observe(Clock::time_point when, std::size_t bytes);
  /// Whether the last sample left a leak suspected.
  [[nodiscard]] bool suspected() const noexcept { return suspected_; }
  /// While suspected: how fast the floor rose across the window, in bytes per second; else 0.
  [[nodiscard]] double bytes_per_second() const noexcept { return rate_; }

 private:
  LeakWatchOptions options_;
  std::deque<std::pair<Clock::time_point, std::size_t>> samples_;  // the window's, oldest first
  bool suspected_ = false;
  double rate_ = 0.0;
};

}  // namespace crew::inline v0
