// Seed scenario: "terminating a worker".
//
// Worker::terminate() is cooperative. It does two things: it signals the worker's stop token and
// it closes the parent port. A worker therefore stops when it either
//   (a) checks ctx.stop_token() in its loop, or
//   (b) is blocked in ctx.parent().receive(), which the closed port wakes with an empty result.
// terminate() returns a Future<int> that becomes ready once the worker's thread has finished,
// with exit code 1 (terminated, as in Node; 0 is for a worker function that returned on its own).
//
// What terminate() cannot do: a C++ thread cannot be killed safely. A worker that spins in code
// that never looks at its stop token or its port (a third-party call stuck in a loop, say) keeps
// running, and terminate().get() and the Worker's destructor would wait for it forever. Work that
// must be killable belongs in another process: crew::ProcessPool (coming) runs tasks in child
// processes it can SIGKILL, which is the only way to stop code that does not cooperate.
//
// Node.js equivalent: `const code = await worker.terminate();` (Node can stop JavaScript at any
// point because V8 checks for termination; native code in Node has the same limit as here).

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stop_token>
#include <string>

#include <crew/crew.hpp>

namespace {

// Something to do in small slices, so the stop token is checked often.
std::uint64_t churn(std::uint64_t x) {
  for (int i = 0; i < 10'000; ++i) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
  return x;
}

}  // namespace

int main() {
  int failures = 0;

  // (a) A worker that loops until its stop token fires.
  {
    std::atomic<std::uint64_t> slices{0};
    crew::Worker busy(
        [&slices](crew::WorkerContext& ctx) {
          std::uint64_t x = ctx.id();
          ctx.parent().post(crew::Message("started"));
          const std::stop_token stop = ctx.stop_token();
          while (!stop.stop_requested()) {
            x = churn(x);
            slices.fetch_add(1, std::memory_order_relaxed);
          }
          std::printf("worker (a): stop requested after %llu slices (checksum %llx), leaving\n",
                      static_cast<unsigned long long>(slices.load(std::memory_order_relaxed)),
                      static_cast<unsigned long long>(x & 0xffff));
        },
        {.name = "crew-busy"});
    // Wait until the worker really runs its loop (no sleeping to "give it time").
    std::optional<crew::Message> hello = busy.receive();
    std::printf("main: worker (a) says '%s'; terminating it\n",
                hello ? hello->as<std::string>().c_str() : "(nothing)");
    const int code = busy.terminate().get();
    std::printf("main: worker (a) exit code %d\n", code);
    if (!hello || code != 1) {
      std::printf("FAIL: expected a 'started' message and exit code 1\n");
      ++failures;
    }
    // A second terminate() (or the destructor) is harmless and reports the same code.
    if (busy.terminate().get() != 1 || busy.join() != 1) {
      std::printf("FAIL: terminate()/join() after the end must report 1 again\n");
      ++failures;
    }
  }

  // (b) A worker blocked in receive(): the closed port wakes it.
  {
    std::atomic<bool> woke_empty{false};
    crew::Worker waiter(
        [&woke_empty](crew::WorkerContext& ctx) {
          ctx.parent().post(crew::Message("waiting for a message"));
          std::optional<crew::Message> m = ctx.parent().receive();  // blocks until terminate()
          woke_empty.store(!m.has_value());
          std::printf("worker (b): receive() returned %s, leaving\n",
                      m ? "a message" : "empty (port closed)");
        },
        {.name = "crew-waiter"});
    std::optional<crew::Message> hello = waiter.receive();
    std::printf("main: worker (b) says '%s'; terminating it\n",
                hello ? hello->as<std::string>().c_str() : "(nothing)");
    // The worker may or may not have entered receive() yet; either way it gets an empty result
    // (closing wakes a blocked receive(); a later receive() on a closed, drained port returns at
    // once), so no timing assumption is needed.
    const int code = waiter.terminate().get();
    std::printf("main: worker (b) exit code %d\n", code);
    if (code != 1 || !woke_empty.load()) {
      std::printf("FAIL: expected exit code 1 and an empty receive()\n");
      ++failures;
    }
  }

  // (c) For contrast: a worker whose function returns on its own exits with 0, and terminate()
  // on a finished worker just reports that code.
  {
    crew::Worker quick([](crew::WorkerContext&) {}, {.name = "crew-quick"});
    const int joined = quick.join();
    const int code = quick.terminate().get();
    std::printf("main: worker (c) returned by itself: join() = %d, terminate() = %d\n", joined,
                code);
    if (joined != 0 || code != 0) {
      std::printf("FAIL: expected exit code 0 for a worker that returned\n");
      ++failures;
    }
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
