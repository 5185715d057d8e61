#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include <dirent.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <malloc.h>
#include <unistd.h>

#include <crew/memory.hpp>

namespace crew::inline v0 {
namespace {

// LeakWatch: how consistent a rise of the floors must be (Kendall's S over pairs of spans). Tried
// on 500 synthetic runs each (random lows: 10 minutes of a steady load with 60 MB swings after a
// 100 MB warm-up; a 1 MB/s leak under 0-24 MB of noise): 0.7 raised 6 false alarms and let 35
// leaks show after 60 s, 0.8 raised 2 and missed 6 leaks; 0.75 sits between.
constexpr double kMinKendall = 0.75;

// /proc/<pid>/<file>, or /proc/self/<file> for pid 0.
void proc_path(char (&out)[64], int pid, const char* file) {
  if (pid == 0) {
    std::snprintf(out, sizeof out, "/proc/self/%s", file);
  } else {
    std::snprintf(out, sizeof out, "/proc/%d/%s", pid, file);
  }
}

// The value in kB of each "<key>: <n> kB" line of `file` whose key is asked for, in bytes.
// Threads is a count, not kB: taken as it is.
struct Field {
  const char* key;
  std::size_t* out;
  bool kilobytes = true;
};
template <std::size_t N>
void read_fields(int pid, const char* file, const Field (&fields)[N]) {
  char path[64];
  proc_path(path, pid, file);
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    for (const Field& field : fields) {
      const std::size_t n = std::strlen(field.key);
      if (std::strncmp(line, field.key, n) != 0 || line[n] != ':') continue;
      unsigned long long value = 0;
      if (std::sscanf(line + n + 1, "%llu", &value) == 1) {
        *field.out = static_cast<std::size_t>(field.kilobytes ? value * 1024 : value);
      }
    }
  }
  std::fclose(f);
}

std::size_t count_fds(int pid) {
  char path[64];
  proc_path(path, pid, "fd");
  DIR* d = ::opendir(path);
  if (d == nullptr) return 0;
  std::size_t n = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  // For this process, the directory stream's own descriptor is not one of the program's.
  return pid == 0 && n > 0 ? n - 1 : n;
}

// Which allocator serves malloc is known only at run time (jemalloc may be preloaded, a
// sanitizer replaces malloc), so each is looked up by its symbol; glibc is the fallback. dlsym
// rather than a link dependency: crew needs none of them.
using Mallctl = int (*)(const char*, void*, std::size_t*, void*, std::size_t);
using SanitizerFigure = std::size_t (*)();

bool from_jemalloc(MemoryUsage& m) {
  static const auto mallctl = reinterpret_cast<Mallctl>(::dlsym(RTLD_DEFAULT, "mallctl"));
  if (mallctl == nullptr) return false;
  // jemalloc's statistics are a snapshot refreshed by writing "epoch".
  std::uint64_t epoch = 1;
  std::size_t size = sizeof epoch;
  if (mallctl("epoch", &epoch, &size, &epoch, sizeof epoch) != 0) return false;
  std::size_t allocated = 0, resident = 0;
  size = sizeof allocated;
  if (mallctl("stats.allocated", &allocated, &size, nullptr, 0) != 0) return false;
  size = sizeof resident;
  if (mallctl("stats.resident", &resident, &size, nullptr, 0) != 0) return false;
  m.allocated = allocated;
  m.allocator_resident = resident;
  return true;
}

bool from_sanitizer(MemoryUsage& m) {
  static const auto allocated = reinterpret_cast<SanitizerFigure>(
      ::dlsym(RTLD_DEFAULT, "__sanitizer_get_current_allocated_bytes"));
  static const auto heap =
      reinterpret_cast<SanitizerFigure>(::dlsym(RTLD_DEFAULT, "__sanitizer_get_heap_size"));
  if (allocated == nullptr || heap == nullptr) return false;
  m.allocated = allocated();
  m.allocator_resident = heap();
  return true;
}

void from_glibc(MemoryUsage& m) {
  const struct mallinfo2 info = ::mallinfo2();
  m.allocated = info.uordblks + info.hblkhd;
  m.allocator_resident = info.arena + info.hblkhd;
}

MemoryUsage read_usage(int pid, MemoryUsageOptions options) noexcept {
  MemoryUsage m;
  read_fields(
      pid, "status",
      {Field{"VmRSS", &m.rss}, Field{"VmHWM", &m.peak_rss}, Field{"Threads", &m.threads, false}});
  // Both come from the kernel's per-CPU approximations of the same counter, which can put the
  // high-water mark a few pages below the current value.
  m.peak_rss = std::max(m.peak_rss, m.rss);
  if (options.pss) {
    std::size_t pss = 0;
    read_fields(pid, "smaps_rollup", {Field{"Pss", &pss}});
    if (pss != 0) m.pss = pss;
  }
  m.open_fds = count_fds(pid);
  return m;
}

}  // namespace

MemoryUsage memory_usage(MemoryUsageOptions options) noexcept {
  MemoryUsage m = read_usage(0, options);
  if (!from_jemalloc(m) && !from_sanitizer(m)) from_glibc(m);
  return m;
}

MemoryUsage memory_usage(int pid, MemoryUsageOptions options) noexcept {
  if (pid <= 0) return {};
  return read_usage(pid, options);
}

LeakWatch::LeakWatch(LeakWatchOptions options) : options_(options) {
  if (options_.window < std::chrono::seconds(1)) {
    throw std::invalid_argument(
        fmt::format("crew::LeakWatchOptions: window must be at least 1000 ms, got {} ms",
                    options_.window.count()));
  }
  if (options_.spans < 2 || options_.spans > 64) {
    throw std::invalid_argument(
        fmt::format("crew::LeakWatchOptions: spans must be in 2..64, got {}", options_.spans));
  }
}

bool LeakWatch::observe(Clock::time_point when, std::size_t bytes) {
  if (!samples_.empty() && when < samples_.back().first) when = samples_.back().first;
  samples_.emplace_back(when, bytes);
  // Kept: the window, and one sample older than it, so that "the window is covered" is known.
  while (samples_.size() > 2 && samples_[1].first <= when - options_.window) samples_.pop_front();
  suspected_ = false;
  rate_ = 0.0;
  const Clock::time_point start = when - options_.window;
  if (samples_.front().first > start) return false;  // not a whole window of samples yet
  const auto span = options_.window / options_.spans;
  const auto n = static_cast<std::size_t>(options_.spans);
  // Each span's floor (least sample) and swing (greatest less least).
  std::vector<std::size_t> floors(n, std::numeric_limits<std::size_t>::max()), peaks(n, 0);
  for (const auto& [t, b] : samples_) {
    if (t < start) continue;
    const auto i = std::min(static_cast<std::size_t>((t - start) / span), n - 1);
    floors[i] = std::min(floors[i], b);
    peaks[i] = std::max(peaks[i], b);
  }
  std::vector<std::size_t> swings(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (floors[i] == std::numeric_limits<std::size_t>::max()) return false;  // a gap: unknown
    swings[i] = peaks[i] - floors[i];
  }
  // (a) A consistent rise, not a jump: Kendall's S over the floors, the share of pairs of spans
  // whose later floor is higher less the share whose later floor is lower. Random lows of a
  // steady load come out near 0, a leak under noisy work near 1.
  long long s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = i + 1; j < n; ++j) s += (floors[j] > floors[i]) - (floors[j] < floors[i]);
  }
  if (static_cast<double>(s) < kMinKendall * static_cast<double>(n * (n - 1) / 2)) return false;
  // (b) Enough of it: min_growth, and twice what the load itself swings within a span, so that
  // the lows of a load with large swings do not rise by chance.
  std::nth_element(swings.begin(), swings.begin() + static_cast<long>(n / 2), swings.end());
  const std::size_t swing = swings[n / 2];
  if (floors.back() < floors.front() + std::max(options_.min_growth, 2 * swing)) return false;
  const std::size_t growth = floors.back() - floors.front();
  // (c) Over the whole window, not only its first half: a warm-up that ended inside the window
  // rose consistently too, and then stopped. Each half rises by a quarter of the growth, and by
  // more than the load's swing.
  const std::size_t mid = floors[n / 2];
  const std::size_t half = std::max(growth / 4, swing);
  if (mid < floors.front() + half || floors.back() < mid + half) return false;
  suspected_ = true;
  // The first and last floors are a window less a span apart, on average.
  rate_ =
      static_cast<double>(growth) / std::chrono::duration<double>(options_.window - span).count();
  return true;
}

std::size_t resident_memory_bytes(int pid) noexcept {
  char path[64];
  proc_path(path, pid, "statm");
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace crew::inline v0
