// Seed scenario: "monitor a set of workers".
//
// A WorkerMonitor subscribes to each worker's events on a crew::EventLoop and keeps, per worker:
// messages received, errors (exceptions that escaped the worker, plus messages the worker itself
// flagged as errors), uptime (start to exit, or to now while it runs), time since its last
// activity, and its exit code. Every callback runs on the loop's thread, so the table needs no
// lock. At the end it prints:
//
//   worker     id  msgs  errors  uptime ms  idle ms  exit
//
// Four workers with different behaviour: a steady one (paced messages), a bursty one (many
// messages at once), one that reports an error and later crashes, and a service that answers
// requests until the main thread terminates it.
//
// Node.js equivalent: worker.on('message' | 'error' | 'exit', ...) feeding a Map of stats.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

/// Per-worker counters, updated from worker events on one EventLoop.
/// Thread safety: use only on the thread that runs the loop.
class WorkerMonitor {
 public:
  struct Entry {
    std::string name;
    std::uint64_t id = 0;
    std::int64_t messages = 0;
    std::int64_t errors = 0;
    Clock::time_point started{};
    Clock::time_point last_activity{};
    std::optional<Clock::time_point> exited;
    std::optional<int> exit_code;
  };

  explicit WorkerMonitor(crew::EventLoop& loop) : loop_(loop) {}

  /// Starts tracking `worker`, which must outlive its exit event. `forward` (optional) also
  /// receives every message.
  void watch(crew::Worker& worker, std::string name,
             std::function<void(crew::Message&)> forward = {}) {
    const std::uint64_t id = worker.id();
    Entry& e = entries_[id];
    e.name = std::move(name);
    e.id = id;
    e.started = e.last_activity = Clock::now();
    // on_message first, so that the exit event comes after the last message.
    worker.on_message(
        [this, id, forward](crew::Message m) {
          Entry& entry = entries_.at(id);
          ++entry.messages;
          entry.last_activity = Clock::now();
          if (m.contains("error")) ++entry.errors;  // an error the worker reported itself
          if (forward) forward(m);
        },
        loop_);
    worker.on_error(
        [this, id](std::exception_ptr) {
          Entry& entry = entries_.at(id);
          ++entry.errors;
          entry.last_activity = Clock::now();
        },
        loop_);
    worker.on_exit(
        [this, id](int code) {
          Entry& entry = entries_.at(id);
          entry.exit_code = code;
          entry.exited = entry.last_activity = Clock::now();
          ++exited_;  // the error event, if any, was delivered before this one
        },
        loop_);
  }

  [[nodiscard]] std::size_t exited() const { return exited_; }
  [[nodiscard]] const Entry& entry(std::uint64_t id) const { return entries_.at(id); }

  void print() const {
    const auto now = Clock::now();
    std::printf("%-10s %3s %5s %7s %10s %8s %5s\n", "worker", "id", "msgs", "errors", "uptime ms",
                "idle ms", "exit");
    for (const auto& [id, e] : entries_) {
      const auto end = e.exited.value_or(now);
      std::printf("%-10s %3llu %5lld %7lld %10.1f %8.1f %5s\n", e.name.c_str(),
                  static_cast<unsigned long long>(id), static_cast<long long>(e.messages),
                  static_cast<long long>(e.errors), ms(end - e.started), ms(now - e.last_activity),
                  e.exit_code ? std::to_string(*e.exit_code).c_str() : "-");
    }
  }

 private:
  crew::EventLoop& loop_;
  std::map<std::uint64_t, Entry> entries_;
  std::size_t exited_ = 0;
};

crew::Message tagged(const char* key, std::int64_t value) {
  crew::Message::Map m;
  m.emplace(key, value);
  return m;
}

void steady(crew::WorkerContext& ctx) {
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(5ms);  // simulated work
    ctx.parent().post(tagged("progress", i));
  }
}

void bursty(crew::WorkerContext& ctx) {
  for (int i = 0; i < 100; ++i) ctx.parent().post(tagged("item", i));
}

void crashy(crew::WorkerContext& ctx) {
  for (int i = 0; i < 4; ++i) ctx.parent().post(tagged("progress", i));
  ctx.parent().post(tagged("error", 404));  // a handled error, reported as a message
  std::this_thread::sleep_for(20ms);        // simulated work
  throw std::runtime_error("unhandled: disk full");
}

// Answers each request until terminated.
void service(crew::WorkerContext& ctx) {
  while (std::optional<crew::Message> request = ctx.parent().receive()) {
    ctx.parent().post(tagged("reply", request->as<std::int64_t>() + 1));
  }
}

}  // namespace

int main() {
  int failures = 0;
  // Declaration order: the monitor outlives the loop, the loop outlives the workers.
  std::int64_t replies = 0;
  crew::EventLoop loop;
  WorkerMonitor monitor(loop);

  const auto steady_created = Clock::now();
  crew::Worker w_steady(steady, {.name = "crew-steady"});
  crew::Worker w_bursty(bursty, {.name = "crew-bursty"});
  crew::Worker w_crashy(crashy, {.name = "crew-crashy"});
  crew::Worker w_service(service, {.name = "crew-service"});
  monitor.watch(w_steady, "steady");
  monitor.watch(w_bursty, "bursty");
  monitor.watch(w_crashy, "crashy");
  monitor.watch(w_service, "service", [&](crew::Message&) { ++replies; });

  for (int i = 0; i < 10; ++i) w_service.post(crew::Message(i));

  // Run until the three finite workers have exited and the service has answered everything.
  loop.run_until([&] { return monitor.exited() == 3 && replies == 10; });
  std::printf("main: three workers have exited and the service answered 10 requests\n");
  std::printf("main: terminating the service (code %d)\n", w_service.terminate().get());
  loop.run_until([&] { return monitor.exited() == 4; });

  monitor.print();

  struct Expect {
    crew::Worker& worker;
    std::int64_t messages;
    std::int64_t errors;
    int exit_code;
  };
  const Expect expected[] = {
      {w_steady, 20, 0, 0}, {w_bursty, 100, 0, 0}, {w_crashy, 5, 2, 1}, {w_service, 10, 0, 1}};
  for (const Expect& x : expected) {
    const WorkerMonitor::Entry& e = monitor.entry(x.worker.id());
    if (e.messages != x.messages || e.errors != x.errors || e.exit_code != x.exit_code) {
      std::printf("FAIL: %s: expected %lld messages, %lld errors, exit %d\n", e.name.c_str(),
                  static_cast<long long>(x.messages), static_cast<long long>(x.errors),
                  x.exit_code);
      ++failures;
    }
  }
  // 20 x 5 ms of simulated work, begun when the worker was created; uptime counts from watch(),
  // which came later by (started - steady_created): the two together cover the work.
  const WorkerMonitor::Entry& st = monitor.entry(w_steady.id());
  if ((*st.exited - st.started) + (st.started - steady_created) < 100ms) {
    std::printf("FAIL: the steady worker's uptime is too short for 20 x 5 ms of work\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
