// Watching processes from the outside, for the process-layer tests: there is no event to wait
// on, so tests poll a condition (the assertion is on the condition, never on the sleep).
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

}  // namespace crew_test
