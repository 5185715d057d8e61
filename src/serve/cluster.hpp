// crew::Cluster — Node's cluster module and PM2's supervision for `crew serve --cluster N`: a
// primary process owns the listening socket and keeps N worker processes accepting on it,
// restarts them with backoff, reloads them one at a time on SIGHUP, and drains them on SIGTERM.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace crew::serve_app {

struct ClusterOptions {
  std::size_t workers = 2;
  /// A worker that exits sooner than this after starting is unstable.
  std::chrono::milliseconds min_uptime{1'000};
  /// This many unstable exits in a row stop the restarts: the primary exits 1 with the reason
  /// (PM2's "too many unstable restarts").
  std::size_t max_restarts = 10;
  /// First restart delay; x1.5 per unstable exit, capped at 15 s, reset after 30 s up.
  std::chrono::milliseconds restart_backoff{100};
  /// SIGTERM: how long workers get to drain before SIGKILL.
  std::chrono::milliseconds shutdown_timeout{10'000};
  /// A worker whose resident memory goes above this is reloaded gracefully (0: never).
  std::size_t max_memory_restart = 0;
};

/// What a cluster worker inherits from its primary.
struct ClusterWorkerEnv {
  int listen_fd = -1;
  int channel = -1;
  int id = 0;
};

/// Set in a process started by a Cluster primary; empty otherwise (the primary itself).
std::optional<ClusterWorkerEnv> cluster_worker_env();

/// Tells the primary this worker is ready (after its server started).
void cluster_worker_ready(const ClusterWorkerEnv& env);

/// Blocks until the primary asks this worker to drain, SIGTERM/SIGINT arrives, or the primary is
/// gone (channel closed). `signals` must already be blocked in every thread.
void cluster_worker_wait(const ClusterWorkerEnv& env);

/// The primary. Thread safety: one object, used from the main thread only.
class Cluster {
 public:
  /// `argv` re-executes this program as a worker (it sees cluster_worker_env()).
  Cluster(ClusterOptions options, std::vector<std::string> argv);
  /// Supervises until SIGTERM/SIGINT (drain every worker, exit 0) or too many unstable restarts
  /// (exit 1). `listen_fd` is the bound, listening socket the workers share. SIGHUP reloads.
  int run(int listen_fd);

 private:
  ClusterOptions options_;
  std::vector<std::string> argv_;
};

/// Binds and listens on host:port; returns the descriptor. Throws std::system_error.
int open_listener(const std::string& host, unsigned short port);

}  // namespace crew::serve_app
