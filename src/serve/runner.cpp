#include "runner.hpp"

#include <chrono>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

namespace crew::serve_app {
namespace {

using Clock = std::chrono::steady_clock;

// Each task thread takes the task priority (`--task-nice`) the first time it runs a task: pool
// threads start lazily, from whichever thread submitted first.
void set_task_priority_once(int nice) {
  thread_local bool done = false;
  if (done) return;
  done = true;
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice);
}

// Tasks that run here, in this process or its workers: a request waits for its task, and there
// is no job to come back to.
class LocalRunner : public Runner {
 public:
  Future<Submitted> submit(std::string_view /*task*/, std::string /*args*/, RunOptions /*options*/,
                           std::string /*job_id*/) override {
    throw BadArguments(
        "?wait=false needs a queue backend: start crew serve with --backend redis://HOST:PORT; "
        "this one runs tasks locally and answers when they finish");
  }
  Future<redis::JobStatus> status(std::string /*job_id*/) override {
    throw BadArguments(
        "/v1/jobs needs a queue backend: start crew serve with --backend redis://HOST:PORT; this "
        "one runs tasks locally and keeps no jobs");
  }
};

class ThreadRunner final : public LocalRunner {
 public:
  ThreadRunner(const Tasks& tasks, const ThreadRunnerOptions& o)
      : tasks_(tasks),
        task_nice_(o.task_nice),
        workers_(o.workers == 0 ? default_thread_count() : o.workers),
        stuck_limit_(o.max_stuck_replacements.value_or(workers_)),
        pool_(PoolOptions{.max_workers = workers_,
                          .max_queue = o.max_queue,
                          .max_stuck_replacements = stuck_limit_,
                          .name = "crew-task"}) {}

  Future<PackedValue> run(std::string_view task, std::string args, RunOptions options,
                          std::string /*job_id*/) override {
    const auto timeout = std::chrono::duration_cast<Clock::duration>(options.timeout);
    return pool_.run(std::move(options), [this, name = std::string(task), args = std::move(args),
                                          timeout](std::stop_token stop) {
      set_task_priority_once(task_nice_);
      const Watched watched(*this, name, timeout);
      const this_task::StopScope scope(std::move(stop));  // the built-in tasks check it
      return tasks_.invoke_packed(name, args);
    });
  }
  const Tasks& tasks() const noexcept override { return tasks_; }
  RunnerStats stats() const override {
    RunnerStats out = runner_stats(pool_.stats());
    out.stuck_limit = stuck_limit();
    const auto now = Clock::now();
    std::lock_guard lock(watch_mutex_);
    for (const auto& [id, w] : watched_) {
      if (now > w.deadline + kStuckGrace) ++out.stuck_tasks[*w.name];
    }
    return out;
  }
  const char* isolation() const noexcept override { return "thread"; }
  std::string unready_reason() const override {
    const std::size_t stuck = pool_.stats().stuck;
    if (stuck == 0 || stuck < stuck_limit()) return {};
    return fmt::format(
        "{} task{} ignore their stop request past their timeout and every replacement thread "
        "(--max-stuck-threads {}) is in use",
        stuck, stuck == 1 ? "" : "s", stuck_limit());
  }
  void report_stuck() override {
    const auto now = Clock::now();
    std::vector<std::pair<std::string, Clock::duration>> fresh;
    std::size_t stuck = 0;
    {
      std::lock_guard lock(watch_mutex_);
      for (auto& [id, w] : watched_) {
        if (now <= w.deadline + kStuckGrace) continue;
        ++stuck;
        if (!w.reported) {
          w.reported = true;
          fresh.emplace_back(*w.name, w.timeout);
        }
      }
    }
    for (const auto& [name, timeout] : fresh) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
      const std::size_t limit = stuck_limit();
      const std::string what = fmt::format(
          "crew serve: task '{}' is still running past its {} ms timeout and ignores its stop "
          "request",
          name, ms);
      constexpr const char* kAdvice =
          "/readyz answers 503 until a stuck task returns. Make the task check "
          "crew::this_task::stop_requested(), or use --isolation process, whose tasks are killed";
      if (stuck < limit) {
        spdlog::warn("{}; its thread is replaced ({} of --max-stuck-threads {} in use)", what,
                     stuck, limit);
      } else if (stuck == limit) {
        spdlog::error("{}; its thread is replaced by the last of --max-stuck-threads {}: {}", what,
                      limit, kAdvice);
      } else {
        spdlog::error("{}; no replacement thread is left (--max-stuck-threads {}): {}", what, limit,
                      kAdvice);
      }
    }
  }
  void close() override {
    pool_.close();
    pool_.wait_idle();
  }
  void terminate() override { pool_.terminate(); }

 private:
  // A running timed task, for the stuck ones' names: its name lives in the task's closure, which
  // outlives the entry.
  struct Watch {
    const std::string* name;
    Clock::time_point deadline;
    Clock::duration timeout;
    bool reported = false;
  };
  class Watched {
   public:
    Watched(ThreadRunner& runner, const std::string& name, Clock::duration timeout)
        : runner_(timeout.count() > 0 ? &runner : nullptr) {
      if (runner_ == nullptr) return;
      std::lock_guard lock(runner_->watch_mutex_);
      id_ = ++runner_->next_watch_;
      runner_->watched_.emplace(id_, Watch{&name, Clock::now() + timeout, timeout});
    }
    ~Watched() {
      if (runner_ == nullptr) return;
      bool reported = false;
      const std::string* name = nullptr;
      {
        std::lock_guard lock(runner_->watch_mutex_);
        auto it = runner_->watched_.find(id_);
        reported = it->second.reported;
        name = it->second.name;
        runner_->watched_.erase(it);
      }
      if (reported) spdlog::info("crew serve: stuck task '{}' returned; its thread is back", *name);
    }
    Watched(const Watched&) = delete;
    Watched& operator=(const Watched&) = delete;

   private:
    ThreadRunner* runner_;
    std::uint64_t id_ = 0;
  };

  std::size_t stuck_limit() const noexcept { return stuck_limit_; }

  const Tasks& tasks_;
  const int task_nice_;
  const std::size_t workers_;
  const std::size_t stuck_limit_;
  mutable ThreadPool pool_;
  mutable std::mutex watch_mutex_;
  std::unordered_map<std::uint64_t, Watch> watched_;
  std::uint64_t next_watch_ = 0;
};

class ProcessRunner final : public LocalRunner {
 public:
  explicit ProcessRunner(const Tasks& tasks, ProcessPoolOptions options)
      : tasks_(tasks), pool_(std::move(options)) {}

  Future<PackedValue> run(std::string_view task, std::string args, RunOptions options,
                          std::string /*job_id*/) override {
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
                       .run_time = s.run_time,
                       .stuck_tasks = {},
                       .processes = s.per_worker,
                       .leaks_suspected = s.leaks_suspected};
  }
  const char* isolation() const noexcept override { return "process"; }
  void restart_worker(std::string_view name) override {
    if (pool_.restart_worker(name)) return;
    std::string known;
    for (const auto& w : pool_.stats().per_worker) known += (known.empty() ? "" : ", ") + w.name;
    throw std::invalid_argument(
        fmt::format("no worker process '{}'; there are: {}", name, known.empty() ? "none" : known));
  }
  void close() override {
    pool_.close();
    pool_.wait_closed();
  }
  void terminate() override {
    pool_.terminate();
    pool_.wait_closed();
  }
  std::string heap_profile(std::string_view worker) override {
    if (!pool_.options().heap_profiling) return Runner::heap_profile(worker);
    return pool_.heap_profile(worker);
  }

 private:
  const Tasks& tasks_;
  ProcessPool pool_;
};

}  // namespace

std::string Runner::heap_profile(std::string_view worker) {
  const bool process = std::string_view(isolation()) == "process";
  throw Error(
      fmt::format("cannot write a heap profile of '{}': only task worker processes of crew serve "
                  "--isolation process --heap-profiling write them (this server: {} isolation{})",
                  worker, isolation(), process ? ", without --heap-profiling" : ""));
}

RunnerStats runner_stats(const PoolStats& s) {
  return RunnerStats{.workers = s.workers,
                     .busy = s.busy,
                     .idle = s.idle,
                     .queued = s.queued,
                     .completed = s.completed,
                     .failed = s.failed,
                     .cancelled = s.cancelled,
                     .timed_out = s.timed_out,
                     .utilization = s.utilization,
                     .wait_time = s.wait_time,
                     .run_time = s.run_time,
                     .stuck = s.stuck,
                     .stuck_total = s.stuck_total,
                     .stuck_tasks = {},
                     .processes = {},
                     .leaks_suspected = 0};
}

std::unique_ptr<Runner> make_thread_runner(const Tasks& tasks, ThreadRunnerOptions options) {
  return std::make_unique<ThreadRunner>(tasks, options);
}

std::unique_ptr<Runner> make_process_runner(const Tasks& tasks, ProcessPoolOptions options) {
  options.tasks = &tasks;
  return std::make_unique<ProcessRunner>(tasks, std::move(options));
}

}  // namespace crew::serve_app
