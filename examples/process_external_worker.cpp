// A ProcessPool whose workers run another program (`.executable`): example_process_worker_program,
// built next to this one. The host needs no Tasks of its own; an unknown task name comes back as
// crew::BadArguments listing what the worker program offers.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <crew/process.hpp>

int main() {
  const auto worker = std::filesystem::read_symlink("/proc/self/exe").parent_path() /
                      "example_process_worker_program";
  crew::ProcessPool pool({.max_workers = 2, .name = "plugin", .executable = worker.string()});

  const std::string reversed = pool.run<std::string>("reverse", std::string("stressed")).get();
  const auto sorted = pool.run<std::vector<int>>("sort", std::vector<int>{5, 3, 9, 1}).get();
  std::printf("reverse(\"stressed\") = \"%s\"\n", reversed.c_str());
  std::printf("sort({5, 3, 9, 1}) = {%d, %d, %d, %d}\n", sorted[0], sorted[1], sorted[2],
              sorted[3]);
  bool listed = false;
  try {
    pool.run<int>("fly").get();
  } catch (const crew::BadArguments& e) {
    std::printf("unknown task: %s\n", e.what());
    listed = std::string(e.what()).find("reverse") != std::string::npos;
  }
  return reversed == "desserts" && sorted == std::vector<int>{1, 3, 5, 9} && listed ? 0 : 1;
}
