// Watching processes from the outside, for the process-layer tests: there is no event to wait
// on, so tests poll a condition (the assertion is on the condition, never on the sleep). And the
// environment those tests give their worker processes.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace crew_test {

/// Polls `pred` every millisecond until it holds (true) or `limit` passes (false). What the
/// tests wait for takes milliseconds; the default limit leaves room for a sanitizer build on a
/// loaded 2-core machine (5-20x slower, and descheduled for whole time slices).
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

/// The pids whose parent is `parent`, read from /proc (zombies included).
inline std::vector<int> children_of(int parent) {
  std::vector<int> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    char state;
    int ppid;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) {
      out.push_back(std::stoi(name));
    }
  }
  return out;
}

/// The environment of a test's worker processes: they should die of the signal a task raises,
/// not of a sanitizer report about it.
inline std::map<std::string, std::string> worker_env() {
  auto get = [](const char* k) {
    const char* v = std::getenv(k);
    return std::string(v != nullptr ? v : "");
  };
  return {{"ASAN_OPTIONS", get("ASAN_OPTIONS") + ":handle_segv=0:handle_abort=0:detect_leaks=0"},
          {"TSAN_OPTIONS", get("TSAN_OPTIONS") + ":handle_segv=0:handle_abort=0"},
          {"UBSAN_OPTIONS", get("UBSAN_OPTIONS")}};
}

}  // namespace crew_test
