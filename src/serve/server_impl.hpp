// Server::Impl: what the server's sessions, its monitor and its public API share. Private to
// src/serve: server.cpp and the Session (session.hpp) use it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <crew/future.hpp>

#include "metrics.hpp"
#include "monitor.hpp"
#include "server.hpp"

namespace crew::serve_app {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// What the server's tick needs of a session whose task is in flight.
class TaskWatch {
 public:
  virtual void post_hangup_check() = 0;

 protected:
  TaskWatch() = default;
  TaskWatch(const TaskWatch&) = default;
  TaskWatch& operator=(const TaskWatch&) = default;
  virtual ~TaskWatch() = default;
};

// What the monitor needs of a session that streams /api/events.
class EventSink {
 public:
  // Called from the monitor's thread: the session writes `event` on its own.
  virtual void post_event(std::shared_ptr<const std::string> event) = 0;

 protected:
  EventSink() = default;
  EventSink(const EventSink&) = default;
  EventSink& operator=(const EventSink&) = default;
  virtual ~EventSink() = default;
};

struct Server::Impl {
  // Declaration order is destruction order, reversed, and it matters: destroying `ioc` destroys
  // the handlers it still holds, and with them the last references to sessions, whose
  // destructors use the members declared before it. So `ioc` comes after everything a Session
  // touches, and only the objects bound to it (acceptor, timer) after `ioc`.
  Impl(ServeConfig c, std::unique_ptr<Runner> r)
      : config(std::move(c)), timeout_limit(task_timeout_limit(config)), runner(std::move(r)) {}

  ServeConfig config;
  const std::chrono::milliseconds timeout_limit;  // task_timeout_limit(config)
  Auth auth{config.auth_token_file};
  std::unique_ptr<asio::ssl::context> tls;  // set by start() with --tls-cert: HTTPS sessions
  std::unique_ptr<Runner> runner;
  std::vector<std::thread> threads;
  std::atomic<bool> started{false};
  std::atomic<bool> draining{false};
  std::atomic<int> inflight{0};
  std::atomic<int> sessions{0};
  // How to reach each open connection when draining (keyed by the session's address).
  std::mutex sessions_mutex;
  std::unordered_map<const void*, std::function<void()>> drainers;
  std::mutex drain_mutex;
  std::condition_variable drained;
  // Sessions with a task in flight and when it started, for the hang-up check in tick_lag().
  std::mutex watch_mutex;
  std::unordered_map<const void*, std::pair<std::weak_ptr<TaskWatch>, Clock::time_point>> watched;
  Metrics metrics;
  Monitor monitor;
  // Sessions streaming /api/events, each sent every new sample.
  std::mutex sinks_mutex;
  std::unordered_map<const void*, std::weak_ptr<EventSink>> sinks;
  // The sampling thread (run_monitor), stopped by stop().
  std::mutex monitor_mutex;
  std::condition_variable monitor_wake;
  bool monitor_stopping = false;
  std::thread monitor_thread;
  // POST /api/workers/{id}/heap: one profile at a time, written off the I/O threads.
  std::mutex heap_mutex;
  bool heap_busy = false;
  std::thread heap_thread;
  ClusterWorker* cluster = nullptr;  // set in a cluster worker: peers' snapshots for /metrics
  std::shared_ptr<spdlog::logger> access;
  const Clock::time_point born = Clock::now();
  const std::chrono::system_clock::time_point born_wall = std::chrono::system_clock::now();
  Clock::time_point lag_expected{};
  // One I/O thread: tell Asio, which then skips waking other threads for each handler.
  asio::io_context ioc{config.io_threads == 1 ? 1 : BOOST_ASIO_CONCURRENCY_HINT_DEFAULT};
  tcp::acceptor acceptor{ioc};
  asio::steady_timer lag_timer{ioc};
  asio::steady_timer accept_timer{ioc};  // a cluster worker ahead of its peers waits on it

  void accept();
  void tick_lag();
  // An I/O thread's loop. Every handler catches what it expects; should one still throw, only
  // its connection goes (its handler, holding the session, is gone) and the thread runs on,
  // rather than the exception ending the process and every other connection with it.
  void run_io() {
    for (;;) {
      try {
        ioc.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error(
            "crew serve: a connection's handler threw ({}); it is closed, the server "
            "goes on",
            e.what());
      }
    }
  }
  void request_done() {
    if (inflight.fetch_sub(1) == 1) notify_drain();
  }
  void session_closed(const void* key) {
    {
      std::lock_guard lock(sessions_mutex);
      drainers.erase(key);
    }
    if (cluster != nullptr) cluster->connection_closed();
    if (sessions.fetch_sub(1) == 1) notify_drain();
  }
  void watch(const void* key, std::weak_ptr<TaskWatch> session) {
    std::lock_guard lock(watch_mutex);
    watched.insert_or_assign(key, std::pair{std::move(session), Clock::now()});
  }
  void unwatch(const void* key) {
    std::lock_guard lock(watch_mutex);
    watched.erase(key);
  }
  void check_hangups(Clock::time_point now);
  // Empty when ready to take tasks; otherwise why not, for /readyz.
  std::string unready_reason() const {
    if (!started) return "starting";
    if (draining) return "draining: shutting down or reloading";
    return runner->unready_reason();
  }
  void notify_drain() {
    std::lock_guard lock(drain_mutex);
    drained.notify_all();
  }
  json snapshot();
  // This server's snapshot and, in a cluster, its peers' latest, by worker id.
  std::vector<json> all_snapshots();
  std::string render_metrics();
  json render_stats();
  // /api/stats from a set of snapshots (all_snapshots() or a kept sample's).
  json stats_of(std::vector<json> all);
  void run_monitor();
  void take_sample();
  // Starts writing worker's heap profile on `heap_thread`; false while another is being written.
  bool start_heap_profile(const std::string& worker, Future<std::string>& written) {
    std::lock_guard lock(heap_mutex);
    if (heap_busy) return false;
    if (heap_thread.joinable()) heap_thread.join();  // done: heap_busy is false
    heap_busy = true;
    Promise<std::string> promise;
    written = promise.get_future();
    heap_thread = std::thread([this, worker, promise = std::move(promise)]() mutable {
      std::exception_ptr error;
      std::string path;
      try {
        path = runner->heap_profile(worker);
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard l(heap_mutex);
        heap_busy = false;
      }
      // Settled outside the catch block and moved: the exception is then owned by the promise
      // alone. A copy left here would be released after the reader's, through a reference count
      // inside libstdc++ that ThreadSanitizer cannot see, and reported as a race.
      if (error) {
        promise.set_exception(std::move(error));
      } else {
        promise.set_value(std::move(path));
      }
    });
    return true;
  }
  void add_sink(const void* key, std::weak_ptr<EventSink> sink) {
    std::lock_guard lock(sinks_mutex);
    sinks.insert_or_assign(key, std::move(sink));
  }
  void remove_sink(const void* key) {
    std::lock_guard lock(sinks_mutex);
    sinks.erase(key);
  }
};

}  // namespace crew::serve_app
