#include "runner.hpp"

#include <utility>

#include <sys/resource.h>
#include <unistd.h>

namespace crew::serve_app {
namespace {

// Each task thread takes the task priority (`--task-nice`) the first time it runs a task: pool
// threads start lazily, from whichever thread submitted first.
void set_task_priority_once(int nice) {
  thread_local bool done = false;
  if (done) return;
  done = true;
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice);
}

class ThreadRunner final : public Runner {
 public:
  ThreadRunner(const Tasks& tasks, std::size_t threads, std::size_t max_queue, int task_nice)
      : tasks_(tasks),
        task_nice_(task_nice),
        pool_(PoolOptions{.max_threads = threads == 0 ? default_thread_count() : threads,
                          .max_queue = max_queue,
                          .name = "crew-task"}) {}

  Future<PackedValue> run(std::string_view task, std::string args, RunOptions options) override {
    return pool_.run(std::move(options), [this, name = std::string(task),
                                          args = std::move(args)](std::stop_token stop) {
      set_task_priority_once(task_nice_);
      const this_task::StopScope scope(std::move(stop));  // the built-in tasks check it
      return tasks_.invoke_packed(name, args);
    });
  }
  const Tasks& tasks() const noexcept override { return tasks_; }
  RunnerStats stats() const override {
    const PoolStats s = pool_.stats();
    return RunnerStats{.workers = s.threads,
                       .busy = s.busy,
                       .idle = s.idle,
                       .queued = s.queued,
                       .completed = s.completed,
                       .failed = s.failed,
                       .cancelled = s.cancelled,
                       .utilization = s.utilization,
                       .wait_time = s.wait_time,
                       .run_time = s.run_time};
  }
  const char* isolation() const noexcept override { return "thread"; }
  void close() override {
    pool_.close();
    pool_.wait_idle();
  }
  void terminate() override { pool_.terminate(); }

 private:
  const Tasks& tasks_;
  const int task_nice_;
  mutable ThreadPool pool_;
};

class ProcessRunner final : public Runner {
 public:
  explicit ProcessRunner(const Tasks& tasks, ProcessPoolOptions options)
      : tasks_(tasks), pool_(std::move(options)) {}

  Future<PackedValue> run(std::string_view task, std::string args, RunOptions options) override {
    return pool_.run_packed(std::move(options), task, std::move(args));
  }
  const Tasks& tasks() const noexcept override { return tasks_; }
  RunnerStats stats() const override {
    const ProcessPoolStats s = pool_.stats();
    return RunnerStats{.workers = s.workers,
                       .busy = s.busy,
                       .idle = s.idle,
                       .queued = s.queued,
                       .completed = s.completed,
                       .failed = s.failed,
                       .cancelled = s.cancelled,
                       .timed_out = s.timed_out,
                       .crashed = s.crashed,
                       .utilization = s.utilization,
                       .wait_time = s.wait_time,
                       .run_time = s.run_time};
  }
  const char* isolation() const noexcept override { return "process"; }
  void close() override {
    pool_.close();
    pool_.wait_closed();
  }
  void terminate() override {
    pool_.terminate();
    pool_.wait_closed();
  }

 private:
  const Tasks& tasks_;
  ProcessPool pool_;
};

}  // namespace

std::unique_ptr<Runner> make_thread_runner(const Tasks& tasks, std::size_t threads,
                                           std::size_t max_queue, int task_nice) {
  return std::make_unique<ThreadRunner>(tasks, threads, max_queue, task_nice);
}

std::unique_ptr<Runner> make_process_runner(const Tasks& tasks, ProcessPoolOptions options) {
  options.tasks = &tasks;
  return std::make_unique<ProcessRunner>(tasks, std::move(options));
}

}  // namespace crew::serve_app
