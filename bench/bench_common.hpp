// Helpers shared by the comparison benchmarks (crew_compare, crew_messaging): result checks,
// timing, medians, the command line options they have in common, the machine header and the
// result table. Each benchmark is one translation unit, so the state below (whether all results
// were right, whether to show progress) is per program.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

namespace crew_bench {

using Clock = std::chrono::steady_clock;

/// Exit status for a command line the program does not accept.
inline constexpr int kUsageError = 64;

/// False once a check() has failed.
inline bool g_results_ok = true;
/// Whether progress() writes to stderr; see enable_progress_on_tty().
inline bool g_progress = false;

/// Records a wrong result (reported on stderr; the program then exits 1).
inline void check(bool ok, const std::string& what) {
  if (ok) return;
  g_results_ok = false;
  std::cerr << "WRONG RESULT: " << what << '\n';
}

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2.0;
}

/// Shows progress on stderr only when stderr is a terminal.
inline void enable_progress_on_tty() {
  g_progress = isatty(STDERR_FILENO) != 0;
}

/// Overwrites the progress line on stderr; progress("") clears it.
inline void progress(const std::string& what) {
  if (g_progress) std::cerr << "\r\033[K" << what << std::flush;
}

inline std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

inline std::string verdict(bool met) {
  return met ? "met" : "NOT met";
}

/// Runs every system once per repetition, interleaved (rep 1 of all systems, then rep 2, ...), so
/// slow drift of the machine affects all systems alike. Returns, per system, its result of each
/// rep.
template <class T>
std::vector<std::vector<T>> interleave(const std::string& name, int reps,
                                       const std::vector<std::function<T()>>& systems) {
  std::vector<std::vector<T>> samples(systems.size());
  for (int r = 0; r < reps; ++r) {
    for (std::size_t s = 0; s < systems.size(); ++s) {
      progress(name + ": rep " + std::to_string(r + 1) + "/" + std::to_string(reps) + ", system " +
               std::to_string(s + 1) + "/" + std::to_string(systems.size()));
      samples[s].push_back(systems[s]());
    }
  }
  progress("");
  return samples;
}

// ---------------------------------------------------------------------------------------------
// Command line

/// What the shared options and messages need to know about the program.
struct Program {
  std::string_view name;          // "crew_compare"
  std::string_view version;       // "0.1"
  int workloads = 0;              // --only accepts 1..workloads
  std::string_view only_example;  // "1,3", shown when --only has no list
  void (*print_help)() = nullptr;
};

/// The options every benchmark has.
struct CommonOptions {
  bool quick = false;
  std::optional<int> reps;  // --reps, when given
  std::set<int> only;       // empty: all workloads
};

/// A program's own option: `handled`, `unknown` (not its option) or `usage_error` (the handler
/// has printed the message).
enum class OptionResult { handled, unknown, usage_error };

/// Gives an option its value: the next argument, or nothing at the end of the command line.
using NextValue = std::function<std::optional<std::string_view>()>;

inline std::optional<int> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 9) return std::nullopt;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

/// Parses --help/-h, --version, --quick, --reps N and --only LIST; any other argument goes to
/// `own(arg, next_value)` first. Returns the exit status to use when parsing ends the program
/// (help, version, usage error).
template <class OwnOption>
std::optional<int> parse_options(const Program& program, int argc, char** argv,
                                 CommonOptions& options, OwnOption&& own) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const NextValue value = [&]() -> std::optional<std::string_view> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string_view(argv[++i]);
    };
    if (arg == "--help" || arg == "-h") {
      program.print_help();
      return 0;
    } else if (arg == "--version") {
      std::cout << program.name << ' ' << program.version << '\n';
      return 0;
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--reps") {
      const auto v = value();
      options.reps = v ? parse_int(*v) : std::nullopt;
      if (!options.reps || *options.reps < 1 || *options.reps > 1000) {
        std::cerr << program.name << ": --reps needs a number from 1 to 1000\n";
        return kUsageError;
      }
    } else if (arg == "--only") {
      const auto v = value();
      if (!v) {
        std::cerr << program.name << ": --only needs a list such as " << program.only_example
                  << '\n';
        return kUsageError;
      }
      std::stringstream list{std::string(*v)};
      std::string item;
      while (std::getline(list, item, ',')) {
        const auto w = parse_int(item);
        if (!w || *w < 1 || *w > program.workloads) {
          std::cerr << program.name << ": --only: '" << item << "' is not a workload 1.."
                    << program.workloads << '\n';
          return kUsageError;
        }
        options.only.insert(*w);
      }
    } else {
      const OptionResult result = own(arg, value);
      if (result == OptionResult::usage_error) return kUsageError;
      if (result == OptionResult::unknown) {
        std::cerr << program.name << ": unknown option '" << arg << "' (see --help)\n";
        return kUsageError;
      }
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Output

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

/// The 1-minute load average; other work on the machine skews every figure.
inline double load_average() {
  std::ifstream in("/proc/loadavg");
  double one = -1;
  in >> one;
  return one;
}

/// The "machine:" header line, and a warning when the machine is busy.
inline void print_machine(bool show_online_cpus) {
  std::cout << "machine: nproc " << std::thread::hardware_concurrency();
  if (show_online_cpus) std::cout << ", online CPUs " << sysconf(_SC_NPROCESSORS_ONLN);
  const double load = load_average();
  std::cout << ", CPU " << cpu_model() << ", load average " << fixed(load, 2) << '\n';
  if (load > 0.5) {
    std::cout << "WARNING: the machine is busy (load average above 0.5); figures will be noisy\n";
  }
}

/// A warning line when the program was built without NDEBUG.
inline void print_build_warning() {
#ifndef NDEBUG
  std::cout << "WARNING: built without NDEBUG (not a Release build); figures are not meaningful\n";
#endif
}

/// Prints the result table with aligned columns; a workload's name is shown on its first row
/// only. `Row` needs the string members workload, system, value, ratio, target and verdict.
template <class Row>
void print_table(const std::vector<Row>& rows) {
  const std::vector<std::string> head = {"workload",    "system", "median",
                                         "crew/anchor", "target", "result"};
  auto cells = [](const Row& r) {
    return std::vector<std::string>{r.workload, r.system, r.value, r.ratio, r.target, r.verdict};
  };
  std::vector<std::size_t> width(head.size());
  for (std::size_t i = 0; i < head.size(); ++i) width[i] = head[i].size();
  for (const auto& r : rows) {
    const auto c = cells(r);
    for (std::size_t i = 0; i < c.size(); ++i) width[i] = std::max(width[i], c[i].size());
  }
  auto line = [&](const std::vector<std::string>& c) {
    std::string out;
    for (std::size_t i = 0; i < c.size(); ++i) {
      out += c[i];
      if (i + 1 < c.size()) out += std::string(width[i] - c[i].size() + 2, ' ');
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    std::cout << out << '\n';
  };
  line(head);
  std::size_t total = 0;
  for (auto w : width) total += w + 2;
  std::cout << std::string(total - 2, '-') << '\n';
  std::string last;
  for (const auto& r : rows) {
    auto c = cells(r);
    if (c[0] == last) {
      c[0].clear();
    } else {
      last = c[0];
    }
    line(c);
  }
}

/// The closing line: wall time since `t0` and whether every result was right.
inline void print_summary(Clock::time_point t0) {
  std::cout << "\nwall time " << fixed(seconds_since(t0), 1) << " s; results "
            << (g_results_ok ? "all correct" : "WRONG (see stderr)") << '\n';
}

}  // namespace crew_bench
