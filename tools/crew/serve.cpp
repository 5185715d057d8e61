// `crew serve`: the HTTP compute service (src/serve). Options come from flags, then CREW_*
// environment variables, then a --config file, then the defaults below.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <crew/pool.hpp>

#include "commands.hpp"
#include "server.hpp"

namespace crew::tool {

Command add_serve_command(CLI::App& app) {
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Run the HTTP compute service: POST /v1/tasks/{name} with {\"args\": [...]}; GET /v1/tasks, "
      "/v1/jobs/{id} (--backend redis://…), /healthz, /readyz, /metrics (Prometheus), "
      "/api/stats. SIGINT/SIGTERM drain and exit 0.");
  auto config = std::make_shared<serve_app::ServeConfig>();
  struct Millis {
    std::int64_t header = 10'000, body = 30'000, task = 30'000, max_task = 0, max_wait = 60'000,
                 shutdown = 10'000;
  };
  auto ms = std::make_shared<Millis>();
  serve->set_config("--config", "", "Read options from this TOML/INI file (key = value)");
  serve->add_option("--host", config->host, "Address to listen on")
      ->envname("CREW_HOST")
      ->capture_default_str();
  serve->add_option("--port", config->port, "TCP port (0: any free port)")
      ->envname("CREW_PORT")
      ->capture_default_str();
  serve
      ->add_option("--backend", config->backend,
                   "Where tasks run: local (this server's pool, see --isolation) or a Redis "
                   "queue, redis://[[user]:password@]HOST[:PORT][/DB], whose `crew worker`s run "
                   "them (then ?wait=false and GET /v1/jobs/{id} work too)")
      ->envname("CREW_BACKEND")
      ->check([](const std::string& v) -> std::string {
        if (v == "local" || v.starts_with("redis://")) return {};
        return "must be 'local' or a Redis URL redis://HOST[:PORT][/DB], not '" + v + "'";
      })
      ->capture_default_str();
  serve
      ->add_option("--queue", config->queue,
                   "With --backend redis://…: the queue's name, as `crew worker --queue`")
      ->envname("CREW_QUEUE")
      ->capture_default_str();
  serve
      ->add_option("--max-wait-ms", ms->max_wait,
                   "With --backend redis://…: how long a request waits for its job's result "
                   "before it answers 202 with the job's state and Location (the job goes on); "
                   "0: as long as it takes")
      ->envname("CREW_MAX_WAIT_MS")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{86'400'000}))
      ->capture_default_str();
  serve
      ->add_option("--isolation", config->isolation,
                   "Where tasks run: thread (a ThreadPool) or process (a ProcessPool)")
      ->envname("CREW_ISOLATION")
      ->check(CLI::IsMember({"thread", "process"}))
      ->capture_default_str();
  serve
      ->add_option("--workers", config->workers,
                   "Pool threads or processes (0: CREW_THREADS, else one per core)")
      ->envname("CREW_WORKERS")
      ->capture_default_str();
  serve->add_option("--io-threads", config->io_threads, "Threads doing HTTP I/O")
      ->envname("CREW_IO_THREADS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  serve->add_option("--max-queue", config->max_queue, "Tasks waiting before 429")
      ->envname("CREW_MAX_QUEUE")
      ->capture_default_str();
  serve->add_option("--max-body", config->max_body, "Largest request body in bytes (413 above)")
      ->envname("CREW_MAX_BODY")
      ->capture_default_str();
  serve->add_option("--max-header", config->max_header, "Largest request header in bytes (431)")
      ->envname("CREW_MAX_HEADER")
      ->capture_default_str();
  serve->add_option("--header-timeout-ms", ms->header, "408 when headers take longer")
      ->envname("CREW_HEADER_TIMEOUT_MS")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  serve->add_option("--body-timeout-ms", ms->body, "408 when the body takes longer")
      ->envname("CREW_BODY_TIMEOUT_MS")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  serve
      ->add_option("--task-timeout-ms", ms->task,
                   "Default task timeout, 504 above (per request: ?timeout_ms= or X-Timeout-Ms)")
      ->envname("CREW_TASK_TIMEOUT_MS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--max-task-timeout-ms", ms->max_task,
                   "Longest timeout a client may ask for, never none (400 beyond); default: "
                   "--task-timeout-ms")
      ->envname("CREW_MAX_TASK_TIMEOUT_MS")
      ->check(CLI::NonNegativeNumber);
  serve
      ->add_option("--max-stuck-threads", config->max_stuck_replacements,
                   "Thread isolation: threads added for tasks stuck past their timeout (they "
                   "ignore their stop request); once all are in use /readyz answers 503. "
                   "Default: --workers")
      ->envname("CREW_MAX_STUCK_THREADS")
      ->check(CLI::Range(0, 1024));
  serve
      ->add_option("--shutdown-timeout-ms", ms->shutdown,
                   "How long SIGTERM waits for in-flight requests")
      ->envname("CREW_SHUTDOWN_TIMEOUT_MS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--task-nice", config->task_nice,
                   "Scheduling priority of task threads and processes (nice 0..19); higher keeps "
                   "/healthz and parsing ahead of tasks on a saturated machine at some throughput")
      ->envname("CREW_TASK_NICE")
      ->check(CLI::Range(0, 19))
      ->capture_default_str();
  serve
      ->add_flag("--heap-profiling", config->heap_profiling,
                 "With --isolation process: task workers start with jemalloc's heap profiling "
                 "(Debian: libjemalloc2); POST /api/workers/{id}/heap or SIGUSR2 writes a profile "
                 "for jeprof (docs/operations.md, \"Heap profiles\")")
      ->envname("CREW_HEAP_PROFILING");
  serve
      ->add_option("--heap-profile-dir", config->heap_profile_dir,
                   "Where --heap-profiling writes profiles (default: $TMPDIR, else /tmp)")
      ->envname("CREW_HEAP_PROFILE_DIR");
  serve
      ->add_option("--plugin", config->plugins,
                   "Shared library exporting `extern \"C\" void crew_register_tasks(crew::Tasks&)`"
                   " (repeatable)")
      ->envname("CREW_PLUGINS")
      ->delimiter(':');
  serve->add_option("--log-format", config->log_format, "Access log: text, json or off")
      ->envname("CREW_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json", "off"}))
      ->capture_default_str();
  auto cluster = std::make_shared<std::string>("0");
  serve
      ->add_option("--cluster", *cluster,
                   "Worker processes sharing the port, or 'max' (one per core); 0: no cluster. "
                   "SIGHUP reloads them one at a time")
      ->envname("CREW_CLUSTER")
      ->check([](const std::string& v) -> std::string {
        if (v == "max" || v.find_first_not_of("0123456789") == std::string::npos) return {};
        return "must be a number or 'max'";
      })
      ->capture_default_str();
  auto min_uptime = std::make_shared<std::int64_t>(1000);
  serve->add_option("--min-uptime-ms", *min_uptime, "Cluster: a worker exiting sooner is unstable")
      ->envname("CREW_MIN_UPTIME_MS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--max-restarts", config->max_restarts,
                   "Cluster: unstable exits in a row before the primary gives up (exit 1)")
      ->envname("CREW_MAX_RESTARTS")
      ->capture_default_str();
  serve
      ->add_option("--max-memory-restart", config->max_rss_restart_bytes,
                   "Cluster: reload a worker whose resident memory goes above this many bytes "
                   "(ClusterOptions::max_rss_restart_bytes; 0: never)")
      ->envname("CREW_MAX_MEMORY_RESTART")
      ->capture_default_str();
  serve
      ->add_option("--auth-token-file", config->auth_token_file,
                   "Bearer tokens, one a line: every route but /healthz needs "
                   "'Authorization: Bearer <token>' (401 otherwise); SIGHUP re-reads the file")
      ->envname("CREW_AUTH_TOKEN_FILE");
  serve->add_flag("--metrics-public", config->metrics_public,
                  "With --auth-token-file: /metrics needs no token (for a scraper)");
  serve->add_flag("--insecure-no-auth", config->insecure_no_auth,
                  "Serve a non-loopback --host without --auth-token-file (refused otherwise)");
  serve
      ->add_option("--tls-cert", config->tls_cert,
                   "Serve HTTPS with this PEM certificate (then any intermediates); needs "
                   "--tls-key. Read at start (and by each new cluster worker)")
      ->envname("CREW_TLS_CERT");
  serve->add_option("--tls-key", config->tls_key, "The PEM private key of --tls-cert")
      ->envname("CREW_TLS_KEY");
  return {serve, [config, ms, cluster, min_uptime] {
            config->cluster = *cluster == "max" ? default_thread_count()
                                                : static_cast<std::size_t>(std::stoul(*cluster));
            config->min_uptime = std::chrono::milliseconds(*min_uptime);
            config->header_timeout = std::chrono::milliseconds(ms->header);
            config->body_timeout = std::chrono::milliseconds(ms->body);
            config->task_timeout = std::chrono::milliseconds(ms->task);
            config->max_task_timeout = std::chrono::milliseconds(ms->max_task);
            config->max_wait = std::chrono::milliseconds(ms->max_wait);
            config->shutdown_timeout = std::chrono::milliseconds(ms->shutdown);
            return serve_app::run_service(*config);
          }};
}

}  // namespace crew::tool
