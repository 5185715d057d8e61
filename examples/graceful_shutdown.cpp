// A service that shuts down gracefully on SIGINT / SIGTERM: stop accepting work, let the pool
// finish everything it already accepted, report, exit 0.
//
// The signals are blocked in every thread (the mask is set before any thread starts, and threads
// inherit it), so no async handler ever runs; the main thread takes them synchronously with
// sigwait(). That makes the shutdown path ordinary code that may lock, allocate and join.
//
//   example_graceful_shutdown          submit a batch, then send itself SIGTERM (unattended / CI)
//   example_graceful_shutdown --wait   keep serving until you press Ctrl-C or `kill -TERM <pid>`

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stop_token>
#include <thread>

#include <signal.h>
#include <unistd.h>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::now();

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kStart).count();
}

}  // namespace

int main(int argc, char** argv) {
  const bool wait_for_real_signal = argc > 1 && std::strcmp(argv[1], "--wait") == 0;
  if (argc > 1 && !wait_for_real_signal) {
    std::fprintf(stderr, "usage: %s [--wait]\n", argv[0]);
    return 64;
  }

  // 1. Block SIGINT and SIGTERM before the pool and the producer create their threads.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (const int err = pthread_sigmask(SIG_BLOCK, &signals, nullptr); err != 0) {
    std::fprintf(stderr, "pthread_sigmask: %s\n", std::strerror(err));
    return 1;
  }

  // A small pool with a bounded queue that makes the producer wait when it is full, so the
  // backlog at shutdown time is real but bounded.
  crew::ThreadPool pool({.min_workers = 2,
                         .max_workers = 2,
                         .max_queue = 16,
                         .on_full = crew::OnFull::wait,
                         .name = "service"});
  std::atomic<long> submitted{0};
  std::atomic<long> completed{0};

  // 2. The "service loop": a producer accepting requests and handing them to the pool.
  std::jthread producer([&](std::stop_token stop) {
    constexpr long kBatch = 40;
    for (long i = 0; !stop.stop_requested(); ++i) {
      pool.post([&completed] {
        std::this_thread::sleep_for(10ms);  // the request's work
        ++completed;
      });
      ++submitted;
      if (!wait_for_real_signal && i + 1 == kBatch) {
        // Unattended mode: behave like `kill -TERM <pid>` arriving mid-load.
        std::printf("[%4lld ms] submitted %ld requests, sending myself SIGTERM\n", now_ms(),
                    submitted.load());
        kill(getpid(), SIGTERM);
        return;
      }
      if (wait_for_real_signal) std::this_thread::sleep_for(25ms);  // a trickle of traffic
    }
  });

  if (wait_for_real_signal) {
    std::printf("serving as pid %d; press Ctrl-C or run `kill -TERM %d` to stop\n",
                static_cast<int>(getpid()), static_cast<int>(getpid()));
  }
  std::fflush(stdout);

  // 3. Wait for the signal on the main thread.
  int sig = 0;
  if (const int err = sigwait(&signals, &sig); err != 0) {
    std::fprintf(stderr, "sigwait: %s\n", std::strerror(err));
    return 1;
  }
  std::printf("[%4lld ms] received %s: stop accepting work\n", now_ms(),
              sig == SIGINT ? "SIGINT" : "SIGTERM");

  // 4. Stop intake: no new requests after this point.
  producer.request_stop();
  producer.join();
  const long total = submitted.load();
  const crew::PoolStats before = pool.stats();
  std::printf("[%4lld ms] %ld submitted, %ld completed, %zu still queued, %zu running - draining\n",
              now_ms(), total, completed.load(), before.queued, before.busy);

  // 5. close() refuses new work and runs everything already queued before joining the threads.
  // (A production service would bound this with a deadline and fall back to terminate(), which
  // rejects what is still queued with crew::PoolClosed; a C++ thread cannot be killed mid-task.)
  pool.close();
  std::printf("[%4lld ms] pool closed: %ld of %ld requests completed\n", now_ms(), completed.load(),
              total);

  bool refused = false;
  try {
    pool.run([] {}).wait();
  } catch (const crew::PoolClosed& e) {
    refused = true;
    std::printf("run() after close() throws crew::PoolClosed: %s\n", e.what());
  }

  const bool ok = completed.load() == total && refused;
  std::printf("%s\n", ok ? "OK: nothing was lost" : "FAILED");
  return ok ? 0 : 1;
}
