// `crew serve --backend redis://…`: tasks become jobs of a crew::redis::Queue that `crew worker`s
// run. Every call to Redis blocks for a round trip (for a command timeout when Redis stalls), so
// none is made on an I/O thread: submissions and look-ups run on one thread of this runner (the
// Queue serialises them on one connection anyway), and a probe thread keeps /readyz and the
// queue's numbers for /metrics current.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <crew/redis.hpp>
#include <crew/redis/stats.hpp>

#include "connection.hpp"
#include "outcome.hpp"
#include "runner.hpp"

namespace crew::serve_app {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kProbePeriod{1'000};
// A probe that has not come back for this long says Redis stalls (SIGSTOP, a long fork): each
// command's own timeout is several seconds.
constexpr std::chrono::milliseconds kProbeStall{2'000};
constexpr std::string_view kQueueUpHelp =
    "# HELP crew_queue_up Whether Redis answered the last look at the queue (once a second).\n"
    "# TYPE crew_queue_up gauge\n";

class RedisRunner final : public Runner {
 public:
  RedisRunner(const Tasks& tasks, const RedisRunnerOptions& o, std::string shown_url)
      : tasks_(tasks),
        shown_url_(std::move(shown_url)),
        queue_name_(o.queue),
        queue_(std::make_unique<redis::Queue>(redis::QueueOptions{.url = o.url, .name = o.queue})),
        pool_(PoolOptions{.max_workers = 1, .max_queue = o.max_queue, .name = "crew-redis"}),
        probe_([this](const std::stop_token& stop) { probe(stop); }) {}
  ~RedisRunner() override { stop_probe(); }
  RedisRunner(const RedisRunner&) = delete;
  RedisRunner& operator=(const RedisRunner&) = delete;

  Future<PackedValue> run(std::string_view task, std::string args, RunOptions options,
                          std::string job_id) override {
    const redis::JobOptions job = job_options(options, std::move(job_id));
    refuse_while_unreachable();
    auto promise = std::make_shared<Promise<PackedValue>>();
    Future<PackedValue> out = promise->get_future();
    (void)pool_.run(
        [this, promise, job, name = std::string(task), args = std::move(args)]() mutable {
          // Cancelled (the client hung up) before it reached Redis: never submitted.
          if (promise->settled()) return;
          // Settled outside the catch blocks (detail::capture): see capture() on why.
          auto error = detail::capture([&] {
            detail::hand_off(queue_->run_packed(job, name, std::move(args)),
                             [promise](Future<PackedValue> result) noexcept {
                               std::optional<PackedValue> value;
                               if (auto e = detail::capture([&] { value.emplace(result.get()); }))
                                 promise->set_exception(std::move(e));
                               else
                                 promise->set_value(std::move(*value));
                             });
          });
          if (error) promise->set_exception(std::move(error));
        });
    return out;
  }

  Future<Submitted> submit(std::string_view task, std::string args, RunOptions options,
                           std::string job_id) override {
    const redis::JobOptions job = job_options(options, std::move(job_id));
    refuse_while_unreachable();
    return pool_.run([this, job, name = std::string(task), args = std::move(args)]() mutable {
      std::string id = queue_->submit_packed(job, name, std::move(args));
      // No delay: a job with a fresh id is waiting; one with the client's id (Idempotency-Key)
      // may have existed already, anywhere in its life, and only a look says where.
      const redis::JobState state =
          job.job_id.empty() ? redis::JobState::waiting : queue_->status(id).state;
      return Submitted{std::move(id), redis::to_string(state)};
    });
  }

  std::string new_job_id() const override { return redis::process_unique_id(); }

  Future<redis::JobStatus> status(std::string job_id) override {
    refuse_while_unreachable();
    return pool_.run([this, id = std::move(job_id)]() {
      try {
        return queue_->status(id);
      } catch (const std::invalid_argument& e) {
        throw BadArguments(e.what());  // the id in the request's path
      }
    });
  }

  int default_priority() const noexcept override { return redis::JobOptions{}.priority; }
  const Tasks& tasks() const noexcept override { return tasks_; }
  // The pool is the thread that hands jobs to Redis: `queued` is the submissions waiting for it.
  RunnerStats stats() const override { return runner_stats(pool_.stats()); }
  const char* isolation() const noexcept override { return "redis"; }

  std::string backend_metrics() const override {
    std::lock_guard lock(health_mutex_);
    return std::string(kQueueUpHelp) +
           (unreachable_.empty() ? "crew_queue_up 1\n" + queue_text_ : "crew_queue_up 0\n");
  }

  std::string unready_reason() const override {
    const auto since = probe_since_.load();
    if (since != 0 && Clock::now().time_since_epoch().count() - since >
                          std::chrono::duration_cast<Clock::duration>(kProbeStall).count()) {
      return fmt::format("Redis at {} has not answered for more than {} ms", shown_url_,
                         kProbeStall.count());
    }
    std::lock_guard lock(health_mutex_);
    return unreachable_.empty() ? std::string() : "Redis is unreachable: " + unreachable_;
  }

  // Jobs in Redis carry on either way; what ends here is this server's part: submissions not yet
  // made (close: made first; terminate: dropped) and the Futures waiting for results, which the
  // Queue's destruction settles with Cancelled while the server's event loop still exists.
  void close() override {
    stop_probe();
    pool_.close();
    pool_.wait_idle();
    queue_.reset();
  }
  void terminate() override {
    stop_probe();
    pool_.terminate();
    queue_.reset();
  }

 private:
  static redis::JobOptions job_options(const RunOptions& options, std::string job_id) {
    if (options.priority < 0 || options.priority > 3) {
      throw BadArguments(fmt::format(
          "priority = {} is outside 0..3, the priorities of a Redis queue (--backend); 3 runs "
          "first",
          options.priority));
    }
    return redis::JobOptions{
        .priority = options.priority,
        .attempts = options.attempts,
        .backoff = options.backoff,
        .timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout),
        .job_id = std::move(job_id)};
  }

  // While the probe finds Redis unreachable, a call would only wait for the command timeouts to
  // fail: refuse it now.
  void refuse_while_unreachable() const {
    std::lock_guard lock(health_mutex_);
    if (!unreachable_.empty())
      throw redis::ConnectionError("Redis is unreachable: " + unreachable_);
  }

  void probe(const std::stop_token& stop) {
    std::mutex mutex;
    std::condition_variable_any wake;
    while (!stop.stop_requested()) {
      probe_since_ = Clock::now().time_since_epoch().count();
      // The queue's numbers: one read-only round trip through the function library, on the
      // connection that submits, so it also proves that submissions can go through.
      std::string error;
      std::string text;
      try {
        text = redis::prometheus_text(queue_->stats(), queue_name_);
      } catch (const std::exception& e) {
        error = e.what();
      }
      probe_since_ = 0;
      bool changed = false;
      {
        std::lock_guard lock(health_mutex_);
        changed = unreachable_.empty() != error.empty();
        unreachable_ = error;
        if (error.empty()) queue_text_ = std::move(text);
      }
      if (changed && !error.empty()) {
        spdlog::error(
            "crew serve: Redis is unreachable ({}): /readyz answers 503 and tasks are refused "
            "until it is back",
            error);
      } else if (changed) {
        spdlog::info("crew serve: Redis answers again: ready");
      }
      std::unique_lock lock(mutex);
      wake.wait_for(lock, stop, kProbePeriod, [] { return false; });
    }
  }

  void stop_probe() {
    probe_.request_stop();
    if (probe_.joinable()) probe_.join();
  }

  const Tasks& tasks_;
  const std::string shown_url_;  // without its password
  const std::string queue_name_;
  std::unique_ptr<redis::Queue> queue_;
  mutable ThreadPool pool_;
  mutable std::mutex health_mutex_;
  std::string unreachable_;                 // the probe's last error; empty while Redis answers
  std::string queue_text_;                  // the queue's numbers the probe last read
  std::atomic<Clock::rep> probe_since_{0};  // when the probe in flight began; 0: none
  std::jthread probe_;                      // last: it uses every member above
};

}  // namespace

std::unique_ptr<Runner> make_redis_runner(const Tasks& tasks, RedisRunnerOptions options) {
  // Checked before connecting, so that a bad value names the flag it came from (the library's
  // own messages name its option fields).
  redis::Url url;
  try {
    url = redis::parse_url(options.url);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("--backend: {}", e.what()));
  }
  (void)redis::queue_prefix(options.queue, "--queue");
  // spdlog's registry exists before the Queue's threads start (they log through it).
  spdlog::default_logger_raw();
  auto runner = std::make_unique<RedisRunner>(tasks, options, url.redacted());
  spdlog::info("crew serve: tasks go to the Redis queue '{}' at {}", options.queue, url.redacted());
  return runner;
}

}  // namespace crew::serve_app
