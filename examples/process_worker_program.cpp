// A worker program of its own: it registers tasks and serves them for a ProcessPool in another
// program (see process_external_worker.cpp, which starts it with `.executable`). Run by hand, it
// says what it is and exits.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <crew/process.hpp>

int main() {
  crew::Tasks tasks;
  tasks.add("reverse", [](std::string s) {
    std::reverse(s.begin(), s.end());
    return s;
  });
  tasks.add("sort", [](std::vector<int> v) {
    std::sort(v.begin(), v.end());
    return v;
  });
  if (crew::is_worker_process()) return crew::worker_main(tasks);
  std::printf("this is a crew worker program serving:");
  for (const auto& n : tasks.names()) std::printf(" %s", tasks.signature(n).c_str());
  std::printf("\nstart it from a ProcessPool with .executable = <this file>\n");
  return 0;
}
