// An example `crew serve` plugin: a shared library with one registration function.
//
//   crew serve --plugin ./libcrew_example_plugin.so --isolation process
//   curl -d '{"args": ["to be or not to be"]}' localhost:8080/v1/tasks/word_count
//
// `legacy_checksum` stands for code you do not trust (a C library, say): on empty input it
// crashes. Under --isolation process that costs one request a 500 WorkerCrashed; the service
// and every other request carry on. `legacy_spin_ms` stands for code that never looks at its stop
// token (crew::this_task::stop_requested()): under thread isolation it keeps its thread past its
// timeout and through a shutdown deadline; under process isolation its worker is killed.
// `legacy_wait_for_file` is the same kind of task, but it returns when a file appears (looking
// every millisecond), so that a test decides when, however busy the machine.
#include <chrono>
#include <csignal>
#include <cstdint>
#include <sstream>
#include <string>
#include <thread>

#include <sys/stat.h>

#include <crew/process/tasks.hpp>

namespace {

long word_count(const std::string& text) {
  std::istringstream in(text);
  long n = 0;
  for (std::string word; in >> word;) ++n;
  return n;
}

std::uint32_t legacy_checksum(const std::string& data) {
  if (data.empty()) std::raise(SIGSEGV);  // the bug the process boundary contains
  std::uint32_t sum = 2166136261U;        // FNV-1a
  for (unsigned char c : data) sum = (sum ^ c) * 16777619U;
  return sum;
}

long legacy_spin_ms(long ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  long spins = 0;
  while (std::chrono::steady_clock::now() < until) ++spins;
  return spins;
}

long legacy_wait_for_file(const std::string& path) {
  long looks = 0;
  for (struct stat st{}; ::stat(path.c_str(), &st) != 0; ++looks) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return looks;
}

}  // namespace

extern "C" void crew_register_tasks(crew::Tasks& tasks) {
  tasks.add("word_count", word_count);
  tasks.add("legacy_checksum", legacy_checksum);
  tasks.add("legacy_spin_ms", legacy_spin_ms);
  tasks.add("legacy_wait_for_file", legacy_wait_for_file);
}
