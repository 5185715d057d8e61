#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <pthread.h>

#include <crew/event_loop.hpp>
#include <crew/worker.hpp>

namespace {

using namespace std::chrono_literals;

TEST(Worker, SaysHelloAndExitsWithZero) {
  crew::Worker w([](crew::WorkerContext& ctx) { ctx.parent().post(crew::Message("hello")); });
  auto m = w.receive();
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->as<std::string>(), "hello");
  EXPECT_EQ(w.join(), 0);
  EXPECT_FALSE(w.receive().has_value());  // exited and drained: empty, not blocking
}

TEST(Worker, MessagesBothWaysWithDataAndName) {
  crew::Worker w(
      [](crew::WorkerContext& ctx) {
        char name[16] = {};
        pthread_getname_np(pthread_self(), name, sizeof name);
        const std::int64_t factor = ctx.data().as<std::int64_t>();
        while (auto m = ctx.parent().receive()) {
          ctx.parent().post(crew::Message(m->as<std::int64_t>() * factor));
        }
        ctx.parent().post(crew::Message(std::string(name)));
      },
      {.name = "doubler", .data = crew::Message(2)});
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(w.post(crew::Message(i)));
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(w.receive()->as<std::int64_t>(), 2 * i);
  auto done = w.terminate();  // closes the port: the worker's receive() returns empty
  EXPECT_EQ(done.get(), 1);   // terminated, as Node reports it
}

TEST(Worker, AllMessagesArriveBeforeTheExitEvent) {
  crew::EventLoop loop;
  constexpr int kN = 500;
  crew::Worker w([](crew::WorkerContext& ctx) {
    for (int i = 0; i < kN; ++i) ctx.parent().post(crew::Message(i));
  });
  std::vector<std::int64_t> got;
  int exit_code = -1;
  std::size_t messages_at_exit = 0;
  w.on_message([&](crew::Message m) { got.push_back(m.as<std::int64_t>()); }, loop);
  w.on_exit(
      [&](int code) {
        exit_code = code;
        messages_at_exit = got.size();
      },
      loop);
  loop.run_until([&] { return exit_code != -1; });
  EXPECT_EQ(exit_code, 0);
  EXPECT_EQ(messages_at_exit, static_cast<std::size_t>(kN));
  for (int i = 0; i < kN; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i);
}

TEST(Worker, ExceptionBecomesErrorEventAndExitCodeOne) {
  crew::EventLoop loop;
  crew::Worker w([](crew::WorkerContext&) { throw std::runtime_error("worker failed"); });
  std::string what;
  int code = -1;
  w.on_error(
      [&](std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          what = ex.what();
        }
      },
      loop);
  w.on_exit([&](int c) { code = c; }, loop);
  loop.run_until([&] { return code != -1; });
  EXPECT_EQ(what, "worker failed");
  EXPECT_EQ(code, 1);
  EXPECT_EQ(w.join(), 1);
}

TEST(Worker, ErrorEventComesBeforeExitEvent) {
  for (int i = 0; i < 50; ++i) {
    crew::EventLoop loop;
    crew::Worker w([](crew::WorkerContext& ctx) {
      (void)ctx.parent().receive();  // wait until every callback is installed
      throw std::runtime_error("boom");
    });
    std::string order;
    w.on_message([](crew::Message) {}, loop);
    w.on_error([&](std::exception_ptr) { order += 'E'; }, loop);
    w.on_exit([&](int) { order += 'X'; }, loop);
    w.post(crew::Message(1));
    loop.run_until([&] { return order.size() == 2; });
    ASSERT_EQ(order, "EX") << "iteration " << i;
  }
}

TEST(Worker, ExitEventSurvivesTheWorkerObject) {
  crew::EventLoop loop;
  int code = -1;
  {
    crew::Worker w([](crew::WorkerContext&) {});
    w.on_message([](crew::Message) {}, loop);
    w.on_exit([&](int c) { code = c; }, loop);
    EXPECT_EQ(w.join(), 0);
  }  // destroyed before the loop ran anything
  loop.run_until([&] { return code != -1; });
  EXPECT_EQ(code, 0);
}

TEST(Worker, TerminateWakesABlockedReceive) {
  std::atomic<bool> woke{false};
  crew::Worker w([&](crew::WorkerContext& ctx) {
    auto m = ctx.parent().receive();  // blocks: nobody posts
    woke = !m.has_value();
  });
  ASSERT_TRUE(w.online().wait_for(20s));
  auto code = w.terminate();
  ASSERT_TRUE(code.wait_for(20s)) << "terminate() did not wake the worker";
  EXPECT_EQ(code.get(), 1);
  EXPECT_TRUE(woke.load());
}

TEST(Worker, TerminateSignalsTheStopToken) {
  crew::Worker w([](crew::WorkerContext& ctx) {
    while (!ctx.stop_token().stop_requested()) std::this_thread::yield();
  });
  ASSERT_TRUE(w.online().wait_for(20s));
  auto code = w.terminate();
  ASSERT_TRUE(code.wait_for(20s));
  EXPECT_EQ(code.get(), 1);
}

TEST(Worker, WorkersCanCreateWorkers) {
  crew::Worker outer([](crew::WorkerContext& ctx) {
    crew::Worker inner(
        [](crew::WorkerContext& c) { c.parent().post(crew::Message("from inner")); });
    auto m = inner.receive();
    ctx.parent().post(std::move(*m));
    ctx.parent().post(crew::Message(crew::this_worker() == &ctx));
    ctx.parent().post(crew::Message(crew::is_main_thread()));
  });
  EXPECT_EQ(outer.receive()->as<std::string>(), "from inner");
  EXPECT_TRUE(outer.receive()->as<bool>());   // this_worker() is the context
  EXPECT_FALSE(outer.receive()->as<bool>());  // not the main thread
  EXPECT_EQ(outer.join(), 0);
  EXPECT_TRUE(crew::is_main_thread());
  EXPECT_EQ(crew::this_worker(), nullptr);
}

TEST(Worker, IdsAreDistinctAndStackSizeIsValidated) {
  crew::Worker a([](crew::WorkerContext&) {}, {.stack_size = 256 * 1024});
  crew::Worker b([](crew::WorkerContext&) {});
  EXPECT_NE(a.id(), b.id());
  EXPECT_THROW(crew::Worker([](crew::WorkerContext&) {}, {.stack_size = 100}),
               std::invalid_argument);
  EXPECT_THROW(crew::Worker(nullptr), std::invalid_argument);
}

TEST(Worker, DestructorTerminatesAndJoins) {
  std::atomic<bool> exited{false};
  {
    crew::Worker w([&](crew::WorkerContext& ctx) {
      while (ctx.parent().receive()) {
      }
      exited = true;
    });
  }
  EXPECT_TRUE(exited.load());
}

TEST(Worker, OnlineResolves) {
  crew::Worker w([](crew::WorkerContext& ctx) { (void)ctx.parent().receive(); });
  auto online = w.online();
  ASSERT_TRUE(online.wait_for(20s));
  online.get();
  w.terminate().get();
  auto late = w.online();  // after the fact: ready at once
  EXPECT_TRUE(late.ready());
}

}  // namespace
