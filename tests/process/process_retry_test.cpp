// Tests for RunOptions::attempts and RunOptions::backoff on a ProcessPool. This executable is also
// its own worker program: main() serves the tasks below when a ProcessPool started it.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/process.hpp>

#include "process/observe.hpp"

namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using Clock = std::chrono::steady_clock;
using crew_test::eventually;

// Far above what noticing a cancellation or a terminate() takes on a loaded 2-core machine
// under a sanitizer, far below the backoffs those tests wait in (30 s).
constexpr auto kReact = 10s;
constexpr auto kLongBackoff = 30s;

// A record of a task's executions in memory shared with the workers: word 0 counts them, word n
// holds when execution n started (steady clock: CLOCK_MONOTONIC, the same in every process), and
// the last word is a gate the test opens.
constexpr std::size_t kLogged = 16;
constexpr std::size_t kGate = kLogged + 1;

std::atomic_ref<std::uint64_t> word(const crew::SharedBuffer& log, std::size_t i) {
  return std::atomic_ref<std::uint64_t>(reinterpret_cast<std::uint64_t*>(log.data())[i]);
}

crew::SharedBuffer new_log() {
  return crew::SharedBuffer::create(sizeof(std::uint64_t) * (kGate + 1),
                                    {.across_processes = true});
}

std::uint64_t executions(const crew::SharedBuffer& log) {
  return word(log, 0).load();
}

Clock::time_point started(const crew::SharedBuffer& log, std::size_t n) {
  return Clock::time_point(Clock::duration(word(log, n).load()));
}

// Counts this execution in `log` and returns its number (1 for the first).
int record(const crew::SharedBuffer& log) {
  const std::uint64_t n = word(log, 0).fetch_add(1) + 1;
  if (n <= kLogged) word(log, n).store(Clock::now().time_since_epoch().count());
  return static_cast<int>(n);
}

[[noreturn]] void crash() {
  std::raise(SIGSEGV);
  std::abort();  // not reached: SIGSEGV kills the worker (the sanitizers do not handle it)
}

// Fails its first `failures` executions the way `how` says, then returns its execution number.
int flaky(crew::SharedBuffer log, int failures, const std::string& how) {
  const int n = record(log);
  if (n > failures) return n;
  if (how == "throw") throw std::runtime_error("failure " + std::to_string(n));
  if (how == "hang" || how == "gate_segv") {
    // Bounded, so that a failing test leaves no worker behind for long.
    const auto guard = Clock::now() + 120s;
    while (Clock::now() < guard && (how == "hang" || word(log, kGate).load() == 0)) {
      std::this_thread::sleep_for(1ms);
    }
  }
  crash();
}

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("flaky", flaky);
    // Sets every byte of its Buffer, in place, to the first byte plus 1, crashes on its first
    // `failures` executions, and returns the Buffer: every attempt must start from the caller's
    // bytes (else the value grows by one per attempt), and the result must carry the last
    // attempt's writes. memset keeps 8 MiB cheap under TSan, which intercepts it.
    t.add("increment", [](crew::SharedBuffer log, int failures, crew::Buffer b) {
      std::memset(b.data(), std::to_integer<int>(b.data()[0]) + 1, b.size());
      if (record(log) <= failures) crash();
      return b;
    });
    // flaky's counter in a file (one byte per execution), for run_packed, whose packed
    // arguments cannot carry a SharedBuffer.
    t.add("flaky_file", [](const std::string& path, int failures) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0 || ::write(fd, "x", 1) != 1) throw std::runtime_error("cannot write " + path);
      ::close(fd);
      const auto n = static_cast<int>(std::filesystem::file_size(path));
      if (n <= failures) crash();
      return n;
    });
    t.add("now_ns", [] { return Clock::now().time_since_epoch().count(); });
    return t;
  }();
  return tasks;
}

using crew_test::worker_env;

crew::ProcessPoolOptions opts() {
  crew::ProcessPoolOptions o;
  o.tasks = &test_tasks();
  o.max_workers = 1;
  o.env = worker_env();
  o.log = [](const crew::ProcessLogLine&) {};
  return o;
}

crew::RunOptions retries(int attempts, crew::Backoff backoff = {}) {
  return crew::RunOptions{.attempts = attempts, .backoff = backoff};
}

// ---- validation ---------------------------------------------------------------------------------

TEST(ProcessRetry, BadOptionsNameTheirField) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  const std::pair<crew::RunOptions, const char*> cases[] = {
      {retries(0), "RunOptions::attempts must be >= 1"},
      {retries(-3), "RunOptions::attempts must be >= 1"},
      {retries(2, {.delay = -1ms}), "RunOptions::backoff.delay must not be negative"},
      {retries(2, {.jitter = 1.5}), "RunOptions::backoff.jitter must be in 0..1"},
      {retries(2, {.jitter = -0.1}), "RunOptions::backoff.jitter must be in 0..1"},
      {retries(2, {.jitter = std::nan("")}), "RunOptions::backoff.jitter must be in 0..1"},
  };
  for (const auto& [options, message] : cases) {
    EXPECT_THAT([&] { (void)pool.run<int>(options, "flaky", log, 0, std::string("segv")); },
                ThrowsMessage<std::invalid_argument>(HasSubstr(message)));
    EXPECT_THAT([&] { (void)pool.run_packed(options, "now_ns", "\x90"); },
                ThrowsMessage<std::invalid_argument>(HasSubstr(message)));
  }
  EXPECT_EQ(executions(log), 0U);
}

// ---- retries ------------------------------------------------------------------------------------

TEST(ProcessRetry, ACrashingTaskRunsAgainUntilItSucceeds) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  EXPECT_EQ(pool.run<int>(retries(3), "flaky", log, 2, std::string("segv")).get(), 3);
  EXPECT_EQ(executions(log), 3U);
  const auto s = pool.stats();
  EXPECT_EQ(s.retried, 2U);
  EXPECT_EQ(s.crashed, 2U);
  EXPECT_EQ(s.completed, 1U);
  EXPECT_EQ(s.failed, 0U);
}

TEST(ProcessRetry, AnAlwaysCrashingTaskRunsAttemptsTimesItsBackoffApart) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  auto f = pool.run<int>(retries(3, {.delay = 100ms}), "flaky", log, 100, std::string("segv"));
  EXPECT_THROW(f.get(), crew::WorkerCrashed);
  ASSERT_EQ(executions(log), 3U);
  // The wait counts from when the failure was seen, after the execution started: a lower bound.
  EXPECT_GE(started(log, 2) - started(log, 1), 100ms);
  EXPECT_GE(started(log, 3) - started(log, 2), 100ms);
  const auto s = pool.stats();
  EXPECT_EQ(s.retried, 2U);
  EXPECT_EQ(s.crashed, 3U);
  EXPECT_EQ(s.failed, 1U);
}

TEST(ProcessRetry, AThrowingTaskFailsWithRemoteErrorAfterExponentialWaits) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  auto f = pool.run<int>(retries(4, {.kind = crew::BackoffKind::exponential, .delay = 50ms}),
                         "flaky", log, 100, std::string("throw"));
  EXPECT_THAT([&] { (void)f.get(); },
              ThrowsMessage<crew::RemoteError>(HasSubstr("failure 4")));  // the last attempt's
  ASSERT_EQ(executions(log), 4U);
  EXPECT_GE(started(log, 2) - started(log, 1), 50ms);
  EXPECT_GE(started(log, 3) - started(log, 2), 100ms);
  EXPECT_GE(started(log, 4) - started(log, 3), 200ms);
  EXPECT_EQ(pool.stats().retried, 3U);
  EXPECT_EQ(pool.stats().crashed, 0U);  // a task that throws keeps its worker
}

TEST(ProcessRetry, ATimedOutExecutionRunsAgain) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  auto options = retries(2);
  options.timeout = 1s;  // the second attempt answers in milliseconds, even on a loaded machine
  EXPECT_EQ(pool.run<int>(options, "flaky", log, 1, std::string("hang")).get(), 2);
  EXPECT_EQ(executions(log), 2U);
  EXPECT_EQ(pool.stats().retried, 1U);
  EXPECT_EQ(pool.stats().timed_out, 0U);  // counted once the task settles, and it succeeded
}

TEST(ProcessRetry, BadArgumentsAreNeverRetried) {
  crew::ProcessPool pool(opts());
  EXPECT_THROW(pool.run<int>(retries(3), "flaky", std::string("not a log"), 0, 1).get(),
               crew::BadArguments);
  EXPECT_EQ(pool.stats().retried, 0U);
  EXPECT_EQ(pool.stats().failed, 1U);
}

TEST(ProcessRetry, EveryAttemptGetsTheCallersBuffer) {
  crew::ProcessPool pool(opts());
  // A heap Buffer copied into a memfd, and one that lives in a memfd of its own.
  for (const std::size_t size : {std::size_t{100} << 10, crew::Buffer::kProcessShareable}) {
    auto filled = [size](int value) {
      crew::Buffer b = crew::Buffer::uninitialized(size);
      std::memset(b.data(), value, size);
      return b;
    };
    const auto log = new_log();
    const crew::Buffer b = filled(7);
    const crew::Buffer back = pool.run<crew::Buffer>(retries(3), "increment", log, 2, b).get();
    EXPECT_EQ(executions(log), 3U) << size;
    ASSERT_EQ(back.size(), size);
    EXPECT_EQ(std::memcmp(back.data(), filled(8).data(), size), 0) << size;
    EXPECT_EQ(std::memcmp(b.data(), filled(7).data(), size), 0) << size;  // the caller's
  }
}

TEST(ProcessRetry, RunPackedRetriesToo) {
  crew::ProcessPool pool(opts());
  const auto path =
      std::filesystem::temp_directory_path() / ("crew-retry-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  msgpack::sbuffer args;
  msgpack::packer<msgpack::sbuffer> pk(args);
  pk.pack_array(2);
  pk.pack(path.string());
  pk.pack(2);
  const auto value =
      pool.run_packed(retries(3), "flaky_file", std::string(args.data(), args.size())).get();
  std::filesystem::remove(path);
  EXPECT_EQ(msgpack::unpack(value.bytes.data(), value.bytes.size()).get().as<int>(), 3);
  EXPECT_EQ(pool.stats().retried, 2U);
}

TEST(ProcessRetry, ARetryKeepsItsPriority) {
  crew::ProcessPool pool(opts());  // one worker
  const auto log = new_log();
  auto options = retries(2);
  options.priority = 5;
  // The first execution holds the only worker until the gate opens, then crashes; meanwhile a
  // lower-priority task queues. The retry, queued at once, must still go first.
  auto high = pool.run<int>(options, "flaky", log, 1, std::string("gate_segv"));
  ASSERT_TRUE(eventually([&] { return executions(log) == 1; }));
  auto low = pool.run<std::int64_t>(crew::RunOptions{.priority = 0}, "now_ns");
  ASSERT_TRUE(eventually([&] { return pool.stats().queued == 1; }));
  word(log, kGate).store(1);
  EXPECT_EQ(high.get(), 2);
  EXPECT_LT(started(log, 2).time_since_epoch().count(), low.get());
}

TEST(ProcessRetry, CancellingDuringTheBackoffSettlesCancelledAndNothingRunsAgain) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  std::stop_source stop;
  auto options = retries(3, {.delay = kLongBackoff});
  options.stop = stop.get_token();
  auto f = pool.run<int>(options, "flaky", log, 100, std::string("segv"));
  ASSERT_TRUE(eventually([&] { return pool.stats().retried == 1; }));
  stop.request_stop();
  EXPECT_THROW(f.get(), crew::Cancelled);
  // The waiting retry is gone, so the pool drains at once rather than after the backoff.
  const auto t0 = Clock::now();
  pool.close();
  pool.wait_closed();
  EXPECT_LT(Clock::now() - t0, kReact);
  EXPECT_EQ(executions(log), 1U);
  EXPECT_EQ(pool.stats().cancelled, 1U);
}

TEST(ProcessRetry, TerminateDuringTheBackoffFailsWithPoolClosed) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  auto f =
      pool.run<int>(retries(3, {.delay = kLongBackoff}), "flaky", log, 100, std::string("segv"));
  ASSERT_TRUE(eventually([&] { return pool.stats().retried == 1; }));
  const auto t0 = Clock::now();
  pool.terminate();
  EXPECT_LT(Clock::now() - t0, kReact);
  EXPECT_THROW(f.get(), crew::PoolClosed);
  EXPECT_EQ(executions(log), 1U);
}

TEST(ProcessRetry, CloseLetsWaitingRetriesRun) {
  crew::ProcessPool pool(opts());
  const auto log = new_log();
  auto f = pool.run<int>(retries(2, {.delay = 200ms}), "flaky", log, 1, std::string("segv"));
  ASSERT_TRUE(eventually([&] { return pool.stats().retried == 1; }));
  pool.close();
  EXPECT_THROW((void)pool.run<int>("now_ns"), crew::PoolClosed);
  pool.wait_closed();
  EXPECT_EQ(f.get(), 2);
  EXPECT_EQ(executions(log), 2U);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
