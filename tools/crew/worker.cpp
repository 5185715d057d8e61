// `crew worker`: runs the jobs of a Redis queue (crew::redis::Worker) with the tasks `crew serve`
// offers: the built-in ones and those of --plugin libraries. Process isolation re-executes this
// binary as the task worker (main.cpp: run_task_worker), with the plugin list in the same
// environment variable `crew serve` uses, so both commands share that path.
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <crew/process/tasks.hpp>
#include <crew/redis/stats.hpp>
#include <crew/redis/worker.hpp>

#include "commands.hpp"
#include "metrics_http.hpp"
#include "tasks.hpp"

namespace crew::tool {
namespace {

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE: Redis cannot be reached
constexpr int kExitConfig = 78;       // EX_CONFIG: a plugin that does not load

struct WorkerConfig {
  std::string url = "redis://127.0.0.1:6379";
  std::string queue = "default";
  std::vector<std::string> plugins;
  std::size_t workers = 0;
  std::string isolation = "process";
  std::int64_t lease_ms = 30'000;
  std::int64_t prefetch_ms = 2;
  std::int64_t inline_us = 1'000;
  std::int64_t shutdown_ms = 10'000;
  std::string metrics_host = "127.0.0.1";
  int metrics_port = -1;  // -1: no metrics endpoint
};

// One scrape: this worker's counters, then the queue's (when Redis answers).
std::string worker_metrics(const redis::Worker& worker, const std::string& queue) {
  const redis::WorkerStats w = worker.stats();
  std::string out =
      "# HELP crew_worker_jobs_total Executions of this worker by outcome.\n"
      "# TYPE crew_worker_jobs_total counter\n";
  for (const auto& [outcome, n] :
       {std::pair{"started", w.started}, std::pair{"completed", w.completed},
        std::pair{"failed", w.failed}, std::pair{"lost", w.lost}, std::pair{"released", w.released},
        std::pair{"refused", w.refused}}) {
    out += fmt::format("crew_worker_jobs_total{{outcome=\"{}\"}} {}\n", outcome, n);
  }
  out += fmt::format(
      "# HELP crew_worker_inlined_total Executions run on the thread that took them "
      "(--inline-us).\n"
      "# TYPE crew_worker_inlined_total counter\n"
      "crew_worker_inlined_total {}\n",
      w.inlined);
  out += fmt::format(
      "# HELP crew_worker_prefetch Jobs this worker may now hold beyond its --workers.\n"
      "# TYPE crew_worker_prefetch gauge\n"
      "crew_worker_prefetch {}\n",
      w.prefetch);
  out +=
      "# HELP crew_queue_up Whether Redis answered this scrape's queue query.\n"
      "# TYPE crew_queue_up gauge\n";
  try {
    const std::string queue_text = redis::prometheus_text(worker.queue_stats(), queue);
    out += "crew_queue_up 1\n" + queue_text;
  } catch (const std::exception& e) {
    spdlog::warn("crew worker: /metrics: the queue's numbers are unavailable: {}", e.what());
    out += "crew_queue_up 0\n";
  }
  return out;
}

int run_worker(const WorkerConfig& config) {
  Tasks tasks;
  try {
    serve_app::add_builtin_tasks(tasks);
    serve_app::load_plugins(config.plugins, tasks);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew worker: %s\n", e.what());
    return kExitConfig;
  }
  // Blocked before any thread exists, so only the sigwait below takes them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  redis::WorkerOptions options{.url = config.url,
                               .queue = config.queue,
                               .workers = config.workers,
                               .lease = std::chrono::milliseconds(config.lease_ms),
                               .isolation = config.isolation == "thread"
                                                ? redis::Isolation::thread
                                                : redis::Isolation::process,
                               .prefetch_window = std::chrono::milliseconds(config.prefetch_ms),
                               .inline_below = std::chrono::microseconds(config.inline_us)};
  std::string list;
  for (const auto& p : config.plugins) list += (list.empty() ? "" : ":") + p;
  options.env["CREW_SERVE_PLUGINS"] = list;
  std::unique_ptr<redis::Worker> worker;
  try {
    worker = std::make_unique<redis::Worker>(tasks, options);
  } catch (const redis::ConnectionError& e) {
    std::fprintf(stderr, "crew worker: cannot reach Redis: %s\n", e.what());
    return kExitUnavailable;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "crew worker: %s\n", e.what());
    return kExitUsage;
  }
  spdlog::info("crew worker {}: queue '{}', {} tasks, {} isolation", worker->id(), config.queue,
               tasks.size(), config.isolation);
  std::unique_ptr<MetricsEndpoint> metrics;
  if (config.metrics_port >= 0) {
    try {
      metrics = std::make_unique<MetricsEndpoint>(
          config.metrics_host, static_cast<std::uint16_t>(config.metrics_port),
          [&worker, &config] { return worker_metrics(*worker, config.queue); });
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "crew worker: %s (--metrics-host/--metrics-port)\n", e.what());
      worker->stop(std::chrono::milliseconds(0));
      return kExitUsage;
    }
    spdlog::info("crew worker: metrics on http://{}:{}/metrics", config.metrics_host,
                 metrics->port());
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info(
      "crew worker: signal {}: stopping (running jobs get {} ms, then go back to the "
      "queue)",
      sig, config.shutdown_ms);
  metrics.reset();
  worker->stop(std::chrono::milliseconds(config.shutdown_ms));
  const auto s = worker->stats();
  spdlog::info("crew worker: stopped; {} completed, {} failed, {} handed back", s.completed,
               s.failed, s.released);
  return kExitOk;
}

}  // namespace

Command add_worker_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "worker",
      "Run jobs from a Redis queue (crew::redis::Queue) with the built-in and plugin tasks. "
      "SIGINT/SIGTERM: stop taking jobs, finish running ones within --shutdown-timeout-ms, hand "
      "the rest back, exit 0.");
  auto config = std::make_shared<WorkerConfig>();
  cmd->add_option("--redis", config->url, "redis://[[user]:password@]host[:port][/db]")
      ->envname("CREW_REDIS_URL")
      ->capture_default_str();
  cmd->add_option("--queue", config->queue, "Queue name (keys under crew:{<name>}:)")
      ->envname("CREW_QUEUE")
      ->capture_default_str();
  cmd->add_option("--plugin", config->plugins,
                  "Shared library exporting `extern \"C\" void crew_register_tasks(crew::Tasks&)`"
                  " (repeatable)")
      ->envname("CREW_PLUGINS")
      ->delimiter(':');
  cmd->add_option("--workers", config->workers,
                  "Jobs at once: pool threads or processes (0: CREW_THREADS, else one per core)")
      ->envname("CREW_WORKERS")
      ->capture_default_str();
  cmd->add_option("--isolation", config->isolation,
                  "Where tasks run: process (a ProcessPool) or thread (a ThreadPool)")
      ->envname("CREW_ISOLATION")
      ->check(CLI::IsMember({"thread", "process"}))
      ->capture_default_str();
  cmd->add_option("--lease-ms", config->lease_ms,
                  "A running job's lease: a worker silent this long loses its jobs to others")
      ->envname("CREW_LEASE_MS")
      ->check(CLI::Range(std::int64_t{1'000}, std::int64_t{24} * 3'600'000))
      ->capture_default_str();
  cmd->add_option("--prefetch-ms", config->prefetch_ms,
                  "Hold as many jobs beyond --workers as this worker finishes in this long "
                  "(at most 64; 0: none): short jobs then travel many per Redis call")
      ->envname("CREW_PREFETCH_MS")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{60'000}))
      ->capture_default_str();
  cmd->add_option("--inline-us", config->inline_us,
                  "--isolation thread: a job expected to take less than this, arriving while the "
                  "worker is idle, runs on the thread that took it (0: never)")
      ->envname("CREW_INLINE_US")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{60'000'000}))
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout-ms", config->shutdown_ms,
                  "How long SIGTERM lets running jobs finish before handing them back")
      ->envname("CREW_SHUTDOWN_TIMEOUT_MS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--metrics-port", config->metrics_port,
                  "Serve GET /metrics (Prometheus) and /healthz on this port (0: any free port; "
                  "default: none)")
      ->envname("CREW_METRICS_PORT")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--metrics-host", config->metrics_host,
                  "Address of the metrics endpoint (numeric; it has no authentication)")
      ->envname("CREW_METRICS_HOST")
      ->capture_default_str();
  return {cmd, [config] { return run_worker(*config); }};
}

}  // namespace crew::tool
