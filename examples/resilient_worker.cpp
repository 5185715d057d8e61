// Seed scenario: "a resilient worker: restart it when it fails, up to a limit".
//
// A small Supervisor runs a job in a crew::Worker and watches it through the worker's events,
// delivered on a crew::EventLoop (so all supervisor state lives on one thread, without locks):
//   on_message  the job's result;
//   on_error    the exception that escaped the worker function (it never kills the process);
//   on_exit     the exit code: 0 means done, anything else means "failed, maybe restart".
// The restart policy is data: how many attempts in all, the delay before the first restart, and
// the factor the delay grows by. The delay is waited on the loop (run_until(deadline)), so the
// loop stays free for other callbacks while the supervisor waits. After the last allowed attempt
// fails the supervisor gives up and reports every error it saw.
//
// Two jobs: a flaky one that fails twice and then succeeds, and a broken one that always fails.
//
// Node.js equivalent: worker.on('error', ...); worker.on('exit', code => code && setTimeout(
// restart, delay *= 2)).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct RestartPolicy {
  /// Runs in all, the first one included.
  int max_attempts = 3;
  /// Wait before the first restart; each further restart waits `backoff` times longer.
  std::chrono::milliseconds initial_delay = 20ms;
  double backoff = 2.0;
};

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

std::string describe(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
}

/// Runs `job` in a worker until it exits with 0 or the policy gives up.
/// Thread safety: use from the thread that runs `loop`.
class Supervisor {
 public:
  Supervisor(std::string name, std::function<void(crew::WorkerContext&)> job, RestartPolicy policy,
             crew::EventLoop& loop)
      : name_(std::move(name)), job_(std::move(job)), policy_(policy), loop_(loop) {}

  /// Returns true when an attempt succeeded.
  bool run() {
    start_ = Clock::now();
    delay_ = policy_.initial_delay;
    start_attempt();
    while (state_ == State::running) {
      if (restart_at_) {
        loop_.run_until(*restart_at_);  // the delay; callbacks still run meanwhile
        restart_at_.reset();
        start_attempt();
      } else {
        loop_.run_until([this] { return state_ != State::running || restart_at_.has_value(); });
      }
    }
    worker_.reset();
    return state_ == State::succeeded;
  }

  [[nodiscard]] int attempts() const { return attempts_; }
  [[nodiscard]] const std::vector<std::string>& errors() const { return errors_; }
  [[nodiscard]] const std::optional<std::int64_t>& result() const { return result_; }

 private:
  enum class State { running, succeeded, gave_up };

  void start_attempt() {
    worker_.reset();  // the previous attempt has exited; this joins its thread
    ++attempts_;
    std::printf("[%s] attempt %d/%d starts at %6.1f ms\n", name_.c_str(), attempts_,
                policy_.max_attempts, ms(Clock::now() - start_));
    crew::Message::Map data;
    data.emplace("attempt", attempts_);
    worker_ = std::make_unique<crew::Worker>(
        job_, crew::WorkerOptions{.name = "crew-" + name_, .data = std::move(data)});
    // on_message first: the exit event then waits until every message was delivered.
    worker_->on_message([this](crew::Message m) { result_ = m.as<std::int64_t>(); }, loop_);
    worker_->on_error(
        [this](std::exception_ptr e) {
          errors_.push_back(describe(e));
          std::printf("[%s] attempt %d failed: %s\n", name_.c_str(), attempts_,
                      errors_.back().c_str());
        },
        loop_);
    // The error event (if any) always comes before the exit event.
    worker_->on_exit([this](int code) { exited(code); }, loop_);
  }

  void exited(int code) {
    if (code == 0) {
      std::printf("[%s] attempt %d succeeded\n", name_.c_str(), attempts_);
      state_ = State::succeeded;
    } else if (attempts_ >= policy_.max_attempts) {
      std::printf("[%s] giving up after %d failed attempts\n", name_.c_str(), attempts_);
      state_ = State::gave_up;
    } else {
      std::printf("[%s] exit code %d; restarting in %lld ms\n", name_.c_str(), code,
                  static_cast<long long>(delay_.count()));
      restart_at_ = Clock::now() + delay_;
      delay_ = std::chrono::duration_cast<std::chrono::milliseconds>(delay_ * policy_.backoff);
    }
  }

  std::string name_;
  std::function<void(crew::WorkerContext&)> job_;
  RestartPolicy policy_;
  crew::EventLoop& loop_;
  Clock::time_point start_{};
  std::chrono::milliseconds delay_{};
  int attempts_ = 0;
  State state_ = State::running;
  std::optional<Clock::time_point> restart_at_;
  std::vector<std::string> errors_;
  std::optional<std::int64_t> result_;
  std::unique_ptr<crew::Worker> worker_;  // last member: destroyed (joined) first
};

// Fails on its first two attempts (a dependency "not ready yet"), then computes its answer.
void flaky_job(crew::WorkerContext& ctx) {
  const auto attempt = ctx.data()["attempt"].as<int>();
  if (attempt < 3) {
    throw std::runtime_error("dependency not ready (attempt " + std::to_string(attempt) + ")");
  }
  std::int64_t sum = 0;
  for (std::int64_t i = 1; i <= 1000; ++i) sum += i;
  ctx.parent().post(crew::Message(sum));
}

void broken_job(crew::WorkerContext& ctx) {
  throw std::runtime_error("config file missing (attempt " +
                           std::to_string(ctx.data()["attempt"].as<int>()) + ")");
}

}  // namespace

int main() {
  int failures = 0;
  crew::EventLoop loop;

  Supervisor flaky("flaky", flaky_job, {.max_attempts = 4, .initial_delay = 20ms}, loop);
  const bool flaky_ok = flaky.run();
  std::printf("flaky: %s after %d attempts, %zu errors, result %lld\n",
              flaky_ok ? "succeeded" : "gave up", flaky.attempts(), flaky.errors().size(),
              static_cast<long long>(flaky.result().value_or(-1)));
  if (!flaky_ok || flaky.attempts() != 3 || flaky.errors().size() != 2 ||
      flaky.result() != 500500) {
    std::printf("FAIL: expected success on attempt 3 with result 500500\n");
    ++failures;
  }

  const auto broken_start = Clock::now();
  Supervisor broken("broken", broken_job, {.max_attempts = 3, .initial_delay = 20ms}, loop);
  const bool broken_ok = broken.run();
  const auto broken_took = Clock::now() - broken_start;
  std::printf("broken: %s after %d attempts (%.1f ms, delays 20 + 40 ms), errors:\n",
              broken_ok ? "succeeded" : "gave up", broken.attempts(), ms(broken_took));
  for (const std::string& e : broken.errors()) std::printf("  %s\n", e.c_str());
  if (broken_ok || broken.attempts() != 3 || broken.errors().size() != 3 || broken_took < 60ms) {
    std::printf("FAIL: expected to give up after 3 attempts and at least 60 ms of delays\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
