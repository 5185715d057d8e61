// crew/asio.hpp over standalone Asio (Debian's libasio-dev 1.22), which also has per-operation
// cancellation, deferred and as_tuple.
#define CREW_ASIO_STANDALONE 1
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/deferred.hpp>

namespace net = asio;

#include "asio/asio_common.hpp"

namespace {

using namespace std::chrono_literals;

TEST(AsioStandalone, ACallbackGetsTheValueOnItsOwnExecutorNeverOnAPoolThread) {
  asio_test::ACallbackGetsTheValueOnItsOwnExecutorNeverOnAPoolThread();
}
TEST(AsioStandalone, UseFutureGivesTheValueOrTheTasksException) {
  asio_test::UseFutureGivesTheValueOrTheTasksException();
}
TEST(AsioStandalone, CoroutinesAwaitThreadAndProcessTasks) {
  asio_test::CoroutinesAwaitThreadAndProcessTasks();
}
TEST(AsioStandalone, ARefusedRunCompletesWithTheErrorInsteadOfThrowing) {
  asio_test::ARefusedRunCompletesWithTheErrorInsteadOfThrowing();
}
TEST(AsioStandalone, TheLoopsTimersStayOnTimeWhileThePoolIsSaturated) {
  asio_test::TheLoopsTimersStayOnTimeWhileThePoolIsSaturated();
}

bool is_aborted(const std::exception_ptr& e) {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const std::system_error& s) {
    return s.code() == asio::error::operation_aborted;
  } catch (...) {
    return false;
  }
}

// A thread task that runs until told to stop: the cancellation reaches its stop token, and the
// caller hears operation_aborted at once.
TEST(AsioStandalone, CancellingAThreadTaskStopsItAndCompletesWithOperationAborted) {
  crew::ThreadPool pool({.max_workers = 1});
  asio::io_context ioc;
  asio::cancellation_signal cancel;
  std::atomic<bool> running{false}, stopped{false};
  std::exception_ptr error;
  crew::async_run(
      pool,
      [&](std::stop_token stop) {
        running = true;
        while (!stop.stop_requested()) std::this_thread::yield();
        stopped = true;
        return 1;
      },
      asio::bind_cancellation_slot(
          cancel.slot(),
          asio::bind_executor(ioc, [&](std::exception_ptr e, int) { error = std::move(e); })));
  asio::steady_timer poll(ioc);
  std::function<void()> wait_running = [&] {
    if (running) return cancel.emit(asio::cancellation_type::terminal);
    poll.expires_after(1ms);
    poll.async_wait([&](auto) { wait_running(); });
  };
  wait_running();
  ioc.run();  // ends once the cancelled operation completed (its handler was work)
  EXPECT_TRUE(is_aborted(error));
  pool.close();  // waits for the task, which saw its stop token
  EXPECT_TRUE(stopped);
}

// A process task cancelled while it runs: its worker is killed, and the pool goes on.
TEST(AsioStandalone, CancellingAProcessTaskKillsItsWorker) {
  crew::ProcessPool procs(asio_test::process_options());
  asio::io_context ioc;
  asio::cancellation_signal cancel;
  std::exception_ptr error;
  const auto started = std::chrono::steady_clock::now();
  crew::async_run<int>(procs, "sleep_ms", 60'000,
                       asio::bind_cancellation_slot(
                           cancel.slot(), asio::bind_executor(ioc, [&](std::exception_ptr e, int) {
                             error = std::move(e);
                           })));
  asio::steady_timer poll(ioc);
  std::function<void()> wait_busy = [&] {
    if (procs.stats().busy == 1) return cancel.emit(asio::cancellation_type::terminal);
    poll.expires_after(1ms);
    poll.async_wait([&](auto) { wait_busy(); });
  };
  wait_busy();
  ioc.run();
  EXPECT_TRUE(is_aborted(error));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 30s);  // not the task's minute
  EXPECT_EQ(procs.run<int>("add", 1, 2).get(), 3);
}

TEST(AsioStandalone, CancellingAWaitEndsTheWaitNotTheTask) {
  crew::ThreadPool pool({.max_workers = 1});
  crew::Promise<int> never;
  asio::io_context ioc;
  asio::cancellation_signal cancel;
  std::exception_ptr error;
  crew::async_wait(never.get_future(),
                   asio::bind_cancellation_slot(
                       cancel.slot(), asio::bind_executor(ioc, [&](std::exception_ptr e, int) {
                         error = std::move(e);
                       })));
  asio::post(ioc, [&] { cancel.emit(asio::cancellation_type::terminal); });
  ioc.run();
  EXPECT_TRUE(is_aborted(error));
}

TEST(AsioStandalone, DeferredAndAsTupleTokens) {
  crew::ThreadPool pool({.max_workers = 2});
  asio::io_context ioc;
  int deferred_value = 0;
  std::exception_ptr tuple_error;
  int tuple_value = 0;
  // deferred: nothing runs until the operation is launched with a handler.
  auto op = crew::async_run(
      pool, [](int v) { return v * 3; }, 14, asio::experimental::deferred);
  op(asio::bind_executor(ioc, [&](std::exception_ptr, int v) { deferred_value = v; }));
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto [e, v] = co_await crew::async_run(
            pool, [] { return 9; }, asio::experimental::as_tuple(asio::use_awaitable));
        tuple_error = e;
        tuple_value = v;
      },
      asio::detached);
  ioc.run();
  EXPECT_EQ(deferred_value, 42);
  EXPECT_FALSE(tuple_error);
  EXPECT_EQ(tuple_value, 9);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(asio_test::tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
