// Priorities on a queue: with one thread, the order in which queued tasks run is the order the
// pool takes them, so RunOptions::priority is easy to watch.
//
// A gate task occupies the only thread (held by a std::latch, no sleeps) while tasks are queued
// behind it; then the gate opens and we print the order in which they ran.
//
// Part 1: low, normal and high priority tasks queued interleaved run high first, and in
// submission order within one priority (a higher RunOptions::priority value runs first).
//
// Part 2, the anti-starvation rule (documented on RunOptions::priority): every 8th task a thread
// takes from the shared queue is the oldest task waiting, whatever its priority. So a task with k
// older tasks ahead of it starts within 8 * (k + 1) tasks taken, and a steady stream of
// high-priority work cannot postpone a low-priority task forever. Here one low task is queued
// first, followed by 20 high ones: it has no older task ahead (k = 0), so it must run within the
// first 8 tasks taken rather than last. (Part 1 is consistent with the rule: only 10 tasks are
// taken there, and at the one that is an "oldest first" pick the oldest task left is also the one
// priority would choose.) The rule concerns the shared queue only: tasks submitted from inside a
// pool task go to that thread's own deque, newest first, and ignore priority.

#include <cstdio>
#include <latch>
#include <mutex>
#include <string>
#include <vector>

#include <crew/crew.hpp>

namespace {

constexpr int kLow = -1;
constexpr int kNormal = 0;
constexpr int kHigh = 1;

const char* level_name(int priority) {
  return priority == kHigh ? "high" : priority == kNormal ? "normal" : "low";
}

// Occupies the pool's only thread until the returned latch is released, so that everything
// submitted meanwhile waits in the queue.
class Gate {
 public:
  explicit Gate(crew::ThreadPool& pool)
      : done_(pool.run([this] {
          started_.count_down();
          open_.wait();
        })) {
    started_.wait();  // the gate is running, not queued: it cannot be reordered with the rest
  }
  void open() {
    open_.count_down();
    done_.get();
  }

 private:
  std::latch started_{1};
  std::latch open_{1};
  crew::Future<void> done_;
};

// Records the order in which tasks ran.
struct RunLog {
  std::mutex mutex;
  std::vector<std::string> labels;

  void add(const std::string& label) {
    const std::lock_guard lock(mutex);
    labels.push_back(label);
  }
  void print(const char* title) {
    std::printf("%s", title);
    for (const auto& label : labels) std::printf(" %s", label.c_str());
    std::printf("\n");
  }
};

bool priorities_run_highest_first(crew::ThreadPool& pool) {
  RunLog log;
  std::vector<crew::Future<void>> tasks;
  Gate gate(pool);

  const int submit_order[] = {kLow, kNormal, kHigh, kLow, kNormal, kHigh, kLow, kNormal, kHigh};
  int next_index[3] = {0, 0, 0};
  std::printf("part 1, queued behind the gate:");
  for (const int priority : submit_order) {
    const std::string label =
        std::string(level_name(priority)) + "-" + std::to_string(next_index[priority + 1]++);
    std::printf(" %s", label.c_str());
    tasks.push_back(
        pool.run(crew::RunOptions{.priority = priority}, [&log, label] { log.add(label); }));
  }
  std::printf("\n");

  gate.open();
  for (auto& t : tasks) t.get();
  log.print("part 1, ran in this order:     ");

  const std::vector<std::string> expected = {"high-0",   "high-1", "high-2", "normal-0", "normal-1",
                                             "normal-2", "low-0",  "low-1",  "low-2"};
  const bool ok = log.labels == expected;
  std::printf("part 1: %s\n",
              ok ? "OK, high first, FIFO within a priority" : "FAILED, unexpected order");
  return ok;
}

bool low_priority_is_not_starved(crew::ThreadPool& pool) {
  constexpr int kHighTasks = 20;
  RunLog log;
  std::vector<crew::Future<void>> tasks;
  Gate gate(pool);

  tasks.push_back(pool.run(crew::RunOptions{.priority = kLow}, [&log] { log.add("LOW"); }));
  for (int i = 0; i < kHighTasks; ++i) {
    std::string label = "h";
    label += std::to_string(i);
    tasks.push_back(
        pool.run(crew::RunOptions{.priority = kHigh}, [&log, label] { log.add(label); }));
  }
  std::printf("\npart 2, queued behind the gate: LOW, then h0..h%d at high priority\n",
              kHighTasks - 1);

  gate.open();
  for (auto& t : tasks) t.get();
  log.print("part 2, ran in this order:     ");

  std::size_t low_position = log.labels.size();
  for (std::size_t i = 0; i < log.labels.size(); ++i) {
    if (log.labels[i] == "LOW") low_position = i;
  }
  // Within the first 8 tasks taken after it was queued (positions 0..7), and not simply last.
  const bool ok = low_position < 8;
  std::printf("part 2: LOW ran at position %zu of %zu: %s\n", low_position + 1, log.labels.size(),
              ok ? "OK, the oldest-task pick kept it from starving"
                 : "FAILED, it waited longer than the rule allows");
  return ok;
}

}  // namespace

int main() {
  crew::ThreadPool pool({.min_workers = 1, .max_workers = 1, .name = "prio"});
  const bool part1 = priorities_run_highest_first(pool);
  const bool part2 = low_priority_is_not_starved(pool);
  const bool ok = part1 && part2;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
