// crew_messaging: message passing between threads and processes, crew next to anchors written
// here (a mutex + condition_variable queue, memcpy, a private futex), same workloads, same run.
// Prints the median of each figure over the reps, the crew/anchor ratio and the target verdict.
//
//   1  ping-pong round trips between two threads, blocking receive: MessagePort with an integer
//      Message, a pair of Channel<int>, a pair of mutex+condvar queues (anchor); p50/p99, rate
//   2  one-way throughput, one producer thread, one consumer: Channel<int> item by item and in
//      user-side batches (Channel<std::vector<int>>), mutex+deque queue (anchor), MessagePort
//   3  moving a 1/16/64 MiB Buffer through a MessagePort against copying its bytes into a new
//      Buffer
//   4  SharedBuffer wait/notify ping-pong between two processes (fork) against two threads
//
// Usage: crew_messaging [--quick] [--reps N] [--only LIST] [--help] [--version]
// Exit status: 0 all results correct, 1 a workload computed a wrong result, 64 usage error.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <crew/atomics.hpp>
#include <crew/buffer.hpp>
#include <crew/channel.hpp>
#include <crew/message.hpp>
#include <crew/port.hpp>
#include <crew/shared_buffer.hpp>

#include "bench_common.hpp"

namespace {

using crew_bench::check;
using crew_bench::Clock;
using crew_bench::fixed;
using crew_bench::g_results_ok;
using crew_bench::median;
using crew_bench::seconds_since;
using crew_bench::verdict;

constexpr int kWorkloads = 4;

// ---------------------------------------------------------------------------------------------
// Configuration and helpers

struct Sizes {
  std::size_t round_trips = 100'000;                  // W1
  std::size_t one_way = 10'000'000;                   // W2
  std::size_t batch = 1024;                           // W2, ints per vector
  std::vector<std::size_t> buffer_mib = {1, 16, 64};  // W3
  std::size_t futex_round_trips = 20'000;             // W4
};

struct Config {
  int reps = 5;
  // W1 and W4 collect 100k / 20k latency samples per rep, and a round trip can take 50 us on a
  // VM whose idle vCPUs halt: 3 reps keep the default run under 90 s there.
  int latency_reps = 3;
  bool quick = false;
  std::set<int> only;  // empty: all workloads
  Sizes sizes;
};

// The q-quantile (0..1) of `v`, nearest rank; reorders `v`.
double quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0.0;
  auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// Very small ratios (a move against a copy) read better as a fraction: "1/740x".
std::string ratio_text(double r) {
  if (!std::isfinite(r)) return "n/a";
  if (r > 0 && r < 0.1) return "1/" + fixed(1.0 / r, 0) + "x";
  return fixed(r, 2) + "x";
}

// One line of the table. `ratio` is crew / anchor for the row's metric: for rates above 1 means
// crew is faster, for times and latencies (marked) below 1 means crew is faster.
struct Row {
  std::string workload;
  std::string system;
  std::string value;
  std::string ratio;
  std::string target;
  std::string verdict;
};

std::vector<Row> g_rows;

void add_row(Row r) {
  g_rows.push_back(std::move(r));
}

// Runs every system `reps` times, interleaved (crew_bench::interleave). Each system returns
// several figures per rep (p50, p99, rate); the result is, per system, the median of each figure
// over the reps.
using Figures = std::vector<double>;

std::vector<Figures> repeat(const std::string& name, int reps,
                            const std::vector<std::function<Figures()>>& systems) {
  const auto samples = crew_bench::interleave(name, reps, systems);
  std::vector<Figures> result(systems.size());
  for (std::size_t s = 0; s < systems.size(); ++s) {
    const std::size_t figures = samples[s].empty() ? 0 : samples[s].front().size();
    for (std::size_t f = 0; f < figures; ++f) {
      std::vector<double> one;
      for (const auto& rep : samples[s]) one.push_back(rep[f]);
      result[s].push_back(median(one));
    }
  }
  return result;
}

// Latency samples of one run, in nanoseconds, and the run's wall time.
struct Latencies {
  std::vector<double> ns;
  double seconds = 0;

  // {p50 us, p99 us, round trips per second}
  Figures figures() {
    const double n = static_cast<double>(ns.size());
    const double p50 = quantile(ns, 0.50) / 1e3;
    const double p99 = quantile(ns, 0.99) / 1e3;
    return {p50, p99, seconds > 0 ? n / seconds : 0.0};
  }
};

std::string latency_text(const Figures& f) {
  return "p50 " + fixed(f[0], 2) + " / p99 " + fixed(f[1], 2) + " us, " + fixed(f[2] / 1e3, 1) +
         "k rt/s";
}

// ---------------------------------------------------------------------------------------------
// The anchor queue: what a project writes when it has no library, one mutex, a deque and a
// condition variable; notify outside the lock.

template <class T>
class MutexQueue {
 public:
  void push(T value) {
    {
      std::lock_guard lock(mutex_);
      items_.push_back(std::move(value));
    }
    ready_.notify_one();
  }

  T pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [this] { return !items_.empty(); });
    T value = std::move(items_.front());
    items_.pop_front();
    return value;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<T> items_;
};

// ---------------------------------------------------------------------------------------------
// W1: ping-pong between two threads, blocking receive on both sides.
//
// The main thread sends i and waits for i + 1; the echo thread receives and answers with v + 1.
// Every round trip is timed; the first `warmup` ones are not recorded. On a wrong reply, `release`
// must unblock the echo thread so that it can be joined.

template <class Send, class Receive, class Echo, class Release>
Latencies ping_pong(std::size_t n, Send send, Receive receive, Echo echo, Release release,
                    const std::string& what) {
  const std::size_t warmup = std::min<std::size_t>(1000, n / 10);
  const std::size_t total = n + warmup;
  std::jthread echo_thread([&] { echo(total); });
  Latencies out;
  out.ns.reserve(n);
  bool ok = true;
  Clock::time_point start;
  for (std::size_t i = 0; i < total; ++i) {
    if (i == warmup) start = Clock::now();
    const auto t0 = Clock::now();
    const int v = static_cast<int>(i);
    if (!send(v)) {
      ok = false;
      break;
    }
    const std::optional<int> back = receive();
    const auto t1 = Clock::now();
    if (!back || *back != v + 1) {
      ok = false;
      break;
    }
    if (i >= warmup) out.ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
  out.seconds = seconds_since(start);
  if (!ok) release(total);
  check(ok && out.ns.size() == n, what + ": every reply is the request + 1");
  return out;
}

Latencies w1_port(std::size_t n) {
  crew::MessageChannel ch;
  auto result = ping_pong(
      n, [&](int v) { return ch.port1.post(crew::Message(v)); },
      [&]() -> std::optional<int> {
        auto m = ch.port1.receive();
        if (!m || !m->is<std::int64_t>()) return std::nullopt;
        return m->as<int>();
      },
      [&](std::size_t count) {
        for (std::size_t k = 0; k < count; ++k) {
          auto m = ch.port2.receive();
          if (!m) return;
          if (!ch.port2.post(crew::Message(m->as<int>() + 1))) return;
        }
      },
      [&](std::size_t) { ch.port1.close(); }, "W1 MessagePort");
  return result;
}

Latencies w1_channel(std::size_t n) {
  crew::Channel<int> there, back;
  auto result = ping_pong(
      n, [&](int v) { return there.post(v); }, [&] { return back.receive(); },
      [there, back](std::size_t count) mutable {
        for (std::size_t k = 0; k < count; ++k) {
          auto v = there.receive();
          if (!v || !back.post(*v + 1)) return;
        }
      },
      [&](std::size_t) { there.close(); }, "W1 Channel<int>");
  return result;
}

Latencies w1_mutex(std::size_t n) {
  MutexQueue<int> there, back;
  return ping_pong(
      n,
      [&](int v) {
        there.push(v);
        return true;
      },
      [&]() -> std::optional<int> { return back.pop(); },
      [&](std::size_t count) {
        for (std::size_t k = 0; k < count; ++k) back.push(there.pop() + 1);
      },
      [&](std::size_t count) {
        for (std::size_t k = 0; k < count; ++k) there.push(0);
      },
      "W1 mutex queue");
}

void workload_round_trip(const Config& cfg) {
  const std::size_t n = cfg.sizes.round_trips;
  const auto m =
      repeat("W1", cfg.latency_reps,
             {[&] { return w1_port(n).figures(); }, [&] { return w1_channel(n).figures(); },
              [&] { return w1_mutex(n).figures(); }});
  const std::string w = "1 ping-pong " + std::to_string(n / 1000) + "k";
  const double anchor = m[2][0];
  add_row({w, "crew MessagePort, Message(int)", latency_text(m[0]),
           ratio_text(m[0][0] / anchor) + " (p50)", "p50 <= 5 us", verdict(m[0][0] <= 5.0)});
  add_row({w, "crew 2 x Channel<int>", latency_text(m[1]), ratio_text(m[1][0] / anchor) + " (p50)",
           "p50 <= 5 us", verdict(m[1][0] <= 5.0)});
  add_row({w, "anchor: 2 x mutex+condvar queue", latency_text(m[2]), "", "floor", ""});
}

// ---------------------------------------------------------------------------------------------
// W2: one-way throughput. A producer thread posts 0..n-1; the main thread receives them and
// checks that they arrive complete and in order. The clock starts before the producer is
// released and stops when the last item has been received.

template <class Produce, class Consume>
double one_way(Produce produce, Consume consume) {
  std::atomic<bool> go{false};
  std::jthread producer([&] {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    produce();
  });
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  consume();
  return seconds_since(t0);
}

// {M items/s}
Figures w2_channel(std::size_t n) {
  crew::Channel<int> ch;
  std::size_t got = 0;
  bool in_order = true;
  const double s = one_way(
      [&] {
        for (std::size_t i = 0; i < n; ++i) ch.post(static_cast<int>(i));
      },
      [&] {
        while (got < n) {
          auto v = ch.receive();
          if (!v) break;
          in_order = in_order && *v == static_cast<int>(got);
          ++got;
        }
      });
  check(got == n && in_order, "W2 Channel<int>: all items, in order");
  return {static_cast<double>(n) / s / 1e6};
}

Figures w2_channel_batched(std::size_t n, std::size_t batch) {
  crew::Channel<std::vector<int>> ch;
  std::size_t got = 0;
  bool in_order = true;
  const double s = one_way(
      [&] {
        for (std::size_t i = 0; i < n;) {
          std::vector<int> items;
          items.reserve(batch);
          for (std::size_t k = 0; k < batch && i < n; ++k, ++i)
            items.push_back(static_cast<int>(i));
          ch.post(std::move(items));
        }
      },
      [&] {
        while (got < n) {
          auto items = ch.receive();
          if (!items) break;
          for (int v : *items) in_order = in_order && v == static_cast<int>(got++);
        }
      });
  check(got == n && in_order, "W2 Channel<vector<int>>: all items, in order");
  return {static_cast<double>(n) / s / 1e6};
}

Figures w2_mutex(std::size_t n) {
  MutexQueue<int> q;
  std::size_t got = 0;
  bool in_order = true;
  const double s = one_way(
      [&] {
        for (std::size_t i = 0; i < n; ++i) q.push(static_cast<int>(i));
      },
      [&] {
        for (; got < n; ++got) in_order = in_order && q.pop() == static_cast<int>(got);
      });
  check(got == n && in_order, "W2 mutex queue: all items, in order");
  return {static_cast<double>(n) / s / 1e6};
}

// A port queue holds whole Messages (a variant of ~56 bytes); a high-water mark keeps the
// producer from queueing millions of them.
Figures w2_port(std::size_t n) {
  crew::MessageChannel ch({.high_water_mark = 65536});
  std::size_t got = 0;
  bool in_order = true;
  const double s = one_way(
      [&] {
        for (std::size_t i = 0; i < n; ++i) ch.port1.post_wait(crew::Message(i));
      },
      [&] {
        while (got < n) {
          auto m = ch.port2.receive();
          if (!m) break;
          in_order = in_order && m->as<std::size_t>() == got;
          ++got;
        }
      });
  check(got == n && in_order, "W2 MessagePort: all messages, in order");
  return {static_cast<double>(n) / s / 1e6};
}

void workload_one_way(const Config& cfg) {
  const std::size_t n = cfg.sizes.one_way;
  const std::size_t port_n = n / 4;
  const std::size_t batch = cfg.sizes.batch;
  const auto m =
      repeat("W2", cfg.reps,
             {[&] { return w2_channel(n); }, [&] { return w2_channel_batched(n, batch); },
              [&] { return w2_mutex(n); }, [&] { return w2_port(port_n); }});
  const std::string w = "2 one-way " + std::to_string(n / 1'000'000) + "M ints";
  const double anchor = m[2][0];
  auto rate = [](double r) { return fixed(r, 2) + " M msgs/s"; };
  add_row({w, "crew Channel<int>, post/receive each", rate(m[0][0]), ratio_text(m[0][0] / anchor),
           ">= 5 M msgs/s", verdict(m[0][0] >= 5.0)});
  add_row({w, "crew Channel<vector<int>>, " + std::to_string(batch) + " per post (user batching)",
           rate(m[1][0]), ratio_text(m[1][0] / anchor), "info (no batch API)", ""});
  add_row({w, "anchor: mutex+condvar deque<int>", rate(m[2][0]), "", "anchor", ""});
  add_row({w,
           "crew MessagePort, Message(int), hwm 64k (" + std::to_string(port_n / 1000) + "k msgs)",
           rate(m[3][0]), ratio_text(m[3][0] / anchor), "info", ""});
}

// ---------------------------------------------------------------------------------------------
// W3: a Buffer posted through a MessagePort moves (same bytes, same address), so the cost must
// not depend on its size. The contrast is what a copying postMessage would do: a new Buffer and
// a memcpy of every byte (including the page faults of fresh memory, which are part of the cost
// of copying large blocks).

std::byte pattern_at(std::size_t i) {
  return static_cast<std::byte>((i * 131) & 0xff);
}

void fill_pattern(crew::Buffer& b) {
  // Touch every page and put recognisable bytes at the ends.
  std::memset(b.data(), 0x5a, b.size());
  for (std::size_t i = 0; i < 64 && i < b.size(); ++i) {
    b.data()[i] = pattern_at(i);
    b.data()[b.size() - 1 - i] = pattern_at(i + 1000);
  }
}

bool has_pattern(const crew::Buffer& b, std::size_t size) {
  if (b.size() != size || b.detached()) return false;
  for (std::size_t i = 0; i < 64 && i < size; ++i) {
    if (b.data()[i] != pattern_at(i) || b.data()[size - 1 - i] != pattern_at(i + 1000)) {
      return false;
    }
  }
  return b.data()[size / 2] == std::byte{0x5a};
}

// {us per transfer}: post on port1, receive on port2, take the Buffer out, on one thread, so the
// figure is the cost of the transfer itself and not a thread wake-up (W1 measures that).
Figures w3_transfer(std::size_t size, std::size_t iterations) {
  crew::MessageChannel ch;
  crew::Buffer b = crew::Buffer::uninitialized(size);
  fill_pattern(b);
  const std::byte* address = b.data();
  bool ok = true;
  const auto t0 = Clock::now();
  for (std::size_t k = 0; k < iterations && ok; ++k) {
    ok = ch.port1.post(crew::Message(std::move(b))) && b.detached();
    auto m = ch.port2.receive();
    if (!m || !m->is<crew::Buffer>()) {
      ok = false;
      break;
    }
    b = m->take_buffer();
  }
  const double s = seconds_since(t0);
  check(ok && b.data() == address && has_pattern(b, size),
        "W3 transfer " + std::to_string(size >> 20) + " MiB: same address, same bytes");
  return {s / static_cast<double>(iterations) * 1e6};
}

// {us per copy}
Figures w3_copy(std::size_t size, std::size_t iterations) {
  crew::Buffer src = crew::Buffer::uninitialized(size);
  fill_pattern(src);
  bool ok = true;
  const auto t0 = Clock::now();
  for (std::size_t k = 0; k < iterations; ++k) {
    crew::Buffer copy = crew::Buffer::uninitialized(size);
    std::memcpy(copy.data(), src.data(), size);
    ok = ok && has_pattern(copy, size);
  }
  const double s = seconds_since(t0);
  check(ok, "W3 copy " + std::to_string(size >> 20) + " MiB: same bytes");
  return {s / static_cast<double>(iterations) * 1e6};
}

void workload_buffer(const Config& cfg) {
  constexpr std::size_t kTransfers = 20'000;
  std::vector<double> transfer_us;
  const std::size_t smallest = cfg.sizes.buffer_mib.front();
  for (const std::size_t mib : cfg.sizes.buffer_mib) {
    const std::size_t size = mib << 20;
    // About 0.3 s of copying per rep for any size (the copy runs at a few GB/s).
    const std::size_t copies = std::max<std::size_t>(3, 1024 / mib);
    const auto m = repeat(
        "W3 " + std::to_string(mib) + " MiB", cfg.reps,
        {[&] { return w3_transfer(size, kTransfers); }, [&] { return w3_copy(size, copies); }});
    transfer_us.push_back(m[0][0]);
    const std::string w = "3 Buffer " + std::to_string(mib) + " MiB";
    const bool size_free = m[0][0] <= 2.0 * transfer_us.front() + 0.05;
    add_row({w, "crew post(Message(std::move(buffer)))", fixed(m[0][0], 3) + " us",
             ratio_text(m[0][0] / m[1][0]) + " (time)",
             mib == smallest ? "time independent of size"
                             : "<= 2x the " + std::to_string(smallest) + " MiB time",
             mib == smallest ? "" : verdict(size_free)});
    const double gbps = static_cast<double>(size) / (m[1][0] * 1e-6) / 1e9;
    add_row({w, "anchor: new Buffer + memcpy",
             fixed(m[1][0], 1) + " us (" + fixed(gbps, 2) + " GB/s)", "", "contrast", ""});
  }
}

// ---------------------------------------------------------------------------------------------
// W4: SharedBuffer wait/notify ping-pong. Two int32 cells a cache line apart: the initiator
// stores i into `ping` and notifies; the responder waits until `ping` is i, stores i into `pong`
// and notifies; the initiator waits until `pong` is i. Every wait has a timeout so that a lost
// wake-up shows as a failure instead of a hang.

constexpr std::size_t kPing = 0;
constexpr std::size_t kPong = 16;  // 64 bytes further
constexpr auto kWaitLimit = std::chrono::seconds(10);

// Waits until the cell holds `value`; false on timeout, or at once when the cell went past it
// (values only grow, so that is a wrong result, or the other side giving up).
bool wait_for_value(const crew::SharedBuffer& buf, std::size_t cell, std::int32_t value) {
  const auto deadline = Clock::now() + kWaitLimit;
  while (true) {
    const std::int32_t seen = crew::atomics::load<std::int32_t>(buf, cell);
    if (seen == value) return true;
    if (seen > value) return false;
    if (Clock::now() > deadline) return false;
    (void)crew::atomics::wait(buf, cell, seen, kWaitLimit);
  }
}

// The responder's side; returns true when it saw every value in order.
bool respond(const crew::SharedBuffer& buf, std::size_t total) {
  for (std::size_t i = 1; i <= total; ++i) {
    const auto v = static_cast<std::int32_t>(i);
    if (!wait_for_value(buf, kPing, v)) return false;
    crew::atomics::store(buf, kPong, v);
    crew::atomics::notify(buf, kPong);
  }
  return true;
}

Latencies initiate(const crew::SharedBuffer& buf, std::size_t n, std::size_t warmup, bool& ok) {
  Latencies out;
  out.ns.reserve(n);
  Clock::time_point start;
  for (std::size_t i = 1; i <= n + warmup; ++i) {
    if (i == warmup + 1) start = Clock::now();
    const auto v = static_cast<std::int32_t>(i);
    const auto t0 = Clock::now();
    crew::atomics::store(buf, kPing, v);
    crew::atomics::notify(buf, kPing);
    if (!wait_for_value(buf, kPong, v)) {
      ok = false;
      break;
    }
    const auto t1 = Clock::now();
    if (i > warmup) out.ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
  }
  out.seconds = seconds_since(start);
  return out;
}

Latencies w4_processes(std::size_t n) {
  const std::size_t warmup = std::min<std::size_t>(500, n / 10);
  auto buf = crew::SharedBuffer::create(128, {.across_processes = true});
  std::cout.flush();
  const pid_t child = fork();
  if (child < 0) {
    check(false, "W4 processes: fork failed");
    return {};
  }
  if (child == 0) _exit(respond(buf, n + warmup) ? 0 : 3);
  bool ok = true;
  Latencies out = initiate(buf, n, warmup, ok);
  if (!ok) kill(child, SIGKILL);
  int status = 0;
  const bool reaped = waitpid(child, &status, 0) == child;
  check(ok && reaped && WIFEXITED(status) && WEXITSTATUS(status) == 0 && out.ns.size() == n,
        "W4 processes: every value answered, child exited 0");
  return out;
}

Latencies w4_threads(std::size_t n, bool across_processes, const std::string& what) {
  const std::size_t warmup = std::min<std::size_t>(500, n / 10);
  auto buf = crew::SharedBuffer::create(128, {.across_processes = across_processes});
  std::atomic<bool> responder_ok{false};
  bool ok = true;
  Latencies out;
  {
    std::jthread responder([&] { responder_ok = respond(buf, n + warmup); });
    out = initiate(buf, n, warmup, ok);
    if (!ok) {
      // A value past the last one makes the responder give up at once.
      crew::atomics::store(buf, kPing, static_cast<std::int32_t>(n + warmup + 1));
      crew::atomics::notify(buf, kPing);
    }
  }
  check(ok && responder_ok && out.ns.size() == n, what + ": every value answered");
  return out;
}

void workload_futex(const Config& cfg) {
  const std::size_t n = cfg.sizes.futex_round_trips;
  const auto m =
      repeat("W4", cfg.latency_reps,
             {[&] { return w4_processes(n).figures(); },
              [&] { return w4_threads(n, false, "W4 threads, private futex").figures(); },
              [&] { return w4_threads(n, true, "W4 threads, shared futex").figures(); }});
  const std::string w = "4 wait/notify " + std::to_string(n / 1000) + "k";
  const double anchor = m[1][0];
  add_row({w, "crew 2 processes (fork), memfd SharedBuffer", latency_text(m[0]),
           ratio_text(m[0][0] / anchor) + " (p50)", "report (no target)", ""});
  add_row(
      {w, "anchor: 2 threads, .across_processes = false", latency_text(m[1]), "", "anchor", ""});
  add_row({w, "2 threads, .across_processes = true", latency_text(m[2]),
           ratio_text(m[2][0] / anchor) + " (p50)", "info", ""});
}

// ---------------------------------------------------------------------------------------------
// Output

void print_header(const Config& cfg) {
  std::cout
      << "crew_messaging: crew ports, channels, buffers and atomics vs hand-written anchors\n";
  crew_bench::print_machine(/*show_online_cpus=*/false);
  std::cout << "setup: " << cfg.reps << " reps per figure (" << cfg.latency_reps
            << " for the round trips of workloads 1 and 4), median shown"
            << (cfg.quick ? " (--quick sizes)" : "") << '\n';
  crew_bench::print_build_warning();
  std::cout << "ratio: crew/anchor of the figure shown (rates: > 1 crew faster; "
               "'(p50)' and '(time)': < 1 crew faster)\n\n";
}

void print_help() {
  std::cout <<
      R"(Usage: crew_messaging [options]

Measures crew's message passing next to hand-written anchors in the same run and prints
median figures, crew/anchor ratios and the project's targets.

Workloads:
  1  ping-pong between two threads, blocking receive: MessagePort, Channel<int>,
     mutex+condvar queues (100k round trips; p50/p99 latency, round trips/s)
  2  one-way throughput, 10M ints: Channel<int>, Channel<vector<int>> batches,
     mutex+deque queue, MessagePort (2.5M messages)
  3  a 1/16/64 MiB Buffer moved through a MessagePort vs memcpy into a new Buffer
  4  SharedBuffer wait/notify ping-pong between two processes (fork) vs two threads
     (20k round trips)

Options:
  --quick        3 reps and smaller sizes (5-15 s)
  --reps N       repetitions per figure (default 5, and 3 for workloads 1 and 4;
                 3 with --quick)
  --only LIST    run only these workloads, e.g. --only 1,4
  --help         show this help
  --version      show the version

Exit status: 0 all results correct, 1 a workload computed a wrong result, 64 usage error.
)";
}

// Returns the exit status to use when parsing ends the program (help, version, usage error).
std::optional<int> parse_args(int argc, char** argv, Config& cfg) {
  const crew_bench::Program program{.name = "crew_messaging",
                                    .version = "0.1",
                                    .workloads = kWorkloads,
                                    .only_example = "1,4",
                                    .print_help = print_help};
  crew_bench::CommonOptions options;
  const auto status = crew_bench::parse_options(program, argc, argv, options,
                                                [](std::string_view, const crew_bench::NextValue&) {
                                                  return crew_bench::OptionResult::unknown;
                                                });
  if (status) return status;
  cfg.quick = options.quick;
  cfg.only = options.only;
  if (cfg.quick) {
    cfg.reps = 3;
    cfg.sizes.round_trips = 20'000;
    cfg.sizes.one_way = 2'000'000;
    cfg.sizes.buffer_mib = {1, 64};
    cfg.sizes.futex_round_trips = 5'000;
  }
  if (options.reps) cfg.reps = cfg.latency_reps = *options.reps;
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  if (const auto status = parse_args(argc, argv, cfg)) return *status;
  crew_bench::enable_progress_on_tty();

  print_header(cfg);
  const auto t0 = Clock::now();
  auto selected = [&](int w) { return cfg.only.empty() || cfg.only.count(w) != 0; };
  if (selected(1)) workload_round_trip(cfg);
  if (selected(2)) workload_one_way(cfg);
  if (selected(3)) workload_buffer(cfg);
  if (selected(4)) workload_futex(cfg);

  crew_bench::print_table(g_rows);
  crew_bench::print_summary(t0);
  return g_results_ok ? 0 : 1;
}
