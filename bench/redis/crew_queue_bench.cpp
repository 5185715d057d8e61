// crew_queue_bench: crew's half of bench/redis/run.sh, which runs it and bullmq_bench.js against
// the same redis-server and prints them side by side. See bench/README.md.
//
//   crew_queue_bench --url redis://127.0.0.1:PORT [--quick] [--only WORKLOAD]
//
// --only runs one workload (after the backlog it needs), for profiling Redis or the client.
// Prints one `key value` line per figure: `<workload>.rate` (jobs/s), `e2e.p50_us`/`e2e.p99_us`,
// `e2e.inlined` (the share of jobs the worker's fetch thread ran itself), `floor.p50_us` (the same
// hops with plain commands: see Bench::floor), and for every workload
// the Redis work it caused per job: `<workload>.calls` (commands, the ones the functions run
// included), `<workload>.cpu_us` (Redis CPU, user + sys) and `<workload>.cmd.<command>` (calls of
// one command). Exit 1 when a job is lost or wrong.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <crew/process.hpp>
#include <crew/redis.hpp>
#include <crew/redis/worker.hpp>

#include "bench_common.hpp"
// Internal, as in tests/redis: a plain connection for INFO, outside the measured clients.
#include "connection.hpp"

namespace {

using namespace std::chrono_literals;
using crew::redis::Isolation;
using crew_bench::Clock;
using crew_bench::seconds_since;

// The same small argument BullMQ gets as JSON {n, s}.
const std::string kPayload = "payload-0123456789";
// Results removed on completion, as BullMQ's removeOnComplete: true.
const crew::redis::JobOptions kRemoved{.retain = 0ms};
// Queue::submit_many in batches of this many jobs, one batch after the other, as BullMQ's addBulk.
constexpr int kBatch = 1'000;

crew::Tasks& tasks() {
  static crew::Tasks t = [] {
    crew::Tasks x;
    x.add("noop", [](int n, const std::string&) { return n; });
    return x;
  }();
  return t;
}

void emit(const std::string& key, double value) {
  std::printf("%s %.3f\n", key.c_str(), value);
  std::fflush(stdout);
}

// Redis's own account of its work: commands by name and CPU seconds, read with INFO.
struct RedisWork {
  std::map<std::string, long long> calls;
  double cpu_s = 0;
};

class Probe {
 public:
  explicit Probe(const std::string& url)
      : redis_(crew::redis::parse_url(url), {.functions = false}) {}

  RedisWork read() {
    RedisWork w;
    std::istringstream stats(info("commandstats"));
    for (std::string line; std::getline(stats, line);) {
      // cmdstat_<name>:calls=<n>,usec=...
      if (!line.starts_with("cmdstat_")) continue;
      const auto colon = line.find(':');
      const auto comma = line.find(',', colon);
      w.calls[line.substr(8, colon - 8)] = std::stoll(line.substr(colon + 7, comma - colon - 7));
    }
    std::istringstream cpu(info("cpu"));
    for (std::string line; std::getline(cpu, line);) {
      if (line.starts_with("used_cpu_sys:") || line.starts_with("used_cpu_user:")) {
        w.cpu_s += std::stod(line.substr(line.find(':') + 1));
      }
    }
    return w;
  }

  // Runs `body` and prints the Redis work it caused per job; INFO itself is left out.
  template <class Body>
  void measure(const std::string& workload, int jobs, Body&& body) {
    const RedisWork before = read();
    body();
    const RedisWork after = read();
    long long total = 0;
    for (const auto& [name, calls] : after.calls) {
      const auto it = before.calls.find(name);
      const long long delta = calls - (it == before.calls.end() ? 0 : it->second);
      if (name == "info" || delta == 0) continue;
      total += delta;
      emit(workload + ".cmd." + name, static_cast<double>(delta) / jobs);
    }
    emit(workload + ".calls", static_cast<double>(total) / jobs);
    emit(workload + ".cpu_us", (after.cpu_s - before.cpu_s) * 1e6 / jobs);
  }

 private:
  std::string info(const char* section) {
    const crew::redis::Reply reply = redis_.command({"INFO", section});
    if (reply.is_error()) throw std::runtime_error("INFO: " + reply.error());
    return reply.str();
  }

  crew::redis::Connection redis_;
};

struct Bench {
  std::string url;
  int jobs;
  int round_trips;
  Probe probe{url};

  void enqueue_one(const std::string& workload, const std::string& queue) {
    crew::redis::Queue q({.url = url, .name = queue});
    double s = 0;
    probe.measure(workload, jobs, [&] {
      const auto t = Clock::now();
      for (int i = 0; i < jobs; ++i) (void)q.submit(kRemoved, "noop", i, kPayload);
      s = seconds_since(t);
    });
    emit(workload + ".rate", jobs / s);
  }

  // Submits `jobs` jobs with submit_many; returns the seconds it took.
  double submit_batches(crew::redis::Queue& q) {
    const auto t = Clock::now();
    for (int first = 0; first < jobs; first += kBatch) {
      std::vector<std::tuple<int, std::string>> batch;
      for (int i = first; i < std::min(first + kBatch, jobs); ++i) batch.emplace_back(i, kPayload);
      (void)q.submit_many(kRemoved, "noop", batch);
    }
    return seconds_since(t);
  }

  void enqueue_bulk(const std::string& workload, const std::string& queue) {
    crew::redis::Queue q({.url = url, .name = queue});
    double s = 0;
    probe.measure(workload, jobs, [&] { s = submit_batches(q); });
    emit(workload + ".rate", jobs / s);
  }

  // A backlog for a processing run, not measured.
  void fill(const std::string& queue) {
    crew::redis::Queue q({.url = url, .name = queue});
    (void)submit_batches(q);
  }

  // Times a worker through `jobs` waiting jobs, from its construction to the last result Redis
  // accepted.
  void process(const std::string& workload, const std::string& queue, Isolation isolation,
               std::size_t workers) {
    double s = 0;
    probe.measure(workload, jobs, [&] {
      const auto t = Clock::now();
      crew::redis::Worker worker(
          tasks(), {.url = url, .queue = queue, .workers = workers, .isolation = isolation});
      auto last = worker.stats();
      auto progressed = Clock::now();
      while (last.completed < static_cast<std::uint64_t>(jobs)) {
        std::this_thread::sleep_for(1ms);
        const auto now = worker.stats();
        if (now.completed != last.completed) progressed = Clock::now();
        if (now.failed != 0 || Clock::now() - progressed > 30s) {
          throw std::runtime_error(workload + ": " + std::to_string(now.completed) + " of " +
                                   std::to_string(jobs) + " jobs completed, " +
                                   std::to_string(now.failed) + " failed");
        }
        last = now;
      }
      s = seconds_since(t);
      worker.stop(5s);
    });
    emit(workload + ".rate", jobs / s);
  }

  // A producer that waits for each result before it submits the next; one worker in this
  // process (thread isolation, concurrency 1).
  void end_to_end(const std::string& queue) {
    crew::redis::Queue q({.url = url, .name = queue});
    crew::redis::Worker worker(
        tasks(), {.url = url, .queue = queue, .workers = 1, .isolation = Isolation::thread});
    auto once = [&](int i) {
      if (q.run<int>(kRemoved, "noop", i, kPayload).get() != i) {
        throw std::runtime_error("e2e: a wrong result");
      }
    };
    for (int i = 0; i < 100; ++i) once(i);
    std::vector<double> us;
    us.reserve(round_trips);
    probe.measure("e2e", round_trips, [&] {
      for (int i = 0; i < round_trips; ++i) {
        const auto t = Clock::now();
        once(i);
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
      }
    });
    std::sort(us.begin(), us.end());
    emit("e2e.p50_us", us[us.size() / 2]);
    emit("e2e.p99_us", us[us.size() * 99 / 100]);
    // The share of the jobs the worker's fetch thread ran itself (WorkerOptions::inline_below).
    emit("e2e.inlined", static_cast<double>(worker.stats().inlined) / (round_trips + 100));
    worker.stop(5s);
  }

  // The same four one-way hops with nothing of a queue in them: the producer XADDs the job, a
  // worker thread blocked in XREAD answers with an XADD of its own, which the producer's blocked
  // XREAD receives; crew's connections, one thread per side and no function. What is left of a
  // waited-for job's time once the machine's hops and wake-ups are paid: the queue's own work.
  void floor() {
    using crew::redis::Connection;
    using crew::redis::Reply;
    const auto options = crew::redis::ConnectionOptions{.functions = false};
    const auto url_parsed = crew::redis::parse_url(url);
    const int total = round_trips + 100;
    // The id of the entry an XREAD BLOCK delivered (it reads one stream).
    const auto entry_id = [](const Reply& r) { return r[0][1][0][0].str(); };
    std::jthread worker([&] {
      Connection c(url_parsed, options);
      std::string last = "0-0";
      for (int i = 0; i < total; ++i) {
        last = entry_id(c.command({"XREAD", "BLOCK", "0", "STREAMS", "floor:jobs", last}));
        (void)c.command({"XADD", "floor:results", "*", "result", std::to_string(i)});
      }
    });
    Connection submit(url_parsed, options);
    Connection results(url_parsed, options);
    std::string last = "0-0";
    std::vector<double> us;
    us.reserve(round_trips);
    const auto once = [&](int i) {
      (void)submit.command({"XADD", "floor:jobs", "*", "n", std::to_string(i), "s", kPayload});
      last = entry_id(results.command({"XREAD", "BLOCK", "0", "STREAMS", "floor:results", last}));
    };
    for (int i = 0; i < 100; ++i) once(i);
    probe.measure("floor", round_trips, [&] {
      for (int i = 100; i < total; ++i) {
        const auto t = Clock::now();
        once(i);
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
      }
    });
    worker.join();
    (void)submit.command({"DEL", "floor:jobs", "floor:results"});
    std::sort(us.begin(), us.end());
    emit("floor.p50_us", us[us.size() / 2]);
  }
};

}  // namespace

int main(int argc, char** argv) {
  // Process isolation runs this program as its worker processes.
  if (crew::is_worker_process()) return crew::worker_main(tasks());
  std::string url;
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--url" && i + 1 < argc) {
      url = argv[++i];
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: crew_queue_bench --url redis://HOST:PORT [--quick] [--only WORKLOAD]\n");
      return a == "--help" ? 0 : crew_bench::kUsageError;
    }
  }
  if (url.empty()) {
    std::fprintf(stderr, "crew_queue_bench: --url is required\n");
    return crew_bench::kUsageError;
  }
  try {
    Bench b{.url = url, .jobs = quick ? 2'000 : 20'000, .round_trips = quick ? 500 : 5'000};
    const auto wanted = [&](const char* workload) { return only.empty() || only == workload; };
    // The jobs each enqueue leaves behind are the next processing run's backlog.
    if (wanted("enqueue_one")) b.enqueue_one("enqueue_one", "one");
    if (only == "process_c1") b.fill("one");
    if (wanted("process_c1")) b.process("process_c1", "one", Isolation::thread, 1);
    if (wanted("enqueue_bulk")) b.enqueue_bulk("enqueue_bulk", "bulk");
    if (only == "process_c32") b.fill("bulk");
    if (wanted("process_c32")) b.process("process_c32", "bulk", Isolation::thread, 32);
    if (wanted("process_proc_c1")) {
      b.fill("proc1");
      b.process("process_proc_c1", "proc1", Isolation::process, 1);
    }
    if (wanted("process_proc_c32")) {
      b.fill("proc32");
      b.process("process_proc_c32", "proc32", Isolation::process, 32);
    }
    if (wanted("e2e")) b.end_to_end("e2e");
    if (wanted("floor")) b.floor();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew_queue_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
