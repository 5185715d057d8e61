// `crew serve`: the HTTP/1.1 compute service on Boost.Beast. I/O threads parse requests and write
// responses; tasks run on a Runner (ThreadPool, ProcessPool or Redis queue), never on an I/O
// thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <crew/process/cluster.hpp>

#include "auth.hpp"
#include "runner.hpp"

namespace crew::serve_app {

/// Everything `crew serve` can be told (flags > CREW_* environment > --config file > defaults).
struct ServeConfig {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  /// Where tasks run: "local" (this server's pool, `isolation`) or the URL of a Redis queue,
  /// redis://[[user]:password@]host[:port][/db], whose `crew worker`s run them.
  std::string backend = "local";
  std::string queue = "default";     ///< the Redis queue's name (a Redis backend only)
  std::string isolation = "thread";  ///< "thread" or "process" (the local backend)
  std::size_t workers = 0;           ///< pool threads or processes; 0: default_thread_count()
  std::size_t io_threads = 1;
  std::size_t max_queue = 1024;                      ///< tasks waiting; beyond it: 429
  std::size_t max_body = std::size_t{1} << 20;       ///< bytes; beyond it: 413
  std::size_t max_header = 16 * 1024;                ///< bytes; beyond it: 431
  std::chrono::milliseconds header_timeout{10'000};  ///< 408 when the headers take longer
  std::chrono::milliseconds body_timeout{30'000};    ///< 408 when the body takes longer
  std::chrono::milliseconds task_timeout{30'000};    ///< default per task; 504 beyond it; 0: none
  /// The most a client may ask for (?timeout_ms=, X-Timeout-Ms), and never "none" (0) while
  /// there is a limit: 400 naming it. 0 here: task_timeout is the limit (both 0: no limit).
  std::chrono::milliseconds max_task_timeout{0};
  /// A queue backend: how long a request waits for its job's result before it answers 202 with
  /// the job's state and Location instead (the job goes on); 0: as long as it takes.
  std::chrono::milliseconds max_wait{60'000};
  std::chrono::milliseconds shutdown_timeout{10'000};
  /// Thread isolation: replacement threads for tasks stuck past their timeout (they ignore their
  /// stop token), as PoolOptions::max_stuck_replacements (--max-stuck-threads); once all are in
  /// use /readyz answers 503. None: as many as `workers`.
  std::optional<std::size_t> max_stuck_replacements;
  /// Scheduling priority (nice, 0..19) of task threads and task worker processes; the I/O
  /// threads stay at the process's own. See docs/operations.md "Priorities".
  int task_nice = 0;
  std::vector<std::string> plugins;
  std::string log_format = "text";  ///< access log: "text", "json" or "off"
  std::size_t cluster = 0;          ///< worker processes sharing the port (0: no cluster)
  std::chrono::milliseconds min_uptime{1'000};  ///< cluster: sooner exits are unstable
  std::size_t max_restarts = 10;                ///< cluster: unstable exits in a row tolerated
  std::size_t max_rss_restart_bytes = 0;        ///< cluster: reload a worker above this RSS
  /// Bearer tokens, one a line: every route but /healthz then needs one (401 otherwise).
  std::string auth_token_file;
  bool metrics_public = false;    ///< /metrics needs no token (for a scraper)
  bool insecure_no_auth = false;  ///< allow a non-loopback --host without a token file
  /// HTTPS: a PEM certificate (chain) and its private key; both or neither (plain HTTP).
  std::string tls_cert;
  std::string tls_key;
  /// Process isolation: task workers start with jemalloc's heap profiling, so that
  /// Runner::heap_profile (`POST /api/workers/{id}/heap`) or SIGUSR2 writes a profile.
  bool heap_profiling = false;
  std::string heap_profile_dir;  ///< where profiles go; empty: $TMPDIR, else /tmp
};

/// The timeout limit `config` holds clients to (0: none): max_task_timeout, else task_timeout.
/// Throws std::invalid_argument, naming both flags, when the default task_timeout exceeds it.
std::chrono::milliseconds task_timeout_limit(const ServeConfig& config);

/// How often a cluster worker publishes its figures to the others: /metrics and /api/stats on
/// any worker show the others as of at most this long ago.
inline constexpr std::chrono::milliseconds kClusterPublishPeriod{500};

/// The service. start() binds and serves on its own I/O threads; drain() stops accepting and
/// waits for in-flight requests; the destructor stops everything.
///
/// Thread safety: start/drain/stop from one controlling thread; port()/ready() from any.
class Server {
 public:
  Server(ServeConfig config, std::unique_ptr<Runner> runner);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds host:port (port 0 picks a free one) and starts serving; with `listen_fd`, serves on
  /// that already-listening socket instead (a cluster worker). Throws std::system_error naming
  /// the address when it cannot bind.
  void start(int listen_fd = -1);
  [[nodiscard]] std::uint16_t port() const noexcept;
  /// Before start(), in a cluster worker: /metrics and /api/stats answer for the whole cluster
  /// (this server's figures plus the other workers' latest published ones).
  void join_cluster(ClusterWorker& worker);
  /// This server's figures as JSON: what a cluster worker publishes to the others.
  [[nodiscard]] std::string snapshot() const;
  /// Readiness for /readyz: true once started, false from drain() on.
  [[nodiscard]] bool ready() const noexcept;
  /// Stops accepting, answers new requests on open connections with 503, and waits up to
  /// `timeout` for in-flight requests. Returns true when everything drained in time.
  bool drain(std::chrono::milliseconds timeout);
  /// Closes every connection and stops the I/O threads (after drain() for a graceful exit).
  void stop();
  /// Reads --auth-token-file again (SIGHUP). Returns the number of tokens; on an error keeps
  /// the tokens it had and throws std::runtime_error saying what is wrong with the file.
  std::size_t reload_tokens();
  /// After a drain that ran out of time: drops queued tasks and stops running ones (see
  /// Runner::terminate).
  void terminate_tasks();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Registers built-ins and plugins, builds the runner, serves until SIGINT/SIGTERM, drains and
/// exits: the body of `crew serve`. Returns the process exit code.
int run_service(const ServeConfig& config);

/// The worker-process side of `crew serve --isolation process`: registers the same tasks
/// (plugins named in the environment) and serves the pool. Returns the exit code.
int run_task_worker();

}  // namespace crew::serve_app
