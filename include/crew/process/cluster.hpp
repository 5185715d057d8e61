// crew::Cluster — Node's cluster module with PM2's supervision: a primary process owns one
// listening socket and keeps N copies of this program accepting on it. Workers that die are
// restarted with backoff, SIGHUP (or reload()) replaces them one at a time with zero downtime,
// SIGTERM (or stop()) drains them. Workers publish a small state (for example their metrics) that
// the primary relays, so every worker can answer for the whole cluster.
//
//   crew::Cluster cluster({.workers = 4, .port = 8080});   // first thing in main
//   if (cluster.is_primary()) return cluster.run();
//   crew::ClusterWorker& me = cluster.worker();
//   serve_on(me.listen_fd());                              // accept on the shared socket
//   me.ready();
//   me.wait([&] { return my_stats_as_json(); });           // until drained or signalled
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <crew/memory.hpp>  // resident_memory_bytes, which max_rss_restart_bytes checks
#include <crew/shared_buffer.hpp>

namespace crew {
inline namespace v0 {

/// Configuration of a Cluster. Every field has a sensible default.
struct ClusterOptions {
  /// Worker processes; 0 means default_thread_count().
  std::size_t workers = 0;
  /// Where the primary listens (an IPv4 or IPv6 address). Port 0 picks a free port (port()).
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  /// Instead of host/port: a socket that is already bound and listening; the cluster owns it.
  int listen_fd = -1;
  /// How a worker is started (argv[0] is shown by ps; the program run is always this one,
  /// /proc/self/exe). Empty: this program's own command line.
  std::vector<std::string> argv{};
  /// A worker that exits sooner than this after starting is unstable.
  std::chrono::milliseconds min_uptime{1'000};
  /// This many unstable exits in a row stop the restarts: run() returns 1 with the reason
  /// logged (PM2's "too many unstable restarts").
  std::size_t max_restarts = 10;
  /// First restart delay after an unstable exit; x1.5 per further one, capped at 15 s, reset
  /// after 30 s up.
  std::chrono::milliseconds restart_backoff{100};
  /// stop() or SIGTERM: how long workers get to drain before SIGKILL.
  std::chrono::milliseconds shutdown_timeout{10'000};
  /// A worker whose resident memory goes above this many bytes is reloaded gracefully (0: never;
  /// PM2's max_memory_restart). Named as ProcessPoolOptions::max_rss_restart_bytes, its twin.
  std::size_t max_rss_restart_bytes = 0;
};

/// Another worker's latest published state (see ClusterWorker::publish).
struct ClusterPeer {
  int id = 0;
  int pid = 0;
  std::string state;
  std::chrono::steady_clock::time_point received{};
};

/// True in a process started by a Cluster primary (until its Cluster is constructed, which takes
/// the inherited descriptors and clears the variables so that its own children are not workers).
[[nodiscard]] bool is_cluster_worker() noexcept;

/// The worker side: the inherited socket and the channel to the primary.
/// Thread safety: every member may be called from any thread; wait() from one thread at a time.
class ClusterWorker {
 public:
  /// Why wait() returned: the primary asked this worker to drain (reload, stop, memory limit),
  /// SIGTERM/SIGINT reached it directly, or the primary is gone.
  enum class Stop { drain, signal, primary_gone };

  /// 1, 2, ... in start order; a replacement gets a new id.
  [[nodiscard]] int id() const noexcept { return id_; }
  /// The listening socket every worker shares: accept connections on it.
  [[nodiscard]] int listen_fd() const noexcept { return listen_fd_; }
  /// Tells the primary this worker serves; a reload waits for it before stopping an old worker.
  void ready();
  /// Publishes this worker's state (at most kMaxState bytes; longer throws std::length_error).
  /// The primary keeps the latest and relays it to every other worker's peers().
  void publish(const std::string& state);
  /// The latest state of every other live worker that published one, by id.
  [[nodiscard]] std::vector<ClusterPeer> peers() const;
  /// Blocks until the worker must stop (see Stop), then returns so that the caller can drain.
  /// Meanwhile publishes `state()` every `every` (if given; one that throws is logged and skipped)
  /// and receives the peers' states.
  Stop wait(const std::function<std::string()>& state = {},
            std::chrono::milliseconds every = std::chrono::milliseconds(500));

  /// Connection balancing. Which worker accepts a connection from the shared socket is the
  /// kernel's choice, and a burst of new connections can land mostly on one worker (whichever is
  /// awake first), which then serves them all while the others idle. Workers that count their
  /// open connections here, say whether they accept, and ask accept_later() before each accept
  /// even out. The counts live in a page of shared memory: no message, no system call.
  void connection_opened() noexcept;
  void connection_closed() noexcept;
  void accepting(bool on) noexcept;
  /// True when another accepting worker holds at least two connections fewer than this one:
  /// the caller waits a moment (crew serve: 1 ms, then it accepts one connection and asks
  /// again) so that worker takes the next ones. A worker whose count does not move for 100 ms
  /// while others wait for it (stuck, or busy) is not waited for until it moves again.
  [[nodiscard]] bool accept_later() noexcept;

  static constexpr std::size_t kMaxState = 64 * 1024;

 private:
  friend class Cluster;
  ClusterWorker(int id, int listen_fd, int channel)
      : id_(id), listen_fd_(listen_fd), channel_(channel) {}
  void receive(const char* data, std::size_t size);

  int id_;
  int listen_fd_;
  int channel_;
  mutable std::mutex mutex_;
  std::vector<ClusterPeer> peers_;
  SharedBuffer board_;                          // every worker's connection count (see Cluster)
  int slot_ = -1;                               // this worker's slot on the board; -1: no balancing
  std::atomic<std::int64_t> waited_for_{-1};    // the count accept_later() last waited on
  std::atomic<std::int64_t> waiting_since_{0};  // steady_clock ticks: since when
};

/// One object per program, constructed at the top of main before any thread starts (it blocks
/// SIGHUP, SIGTERM and SIGINT so that run() and ClusterWorker::wait() can take them).
/// Thread safety: run() from one thread; stop() and reload() from any.
class Cluster {
 public:
  /// In the primary, opens the listening socket (throws std::system_error naming the address,
  /// std::invalid_argument for a bad host or option); in a worker, picks up what it inherited.
  explicit Cluster(ClusterOptions options = {});
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  [[nodiscard]] bool is_primary() const noexcept { return worker_ == nullptr; }
  /// The port the primary listens on.
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  /// The primary: starts the workers and supervises them until stop(), SIGTERM or SIGINT (drain
  /// every worker; 0 when all drained in time, 1 when some had to be killed) or too many unstable
  /// restarts (1). A worker exiting with 78 (EX_CONFIG) cannot start: the cluster stops with 78.
  /// SIGHUP and reload() replace the workers one at a time. Throws std::logic_error in a worker.
  int run();
  /// As SIGTERM: drain every worker and make run() return.
  void stop();
  /// As SIGHUP: a rolling reload.
  void reload();
  /// This process's worker side. Throws std::logic_error in the primary.
  [[nodiscard]] ClusterWorker& worker();

 private:
  ClusterOptions options_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: stop()/reload() to run()
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> reload_requested_{false};
  std::uint16_t port_ = 0;
  std::unique_ptr<ClusterWorker> worker_;
  SharedBuffer board_;  // the primary's: one slot per live worker (connection balancing)
};

}  // namespace v0
}  // namespace crew
