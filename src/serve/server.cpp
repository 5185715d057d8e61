#include "server.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fmt/format.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/version.hpp>

#include "dashboard.hpp"
#include "metrics.hpp"
#include "monitor.hpp"
#include "tasks.hpp"
#include "tls.hpp"

namespace crew::serve_app {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string query_param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == key)
      return std::string(eq == std::string_view::npos ? "" : pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

std::string_view std_view(beast::string_view s) {
  return {s.data(), s.size()};
}

json error_body(std::string_view type, std::string_view message) {
  return json{{"error", {{"type", type}, {"message", message}}}};
}

// How a task's error is answered: the same on POST /v1/tasks/{name} and in GET /v1/jobs/{id}.
struct TaskError {
  http::status status;
  const char* outcome;  // the crew_tasks_total label
  std::string type;
  std::string message;
  bool retry_later = false;  // Retry-After: 1
};

// `source` names what threw, for an exception of no type crew knows: "task 'fib'".
TaskError task_error(const std::exception_ptr& error, std::string_view source) {
  try {
    std::rethrow_exception(error);
  } catch (const BadArguments& e) {
    return {http::status::bad_request, "bad_arguments", "BadArguments", e.what()};
  } catch (const QueueFull& e) {
    return {http::status::too_many_requests, "rejected", "QueueFull", e.what(), true};
  } catch (const TimedOut& e) {
    return {http::status::gateway_timeout, "timed_out", "TimedOut", e.what()};
  } catch (const PoolClosed& e) {
    return {http::status::service_unavailable, "rejected", "PoolClosed", e.what()};
  } catch (const Cancelled& e) {
    return {http::status::service_unavailable, "cancelled", "Cancelled", e.what()};
  } catch (const WorkerCrashed& e) {
    return {http::status::internal_server_error, "crashed", "WorkerCrashed", e.what()};
  } catch (const MemoryLimitExceeded& e) {
    return {http::status::internal_server_error, "crashed", "MemoryLimitExceeded", e.what()};
  } catch (const RemoteError& e) {
    return {http::status::internal_server_error, "failed", e.type_name(), e.remote_what()};
  } catch (const redis::ConnectionError& e) {  // --backend redis://…
    return {http::status::service_unavailable, "rejected", "ConnectionError", e.what(), true};
  } catch (const std::exception& e) {
    return {http::status::internal_server_error, "failed", detail::demangle(typeid(e)),
            fmt::format("{} threw: {}", source, e.what())};
  }
}

// GET /v1/jobs/{id} for a job that exists. Times are Unix milliseconds of the Redis clock.
json job_json(const redis::JobStatus& job) {
  auto ms = [](redis::JobStatus::Time t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  };
  json out{{"job_id", job.id},
           {"task", job.task},
           {"state", redis::to_string(job.state)},
           {"priority", job.priority},
           {"attempt", job.attempt},
           {"attempts", job.attempts},
           {"created_ms", ms(job.created)}};
  if (job.started) out["started_ms"] = ms(*job.started);
  if (job.finished) out["finished_ms"] = ms(*job.finished);
  if (job.due) out["due_ms"] = ms(*job.due);
  if (job.state == redis::JobState::completed) out["result"] = json::from_msgpack(job.result);
  if (!job.error_type.empty()) {
    // A dead job's error is its answer; any other's is an attempt that will be, or was, retried.
    const TaskError e = task_error(job.exception(), fmt::format("task '{}'", job.task));
    out[job.state == redis::JobState::dead ? "error" : "last_error"] = {{"type", e.type},
                                                                        {"message", e.message}};
  }
  return out;
}

}  // namespace

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

namespace {

constexpr std::chrono::milliseconds kDrainGrace{500};
constexpr std::chrono::milliseconds kAcceptLater{1};
constexpr std::size_t kKeptResponseBuffer = 64 * 1024;
// Task arguments are flat values and arrays; the bound keeps a body of a million '[' from
// overflowing the stack in the recursive steps after parsing (copy, msgpack encoding).
constexpr int kMaxJsonDepth = 64;
// ?attempts=: executions of one task at most, counting the first.
constexpr long long kMaxAttempts = 100;
// Idempotency-Key: a Redis job id's limit (crew::redis::JobOptions::job_id).
constexpr std::size_t kMaxJobIdBytes = 256;
// An event stream whose client reads nothing for this long is closed.
constexpr std::chrono::seconds kStreamWriteTimeout{30};

// `Executor` is the io_context's own executor with one I/O thread and a strand with more. A
// concrete executor type, and a plain socket rather than beast::tcp_stream (whose timeouts we do
// not use), keep type-erased executor calls off the per-request path. `Tls` picks the stream at
// compile time, so the plain session has no TLS branch or indirection left in it: with TLS, an
// ssl_stream over the socket, a handshake first, and every response through async_write.
template <class Executor, bool Tls>
class Session : public TaskWatch,
                public EventSink,
                public std::enable_shared_from_this<Session<Executor, Tls>> {
  using Socket = asio::basic_stream_socket<tcp, Executor>;
  using Stream = std::conditional_t<Tls, beast::ssl_stream<Socket>, Socket>;
  using Timer = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, Executor>;
  using std::enable_shared_from_this<Session>::shared_from_this;
  using std::enable_shared_from_this<Session>::weak_from_this;

 public:
  Session(Socket socket, Server::Impl& server)
      : stream_(make_stream(std::move(socket), server)),
        deadline_(stream_.get_executor()),
        server_(server) {
    server_.sessions.fetch_add(1);
    if (server_.cluster != nullptr) server_.cluster->connection_opened();
  }
  ~Session() override {
    if (running_) server_.unwatch(this);
    if (streaming_) server_.remove_sink(this);
    server_.session_closed(this);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start() {
    {
      std::lock_guard lock(server_.sessions_mutex);
      server_.drainers[this] = [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
          auto executor = self->stream_.get_executor();
          asio::post(executor, [self = std::move(self)] { self->drain_soon(); });
        }
      };
    }
    beast::error_code ec;
    if constexpr (Tls) {
      // A response can take several TLS records, hence several writes: Nagle's algorithm
      // would hold the last one back until the client acknowledges the others.
      socket().set_option(tcp::no_delay(true), ec);
      if (ec) return close();
      handshake();
    } else {
      // Responses are written at once when they fit (respond_text): the socket must not block.
      stream_.non_blocking(true, ec);
      if (ec) return close();
      read_header();
    }
  }

  // Draining: a connection waiting for its next request gets a short grace to send it (it is
  // then answered with Connection: close), and is closed after that. Closing it at once could
  // cut off a request already on its way.
  void drain_soon() {
    if (streaming_) return end_stream();
    if (reading_header_ && buffer_.size() == 0) arm_deadline(kDrainGrace);
  }

 private:
  // Read and write deadlines use a timer of our own rather than tcp_stream's: when tcp_stream
  // times out it closes the socket, and a client that is merely slow should still get its 408.
  // The timer is lazy: a phase sets `deadline_at_`, and the timer is only started when none is
  // waiting or the new deadline is earlier than the one it waits for. A waiting timer that fires
  // early sleeps again until `deadline_at_`. Per request that is no timer operation at all,
  // instead of an arm and a cancel (each a queue operation and a completion) per phase.
  void arm_deadline(std::chrono::milliseconds after) {
    timed_out_ = false;
    deadline_at_ = Clock::now() + after;
    if (timer_waits_ == 0 || deadline_at_ < deadline_.expiry()) start_timer();
  }
  void clear_deadline() { deadline_at_ = Clock::time_point::max(); }

  void start_timer() {
    ++timer_waits_;
    deadline_.expires_at(deadline_at_);  // aborts a wait for a later time
    deadline_.async_wait([self = shared_from_this()](beast::error_code ec) {
      --self->timer_waits_;
      if (ec || self->timer_waits_ > 0 || self->deadline_at_ == Clock::time_point::max()) return;
      if (Clock::now() < self->deadline_at_) return self->start_timer();
      self->timed_out_ = true;
      beast::error_code ignored;
      self->socket().cancel(ignored);
    });
  }

  static Stream make_stream(Socket&& socket, Server::Impl& server) {
    if constexpr (Tls) {
      return Stream(std::move(socket), *server.tls);
    } else {
      return std::move(socket);
    }
  }
  Socket& socket() { return beast::get_lowest_layer(stream_); }

  // The handshake has the header timeout: a client that stalls in it (or sends garbage) costs
  // its own connection only. A failure is no server error: it is logged at debug level. It is
  // the start of reading the first request: draining gives it the same short grace.
  void handshake() {
    arm_deadline(header_timeout());
    reading_header_ = true;
    stream_.async_handshake(asio::ssl::stream_base::server,
                            [self = shared_from_this()](beast::error_code ec) {
                              self->reading_header_ = false;
                              self->clear_deadline();
                              if (self->timed_out_) ec = beast::error::timeout;
                              self->on_handshake(ec);
                            });
  }

  void on_handshake(beast::error_code ec) {
    if (!ec) return read_header();
    server_.metrics.tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
    if (spdlog::should_log(spdlog::level::debug)) {
      beast::error_code ignored;
      spdlog::debug("crew serve: TLS handshake with {} failed: {}",
                    socket().remote_endpoint(ignored).address().to_string(), ec.message());
    }
    close();
  }

  std::chrono::milliseconds header_timeout() const {
    return server_.draining
               ? std::min(server_.config.header_timeout, std::chrono::milliseconds(kDrainGrace))
               : server_.config.header_timeout;
  }

  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_.config.max_header));
    parser_->body_limit(server_.config.max_body);
    arm_deadline(header_timeout());
    reading_header_ = true;
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->reading_header_ = false;
                              self->clear_deadline();
                              if (self->timed_out_) ec = beast::error::timeout;
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
      return close();
    }
    if constexpr (Tls) {
      // A cut connection or a broken TLS record: nothing could carry an answer.
      if (ec == asio::ssl::error::stream_truncated ||
          ec.category() == asio::error::get_ssl_category()) {
        return close();
      }
    }
    if (ec == beast::error::timeout) {
      // An idle keep-alive connection just goes; a half-sent request gets its 408.
      if (buffer_.size() == 0 && !parser_->got_some()) return close();
      return fail(http::status::request_timeout, "Timeout",
                  fmt::format("the request headers did not arrive within {} ms",
                              server_.config.header_timeout.count()));
    }
    if (ec == http::error::header_limit) {
      return fail(http::status::request_header_fields_too_large, "HeadersTooLarge",
                  fmt::format("request headers are over {} bytes", server_.config.max_header));
    }
    if (ec == http::error::body_limit) return too_large();
    if (ec) return fail(http::status::bad_request, "BadRequest", "malformed HTTP: " + ec.message());
    start_ = Clock::now();
    if (parser_->is_done()) return on_body({});  // no body, or all of it came with the headers
    arm_deadline(server_.config.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code e, std::size_t) {
                       self->clear_deadline();
                       if (self->timed_out_) e = beast::error::timeout;
                       self->on_body(e);
                     });
  }

  void too_large() {
    fail(http::status::payload_too_large, "BodyTooLarge",
         fmt::format("the request body is over --max-body ({} bytes)", server_.config.max_body));
  }

  void on_body(beast::error_code ec) {
    if (ec == beast::error::timeout) {
      return fail(http::status::request_timeout, "Timeout",
                  fmt::format("the request body did not arrive within {} ms",
                              server_.config.body_timeout.count()));
    }
    if (ec == http::error::body_limit) return too_large();
    if (ec) return close();
    request_ = parser_->release();
    server_.inflight.fetch_add(1);
    counted_ = true;
    try {
      route();
    } catch (const std::exception& e) {
      // Every route answers its own errors: this is a bug in crew, and it costs one request.
      spdlog::error("crew serve: {} {} threw: {}", std_view(request_.method_string()),
                    std_view(request_.target()), e.what());
      request_.keep_alive(false);
      route_ = "error";
      respond(http::status::internal_server_error,
              error_body("InternalError",
                         fmt::format("crew serve could not handle this request ({}); please "
                                     "report it",
                                     e.what())));
    }
  }

  void route() {
    const std::string_view target(request_.target().data(), request_.target().size());
    const auto q = target.find('?');
    const std::string_view path = target.substr(0, q);
    query_ = q == std::string_view::npos ? "" : std::string(target.substr(q + 1));
    const auto method = request_.method();
    // The dashboard's files hold no data: served without a token (the page asks for one).
    const bool dashboard = path == "/dashboard" || path.starts_with("/dashboard/");
    if (server_.auth.enabled() && !dashboard && path != "/healthz" &&
        !(server_.config.metrics_public && path == "/metrics")) {
      const AuthVerdict verdict =
          server_.auth.check(std_view(request_[http::field::authorization]));
      if (verdict != AuthVerdict::ok) return unauthorized(verdict);
    }
    auto only = [&](http::verb verb, const char* allow) {
      if (method == verb) return true;
      method_not_allowed(allow);
      return false;
    };
    if (path == "/healthz") {
      route_ = "/healthz";
      // The body never changes: no JSON document built per probe.
      if (only(http::verb::get, "GET")) {
        respond_text(http::status::ok, R"({"status":"ok"})", "application/json");
      }
    } else if (path == "/readyz") {
      route_ = "/readyz";
      if (!only(http::verb::get, "GET")) return;
      const std::string why = server_.unready_reason();
      json body{{"ready", why.empty()}};
      if (!why.empty()) body["reason"] = why;
      respond(why.empty() ? http::status::ok : http::status::service_unavailable, body);
    } else if (path == "/metrics") {
      route_ = "/metrics";
      if (!only(http::verb::get, "GET")) return;
      std::optional<std::uint64_t> seq;
      if (!number_param("seq", seq)) return;
      if (!seq) {
        return respond_text(http::status::ok, server_.render_metrics(),
                            "text/plain; version=0.0.4; charset=utf-8");
      }
      if (auto kept = kept_sample(*seq)) {
        respond_text(http::status::ok,
                     fmt::format("# crew seq {}\n{}", *seq,
                                 render_prometheus(*kept, server_.cluster != nullptr)),
                     "text/plain; version=0.0.4; charset=utf-8");
      }
    } else if (path == "/api/stats") {
      route_ = "/api/stats";
      if (!only(http::verb::get, "GET")) return;
      std::optional<std::uint64_t> seq;
      if (!number_param("seq", seq)) return;
      if (!seq) return respond(http::status::ok, server_.render_stats());
      if (auto kept = kept_sample(*seq)) {
        json out = server_.stats_of(std::move(*kept));
        out["seq"] = *seq;
        respond(http::status::ok, out);
      }
    } else if (path == "/api/monitor") {
      route_ = "/api/monitor";
      if (!only(http::verb::get, "GET")) return;
      std::optional<std::uint64_t> since, history;
      if (!number_param("since", since) || !number_param("history", history)) return;
      respond_text(http::status::ok,
                   server_.monitor.monitor_json(
                       since, std::min<std::uint64_t>(history.value_or(Monitor::kMonitorHistory),
                                                      Monitor::kHistory)),
                   "application/json");
    } else if (path == "/api/events") {
      route_ = "/api/events";
      if (only(http::verb::get, "GET")) open_stream();
    } else if (path == "/api/cluster/reload") {
      route_ = "/api/cluster/reload";
      if (only(http::verb::post, "POST")) reload_cluster();
    } else if (path.starts_with("/api/workers/")) {
      route_ = "/api/workers/:id";
      if (only(http::verb::post, "POST")) worker_action(path.substr(13));
    } else if (path == "/v1/tasks") {
      route_ = "/v1/tasks";
      if (!only(http::verb::get, "GET")) return;
      json list = json::array();
      const Tasks& tasks = server_.runner->tasks();
      for (const auto& name : tasks.names()) {
        list.push_back({{"name", name}, {"signature", tasks.signature(name)}});
      }
      respond(http::status::ok, json{{"tasks", list}, {"isolation", server_.runner->isolation()}});
    } else if (path.starts_with("/v1/tasks/")) {
      route_ = "/v1/tasks/:name";
      if (only(http::verb::post, "POST")) run_task(std::string(path.substr(10)));
    } else if (path.starts_with("/v1/jobs/")) {
      route_ = "/v1/jobs/:id";
      if (only(http::verb::get, "GET")) show_job(std::string(path.substr(9)));
    } else if (dashboard) {
      route_ = "/dashboard";
      if (only(http::verb::get, "GET")) serve_dashboard(path);
    } else {
      route_ = "other";
      respond(http::status::not_found,
              error_body("NotFound", fmt::format("no route for {}; see GET /v1/tasks, "
                                                 "/v1/jobs/{{id}}, /healthz, /readyz, /metrics, "
                                                 "/api/stats, /api/monitor, /api/events",
                                                 path)));
    }
  }

  // ?key=N: false (and answered 400) when present but not a whole number.
  bool number_param(std::string_view key, std::optional<std::uint64_t>& out) {
    const std::string text = query_param(query_, key);
    if (text.empty()) return true;
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size()) {
      respond(http::status::bad_request,
              error_body("BadRequest",
                         fmt::format("?{}= must be a whole number, not '{}'", key, text)));
      return false;
    }
    out = n;
    return true;
  }

  // The snapshots behind sample `seq`; none (and answered 404) once they are no longer kept.
  std::optional<std::vector<json>> kept_sample(std::uint64_t seq) {
    auto kept = server_.monitor.snapshots(seq);
    if (!kept) {
      respond(
          http::status::not_found,
          error_body("NotFound", fmt::format("sample {} is not kept: the last {} samples are (see "
                                             "GET /api/monitor for the newest seq)",
                                             seq, Monitor::kKeptSnapshots)));
    }
    return kept;
  }

  // GET /api/events: the response has no length; it is the stream of samples until either side
  // closes. The request is done once its head is out, so a drain does not wait for the stream.
  void open_stream() {
    std::optional<std::uint64_t> since, history;
    if (!number_param("since", since) || !number_param("history", history)) return;
    const std::string_view last_id = std_view(request_["Last-Event-ID"]);
    std::uint64_t last = 0;
    if (!last_id.empty() &&
        std::from_chars(last_id.data(), last_id.data() + last_id.size(), last).ec == std::errc()) {
      since = last;
    }
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n";
    head += server_.monitor.stream_start(
        since, std::min<std::uint64_t>(history.value_or(Monitor::kHistory), Monitor::kHistory));
    log(200, head.size());
    done_request();
    streaming_ = true;
    server_.add_sink(this, this->weak_from_this());
    send_event(std::make_shared<const std::string>(std::move(head)));
  }

  void post_event(std::shared_ptr<const std::string> event) override {
    asio::post(stream_.get_executor(),
               [self = shared_from_this(), event = std::move(event)] { self->on_event(event); });
  }

  // A client that reads slower than samples come keeps one waiting: a newer one replaces it.
  void on_event(const std::shared_ptr<const std::string>& event) {
    if (!streaming_) return;
    if (writing_) {
      pending_ = event;
      return;
    }
    send_event(event);
  }

  void send_event(std::shared_ptr<const std::string> event) {
    writing_ = std::move(event);
    arm_deadline(kStreamWriteTimeout);  // a client that stops reading is let go
    asio::async_write(stream_, asio::buffer(*writing_),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        self->clear_deadline();
                        if (self->timed_out_) ec = beast::error::timeout;
                        self->writing_.reset();
                        if (ec) return self->end_stream();
                        if (self->pending_) self->send_event(std::exchange(self->pending_, {}));
                      });
  }

  void end_stream() {
    if (!streaming_) return;
    streaming_ = false;
    pending_.reset();
    server_.remove_sink(this);
    close();
  }

  // POST /api/cluster/reload: the primary's rolling reload, which its SIGHUP starts.
  void reload_cluster() {
    if (server_.cluster == nullptr) {
      return respond(http::status::conflict,
                     error_body("NotACluster",
                                "this server is not part of a cluster (start it "
                                "with --cluster N to reload workers one by one)"));
    }
    if (::kill(::getppid(), SIGHUP) != 0) {
      return respond(http::status::internal_server_error,
                     error_body("ReloadFailed",
                                fmt::format("could not signal the cluster's primary (pid {}): {}",
                                            ::getppid(), std::strerror(errno))));
    }
    respond(http::status::accepted, json{{"reloading", true}});
  }

  // POST /api/workers/{id}/restart and /heap, {id} as in GET /api/monitor's rows.
  void worker_action(std::string_view rest) {
    const auto slash = rest.find('/');
    const std::string id(rest.substr(0, slash));
    const std::string_view action =
        slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (action != "restart" && action != "heap") {
      return respond(http::status::not_found,
                     error_body("NotFound", fmt::format("no action '{}' for a worker; use "
                                                        "POST /api/workers/{{id}}/restart or "
                                                        "/api/workers/{{id}}/heap",
                                                        action)));
    }
    const int self = server_.cluster != nullptr ? server_.cluster->id() : 0;
    // "server", "N" (a cluster worker) or "[N.]crew-proc-M" (a task worker of server N).
    int server = self;
    std::string task_worker = id;
    if (server_.cluster != nullptr) {
      const auto dot = id.find('.');
      const std::string head = id.substr(0, dot);
      if (std::from_chars(head.data(), head.data() + head.size(), server).ec != std::errc()) {
        return unknown_worker(id);
      }
      task_worker = dot == std::string::npos ? "" : id.substr(dot + 1);
    } else if (id == "server") {
      task_worker.clear();
    }
    if (task_worker.empty()) {
      if (action == "heap") {
        return respond(http::status::conflict,
                       error_body("Refused",
                                  "heap profiles are written by task worker processes "
                                  "(--isolation process --heap-profiling); this row is "
                                  "a server"));
      }
      return restart_server(id, server);
    }
    if (server != self) {
      return respond(http::status::conflict,
                     error_body("OtherWorker",
                                fmt::format("worker '{}' belongs to cluster worker {}, and this "
                                            "is cluster worker {}: each manages its own task "
                                            "processes. Send the request again (connections "
                                            "spread over the workers) or restart worker {}",
                                            id, server, self, server)));
    }
    if (action == "heap") return heap_profile(id, task_worker);
    try {
      server_.runner->restart_worker(task_worker);
    } catch (const std::invalid_argument& e) {
      return respond(http::status::not_found, error_body("NotFound", e.what()));
    } catch (const std::exception& e) {
      return respond(http::status::conflict, error_body("Refused", e.what()));
    }
    respond(http::status::accepted, json{{"restarting", id}});
  }

  // POST /api/workers/{id}/heap. Writing a profile blocks (milliseconds, up to the pool's 30 s
  // for a worker that does not answer), so it runs on the server's one heap thread, never on an
  // I/O thread; a second request meanwhile is refused rather than queued.
  void heap_profile(const std::string& id, const std::string& worker) {
    Future<std::string> written;
    if (!server_.start_heap_profile(worker, written)) {
      return respond(http::status::conflict,
                     error_body("Busy",
                                "a heap profile is being written; ask again when it is "
                                "done"));
    }
    when_ready(std::move(written), [id](Session& self, Future<std::string> result) {
      try {
        self.respond(http::status::ok, json{{"worker", id}, {"path", result.get()}});
      } catch (const std::invalid_argument& e) {
        self.respond(http::status::not_found, error_body("NotFound", e.what()));
      } catch (const TimedOut& e) {
        self.respond(http::status::gateway_timeout, error_body("TimedOut", e.what()));
      } catch (const std::exception& e) {
        self.respond(http::status::conflict, error_body("Refused", e.what()));
      }
    });
  }

  // A server process: a cluster worker is asked to drain and exit (SIGTERM); the primary starts
  // its replacement. A single server has nothing to replace it.
  void restart_server(const std::string& id, int server) {
    if (server_.cluster == nullptr) {
      return respond(http::status::conflict,
                     error_body("NotACluster",
                                "a single server cannot restart itself: run it "
                                "with --cluster N, or under a supervisor"));
    }
    int pid = 0;
    for (const auto& s : server_.all_snapshots()) {
      if (s.at("worker").get<int>() == server) pid = s.value("pid", 0);
    }
    if (pid <= 0) return unknown_worker(id);
    if (::kill(pid, SIGTERM) != 0) {
      return respond(http::status::conflict,
                     error_body("Refused", fmt::format("could not signal worker {} (pid {}): {}",
                                                       id, pid, std::strerror(errno))));
    }
    respond(http::status::accepted, json{{"restarting", id}});
  }

  void unknown_worker(const std::string& id) {
    respond(http::status::not_found,
            error_body("NotFound", fmt::format("no worker '{}'; GET /api/monitor lists them "
                                               "(workers[].id)",
                                               id)));
  }

  // RFC 6750: a request without credentials gets the scheme; one with a wrong token, the error.
  void unauthorized(AuthVerdict verdict) {
    route_ = "unauthorized";
    const bool missing = verdict == AuthVerdict::missing;
    extra_ = {http::field::www_authenticate,
              missing ? R"(Bearer realm="crew")" : R"(Bearer realm="crew", error="invalid_token")"};
    respond(http::status::unauthorized,
            error_body("Unauthorized",
                       missing ? "this server needs a header 'Authorization: Bearer <token>' "
                                 "(its tokens are in the server's --auth-token-file)"
                               : "the bearer token is not one this server accepts"));
  }

  // /dashboard redirects to /dashboard/ (relative, so that it works behind a path prefix too),
  // whose relative links then name the files. no-cache: the browser revalidates every time and
  // gets 304 while its copy is current, so a new binary's page is never hidden by an old one.
  void serve_dashboard(std::string_view path) {
    if (path == "/dashboard") {
      extra_ = {http::field::location, "dashboard/"};
      return respond_text(http::status::found, "", "text/plain");
    }
    const auto asset = dashboard_asset(path.substr(11));
    if (!asset) {
      return respond(http::status::not_found,
                     error_body("NotFound", fmt::format("no dashboard file {}", path)));
    }
    headers_ = fmt::format("Cache-Control: no-cache\r\nETag: {}\r\n", asset->etag);
    const bool current = etag_matches(std_view(request_[http::field::if_none_match]), asset->etag);
    respond_text(current ? http::status::not_modified : http::status::ok,
                 current ? std::string() : std::string(asset->body), asset->content_type);
  }

  void method_not_allowed(const char* allow) {
    extra_ = {http::field::allow, allow};
    respond(http::status::method_not_allowed,
            error_body("MethodNotAllowed", fmt::format("use {} here", allow)));
  }

  // While draining, a request that still reaches this server (on a connection it had already
  // accepted) is served, and its response closes the connection: refusing it would turn a
  // graceful reload into failed requests. Only a closed pool answers 503 (PoolClosed).
  void run_task(std::string name) {
    const Tasks& tasks = server_.runner->tasks();
    if (!tasks.contains(name)) {
      std::string known;
      for (const auto& n : tasks.names()) known += (known.empty() ? "" : ", ") + n;
      return respond(
          http::status::not_found,
          error_body("NotFound", fmt::format("unknown task '{}'; known tasks: {}", name, known)));
    }
    std::string args;
    const auto type = request_[http::field::content_type];
    // JSON unless the client says otherwise. `curl -d '{"args": [..]}'` labels its body as a
    // form; a form body that opens with '{' is taken for the JSON it is.
    auto opens_object = [&] {
      const auto first = request_.body().find_first_not_of(" \t\r\n");
      return first != std::string::npos && request_.body()[first] == '{';
    };
    const bool is_json = type.empty() || type.starts_with("application/json") ||
                         (type.starts_with("application/x-www-form-urlencoded") && opens_object());
    if (is_json) {
      json body;
      try {
        const auto depth_limit = [](int depth, json::parse_event_t, json&) {
          if (depth > kMaxJsonDepth) {
            throw std::length_error(
                fmt::format("the body nests deeper than {} levels", kMaxJsonDepth));
          }
          return true;
        };
        body = request_.body().empty() ? json::object() : json::parse(request_.body(), depth_limit);
      } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
        return respond(http::status::bad_request,
                       error_body("BadJson", fmt::format("the body is not JSON: {}", e.what())));
      } catch (const std::length_error& e) {
        return respond(http::status::bad_request, error_body("BadJson", e.what()));
      }
      if (!body.is_object() || (body.contains("args") && !body["args"].is_array())) {
        return respond(http::status::bad_request,
                       error_body("BadArguments",
                                  fmt::format("task '{}' takes a JSON object {{\"args\": [...]}}; "
                                              "its signature is {}",
                                              name, tasks.signature(name))));
      }
      const json list = body.value("args", json::array());
      const auto packed = json::to_msgpack(list);
      args.assign(packed.begin(), packed.end());
    } else {
      // Any other content type: the raw body is the one argument (sha256 of an upload).
      msgpack::sbuffer sb(request_.body().size() + 16);
      msgpack::packer<msgpack::sbuffer> pk(sb);
      pk.pack_array(1);
      pk.pack(request_.body());
      args.assign(sb.data(), sb.size());
    }
    RunOptions options;
    options.timeout = server_.config.task_timeout;
    options.priority = server_.runner->default_priority();
    // An integer option from the query (`key=`) or a header; nullopt when neither names it.
    std::string bad;
    auto number = [&](const char* key, const char* header, long long lo,
                      long long hi) -> std::optional<long long> {
      std::string value = query_param(query_, key);
      if (value.empty()) value = std::string(request_[header]);
      if (value.empty() || !bad.empty()) return std::nullopt;
      char* end = nullptr;
      errno = 0;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (*end != '\0' || errno == ERANGE || n < lo || n > hi) {
        bad = fmt::format("{} must be an integer in {}..{}, not '{}'", key, lo, hi, value);
        return std::nullopt;
      }
      return n;
    };
    // Bounded, so that no duration arithmetic downstream can overflow: a day at most.
    constexpr long long kMaxTimeoutMs = 86'400'000;
    const auto timeout = number("timeout_ms", "X-Timeout-Ms", 0, kMaxTimeoutMs);
    const auto priority = number("priority", "X-Priority", std::numeric_limits<int>::min(),
                                 std::numeric_limits<int>::max());
    const auto attempts = number("attempts", "X-Attempts", 1, kMaxAttempts);
    if (!bad.empty()) return respond(http::status::bad_request, error_body("BadArguments", bad));
    if (const auto limit = server_.timeout_limit.count();
        timeout && limit > 0 && (*timeout == 0 || *timeout > limit)) {
      return respond(
          http::status::bad_request,
          error_body("BadArguments",
                     fmt::format("timeout_ms = {} is beyond this server's limit: tasks run at most "
                                 "{} ms here (--max-task-timeout-ms); ask for 1..{}",
                                 *timeout == 0 ? "0 (no timeout)" : std::to_string(*timeout), limit,
                                 limit)));
    }
    if (timeout) options.timeout = std::chrono::milliseconds(*timeout);
    if (priority) options.priority = static_cast<int>(*priority);
    if (attempts && *attempts > 1 && std::string_view(server_.runner->isolation()) == "thread") {
      return respond(
          http::status::bad_request,
          error_body("BadArguments",
                     "attempts > 1 needs --isolation process or --backend redis://…: a thread "
                     "task that failed may still be running, or may have taken the server down"));
    }
    if (attempts) options.attempts = static_cast<int>(*attempts);
    // A queue backend's job id: the client's Idempotency-Key (a repeated request attaches to the
    // job the first one made), else a fresh one, known here so that a wait that runs out can
    // name the job.
    std::string job_id(request_["Idempotency-Key"]);
    const std::string fresh_id = server_.runner->new_job_id();
    if (!job_id.empty() && fresh_id.empty()) {
      return respond(http::status::bad_request,
                     error_body("BadArguments",
                                "Idempotency-Key needs a queue backend (--backend redis://…): "
                                "this server runs tasks locally and keeps no jobs to attach to"));
    }
    if (job_id.size() > kMaxJobIdBytes) {
      return respond(http::status::bad_request,
                     error_body("BadArguments", fmt::format("Idempotency-Key must be 1..{} bytes, "
                                                            "not {}",
                                                            kMaxJobIdBytes, job_id.size())));
    }
    const std::string wait = query_param(query_, "wait");
    if (!wait.empty() && wait != "true" && wait != "false") {
      return respond(
          http::status::bad_request,
          error_body("BadArguments", fmt::format("wait must be true or false, not '{}'", wait)));
    }
    const auto started = Clock::now();
    task_ = std::move(name);
    try {
      if (wait == "false") {
        return when_ready(
            server_.runner->submit(task_, std::move(args), std::move(options), std::move(job_id)),
            [](Session& self, Future<Submitted> submitted) {
              self.finish_submit(std::move(submitted));
            });
      }
      job_ = job_id.empty() ? fresh_id : std::move(job_id);
      auto future = server_.runner->run(task_, std::move(args), std::move(options), job_);
      // A reference of our own, to cancel the task if the client hangs up before its answer.
      future.raw_state()->add_ref();
      running_ = detail::Ref<detail::StateBase>(future.raw_state());
      waiting_since_ = started;
      server_.watch(this, this->weak_from_this());
      when_ready(std::move(future), [started](Session& self, Future<PackedValue> result) {
        self.finish_task(std::move(result), started);
      });
    } catch (...) {
      finish_error(std::current_exception(), task_);
    }
  }

  void show_job(std::string id) {
    job_ = id;
    try {
      when_ready(server_.runner->status(std::move(id)),
                 [](Session& self, Future<redis::JobStatus> status) {
                   self.finish_job(std::move(status));
                 });
    } catch (...) {
      respond_error(task_error(std::current_exception(), fmt::format("looking up job '{}'", job_)));
    }
  }

  // Runs `then(*this, future)` on this connection's I/O thread once `future` settles: the thread
  // that settles it (a pool thread, a process pool's supervisor, the Redis queue's results
  // thread) only hands it over.
  template <class T, class Then>
  void when_ready(Future<T> future, Then then) {
    detail::hand_off(std::move(future), [self = shared_from_this(), then = std::move(then)](
                                            Future<T> result) mutable noexcept {
      auto executor = self->stream_.get_executor();
      asio::post(executor,
                 [self = std::move(self), then = std::move(then),
                  result = std::move(result)]() mutable { then(*self, std::move(result)); });
    });
  }

  // While its task runs, a connection is not read, so a hang-up shows only to a look at the
  // socket: the server's 100 ms tick has each session whose task has run that long look (a peek
  // that finds the end of the stream, or an error, means the client is gone) and cancels the
  // task: a queued one never runs, a running one sees its stop token (thread isolation) or loses
  // its worker process. Bytes to read are a pipelined request, not a hang-up. (An asio wait on
  // the socket per task cost about a third of the compute throughput; quick tasks need no look.)
  void post_hangup_check() override {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->check_hangup(); });
  }
  void check_hangup() {
    if (!running_ || abandoned_ || waited_out_) return;
    // A queue backend's job whose result takes longer than --max-wait-ms: the request stops
    // waiting and answers 202 with the job's state (finish_task); the job goes on.
    const auto max_wait = server_.config.max_wait;
    if (!job_.empty() && max_wait.count() > 0 && Clock::now() - waiting_since_ >= max_wait) {
      waited_out_ = running_->cancel();
      if (waited_out_) return;
    }
    if constexpr (Tls) {
      // A TLS client's close_notify alert is bytes to read, so a peek cannot tell a hang-up
      // from a pipelined request; the end of its half of the TCP stream (POLLRDHUP) can.
      pollfd p{socket().native_handle(), POLLRDHUP, 0};
      if (::poll(&p, 1, 0) <= 0 || (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0) return;
    } else {
      char c = 0;
      const auto n = ::recv(stream_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) return;
    }
    abandoned_ = true;
    running_->cancel();
  }
  void stop_watching() {
    if (!running_) return;
    running_.reset();
    server_.unwatch(this);
  }

  void finish_task(Future<PackedValue> result, Clock::time_point started) {
    stop_watching();
    if (abandoned_) {
      // Nobody to answer: count it (nginx's 499, "client closed request") and close.
      abandoned_ = false;
      count_outcome("abandoned");
      log(499, 0);
      return close();
    }
    if (std::exchange(waited_out_, false)) return answer_unsettled();
    try {
      PackedValue value = result.get();
      json out;
      out["result"] = json::from_msgpack(value.bytes);
      out["duration_ms"] =
          std::chrono::duration<double, std::milli>(Clock::now() - started).count();
      count_outcome("ok");
      respond(http::status::ok, out);
    } catch (...) {
      finish_error(std::current_exception(), task_);
    }
  }

  // 202 for a job still unsettled after --max-wait-ms: its state now, and where to ask again.
  void answer_unsettled() {
    Future<redis::JobStatus> looked_up;
    try {
      looked_up = server_.runner->status(job_);  // throws at once while Redis is unreachable
    } catch (...) {
      return finish_error(std::current_exception(), task_);
    }
    when_ready(std::move(looked_up), [](Session& self, Future<redis::JobStatus> status) {
      try {
        const redis::JobStatus job = status.get();
        if (job.state == redis::JobState::unknown) {
          // Never handed to Redis (its submission waited behind others all along); cancelled
          // with the wait, it never will be.
          self.count_outcome("timed_out");
          return self.respond(
              http::status::gateway_timeout,
              error_body("TimedOut",
                         fmt::format("task '{}' was not submitted to Redis within {} ms "
                                     "(--max-wait-ms) and will not run; send it again (with "
                                     "the same Idempotency-Key, if it had one)",
                                     self.task_, self.server_.config.max_wait.count())));
        }
        const std::string location = "/v1/jobs/" + job.id;
        self.extra_ = {http::field::location, location};
        self.count_outcome("submitted");
        json out = job_json(job);
        out["location"] = location;
        self.respond(http::status::accepted, out);
      } catch (...) {
        self.finish_error(std::current_exception(), self.task_);
      }
    });
  }

  void finish_submit(Future<Submitted> submitted) {
    try {
      const Submitted job = submitted.get();
      const std::string location = "/v1/jobs/" + job.job_id;
      extra_ = {http::field::location, location};
      count_outcome("submitted");
      respond(http::status::accepted,
              json{{"job_id", job.job_id}, {"state", job.state}, {"location", location}});
    } catch (...) {
      finish_error(std::current_exception(), task_);
    }
  }

  void finish_job(Future<redis::JobStatus> status) {
    try {
      const redis::JobStatus job = status.get();
      if (job.state == redis::JobState::unknown) {
        return respond(
            http::status::not_found,
            error_body("NotFound", fmt::format("no job '{}': never submitted, or its record "
                                               "expired (kept 24 h after it settled)",
                                               job.id)));
      }
      respond(http::status::ok, job_json(job));
    } catch (...) {
      // A failed look-up, not a task's outcome: not counted in crew_tasks_total.
      respond_error(task_error(std::current_exception(), fmt::format("looking up job '{}'", job_)));
    }
  }

  void finish_error(const std::exception_ptr& error, const std::string& task) {
    const TaskError e = task_error(error, fmt::format("task '{}'", task));
    count_outcome(e.outcome);
    respond_error(e);
  }

  // A task request's answer, counted by outcome and (for the monitor) by task name.
  void count_outcome(const char* outcome) {
    server_.metrics.outcome(outcome, task_,
                            std::chrono::duration<double>(Clock::now() - start_).count());
  }

  void respond_error(const TaskError& e) {
    if (e.retry_later) extra_ = {http::field::retry_after, "1"};
    respond(e.status, error_body(e.type, e.message));
  }

  void respond(http::status status, const json& body) {
    // Replace, not throw: messages quote the request, which may be any bytes.
    respond_text(status, body.dump(-1, ' ', false, json::error_handler_t::replace),
                 "application/json");
  }

  void respond_text(http::status status, std::string body, const char* content_type) {
    // The response head is written by hand: the same bytes Beast's serializer would produce for
    // these few fields, for a fraction of its per-response cost (it is most of what /healthz
    // costs). One buffer, one write.
    const bool keep = request_.keep_alive() && !server_.draining;
    const unsigned minor = request_.version() == 10 ? 0 : 1;
    std::string& out = out_;
    out.clear();
    out.reserve(160 + body.size());
    fmt::format_to(
        std::back_inserter(out),
        "HTTP/1.{} {} {}\r\nServer: crew/" CREW_VERSION_STRING "\r\nContent-Type: {}\r\n", minor,
        static_cast<unsigned>(status), std_view(http::obsolete_reason(status)), content_type);
    // A 304 has no content, and a Content-Length there would have to be the 200's (RFC 9110).
    if (status != http::status::not_modified) {
      fmt::format_to(std::back_inserter(out), "Content-Length: {}\r\n", body.size());
    }
    if (extra_) {
      fmt::format_to(std::back_inserter(out), "{}: {}\r\n",
                     std_view(http::to_string(extra_->first)), extra_->second);
    }
    extra_.reset();
    out += headers_;
    headers_.clear();
    if (minor == 1 && !keep) out += "Connection: close\r\n";
    if (minor == 0 && keep) out += "Connection: keep-alive\r\n";
    out += "\r\n";
    out += body;
    log(static_cast<int>(status), body.size());
    std::size_t sent = 0;
    if constexpr (!Tls) {
      // Most responses fit in the socket's buffer: written now, without an asynchronous
      // operation or a deadline; only what does not fit goes through async_write. (An SSL
      // stream has no such write: a record cut short by the socket must be finished later.)
      beast::error_code ec;
      sent = stream_.write_some(asio::buffer(out), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) ec = {};
      if (ec || sent == out.size()) return written(ec, keep);
    }
    arm_deadline(server_.config.body_timeout);  // a client that does not read its response
    asio::async_write(stream_, asio::buffer(out) + sent,
                      [self = shared_from_this(), keep](beast::error_code e, std::size_t) {
                        self->clear_deadline();
                        if (self->timed_out_) e = beast::error::timeout;
                        self->written(e, keep);
                      });
  }

  void written(beast::error_code ec, bool keep) {
    // The buffer is kept for the next response, unless a large one made it large.
    if (out_.capacity() > kKeptResponseBuffer) std::string().swap(out_);
    done_request();
    if (ec || !keep) return close();
    read_header();
  }

  // A response that ends the connection (the request could not be read properly).
  void fail(http::status status, std::string_view type, const std::string& message) {
    request_ = {};
    request_.version(11);
    request_.keep_alive(false);
    route_ = "error";
    respond(status, error_body(type, message));
  }

  void done_request() {
    if (counted_) {
      counted_ = false;
      server_.request_done();
    }
  }

  void log(int status, std::size_t bytes) {
    const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    server_.metrics.record(route_, status, seconds);
    if (!server_.access) return;
    const std::string target(request_.target().data(), request_.target().size());
    const std::string method(http::to_string(request_.method()));
    if (server_.config.log_format == "json") {
      server_.access->info(json{
          {"method", method},
          {"target", target},
          {"status", status},
          {"bytes", bytes},
          {"ms",
           seconds * 1000}}.dump(-1, ' ', false, json::error_handler_t::replace));
    } else {
      server_.access->info("{} {} {} {}B {:.3f}ms", method, target, status, bytes, seconds * 1000);
    }
  }

  // With TLS, no close_notify is awaited (a hostile peer could stall it for ever): every
  // response carries its length, so a client cannot mistake a cut connection for a whole one.
  void close() {
    done_request();
    clear_deadline();
    deadline_.cancel();  // releases this session now rather than when the timer would fire
    beast::error_code ec;
    socket().shutdown(tcp::socket::shutdown_both, ec);
    socket().close(ec);
  }

  Stream stream_;
  Timer deadline_;
  Clock::time_point deadline_at_ = Clock::time_point::max();
  int timer_waits_ = 0;
  bool timed_out_ = false;
  bool reading_header_ = false;
  Server::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  std::string query_;
  std::string route_ = "other";
  std::string task_;
  std::string job_;  // GET /v1/jobs/{id}
  std::optional<std::pair<http::field, std::string>> extra_;
  // More header lines for the next response, each ending in CRLF.
  std::string headers_;
  std::string out_;  // the response being written
  Clock::time_point start_ = Clock::now();
  bool counted_ = false;
  detail::Ref<detail::StateBase> running_;  // the task in flight, to cancel on a hang-up
  Clock::time_point waiting_since_;
  bool abandoned_ = false;
  bool waited_out_ = false;  // --max-wait-ms passed: answer with the job's state
  // GET /api/events: the sample being written and the newest one waiting behind it.
  bool streaming_ = false;
  std::shared_ptr<const std::string> writing_, pending_;
};

}  // namespace

void Server::Impl::accept() {
  // With one I/O thread a session's handlers cannot run concurrently: no strand needed.
  auto on_accept = [this](beast::error_code ec, auto socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    using Executor = typename decltype(socket)::executor_type;
    if (!ec && tls) {
      std::make_shared<Session<Executor, true>>(std::move(socket), *this)->start();
    } else if (!ec) {
      std::make_shared<Session<Executor, false>>(std::move(socket), *this)->start();
    }
    if (cluster != nullptr && cluster->accept_later()) {
      // Another worker holds fewer connections: let it take the next one (ClusterWorker).
      accept_timer.expires_after(kAcceptLater);
      accept_timer.async_wait([this](beast::error_code e) {
        if (!e && acceptor.is_open()) accept();
      });
      return;
    }
    accept();
  };
  if (config.io_threads == 1) {
    acceptor.async_accept(ioc.get_executor(), on_accept);
  } else {
    acceptor.async_accept(asio::make_strand(ioc), on_accept);
  }
}

void Server::Impl::check_hangups(Clock::time_point now) {
  // Tasks that started less than a tick ago are left alone: most end before the next one.
  constexpr auto kLookAfter = std::chrono::milliseconds(100);
  std::vector<std::shared_ptr<TaskWatch>> due;
  {
    std::lock_guard lock(watch_mutex);
    for (const auto& [key, entry] : watched) {
      if (now - entry.second < kLookAfter) continue;
      if (auto session = entry.first.lock()) due.push_back(std::move(session));
    }
  }
  for (const auto& session : due) session->post_hangup_check();
}

void Server::Impl::tick_lag() {
  // A 100 ms timer: how late it fires is how long the I/O threads were kept from their work.
  constexpr auto kPeriod = std::chrono::milliseconds(100);
  const auto now = Clock::now();
  if (lag_expected != Clock::time_point{}) {
    const auto lag = std::max<std::int64_t>(
        0, std::chrono::duration_cast<std::chrono::nanoseconds>(now - lag_expected).count());
    metrics.lag_ns = lag;
    if (lag > metrics.lag_max_ns) metrics.lag_max_ns = lag;
  }
  check_hangups(now);
  runner->report_stuck();
  lag_expected = now + kPeriod;
  lag_timer.expires_at(lag_expected);
  lag_timer.async_wait([this](beast::error_code ec) {
    if (!ec) tick_lag();
  });
}

namespace {

// A process-isolation worker in a snapshot (the monitor's "task" rows). Its log tail is cut to
// what a row shows: a cluster worker publishes its snapshot in one datagram of at most 64 KiB.
json task_worker_json(const ProcessWorkerStats& w) {
  constexpr std::size_t kLogLines = 10, kLogLineBytes = 200;
  json log = json::array();
  const std::size_t from = w.log_tail.size() > kLogLines ? w.log_tail.size() - kLogLines : 0;
  for (std::size_t i = from; i < w.log_tail.size(); ++i) {
    log.push_back(w.log_tail[i].substr(0, kLogLineBytes));
  }
  json last_exit = nullptr;
  if (w.last_exit) {
    const ProcessExit& e = *w.last_exit;
    last_exit = {{"signal", e.signal != 0 ? json(e.signal) : json(nullptr)},
                 {"code", e.signal == 0 ? json(e.code) : json(nullptr)},
                 {"reason", to_string(e.reason)},
                 {"time", std::chrono::duration<double>(e.when.time_since_epoch()).count()}};
  }
  return {{"name", w.name},
          {"pid", w.pid},
          {"state", w.state},
          {"uptime_s", std::chrono::duration<double>(w.uptime).count()},
          {"tasks", w.tasks_done},
          {"errors", w.errors},
          {"restarts", w.restarts},
          {"rss_bytes", w.rss_bytes},
          {"pss_bytes", w.pss_bytes},
          {"cpu_seconds", std::chrono::duration<double>(w.cpu_time).count()},
          {"leak_suspected", w.leak_suspected},
          {"last_exit", std::move(last_exit)},
          {"log", std::move(log)}};
}

}  // namespace

json Server::Impl::snapshot() {
  const RunnerStats s = runner->stats();
  auto latency = [](const LatencySummary& l) {
    using Seconds = std::chrono::duration<double>;
    return json{{"p50_s", Seconds(l.p50).count()},
                {"p90_s", Seconds(l.p90).count()},
                {"p99_s", Seconds(l.p99).count()},
                {"max_s", Seconds(l.max).count()},
                {"count", l.count}};
  };
  json out = {{"worker", cluster != nullptr ? cluster->id() : 0},
              {"in_cluster", cluster != nullptr},
              {"backend", config.backend == "local" ? "local" : "redis"},
              {"pid", ::getpid()},
              {"ready", unready_reason().empty()},
              {"uptime_s", std::chrono::duration<double>(Clock::now() - born).count()},
              {"start_time_s", std::chrono::duration<double>(born_wall.time_since_epoch()).count()},
              {"isolation", runner->isolation()},
              {"pool",
               {{"workers", s.workers},
                {"busy", s.busy},
                {"idle", s.idle},
                {"queued", s.queued},
                {"completed", s.completed},
                {"failed", s.failed},
                {"cancelled", s.cancelled},
                {"timed_out", s.timed_out},
                {"crashed", s.crashed},
                {"utilization", s.utilization},
                {"stuck", s.stuck},
                {"stuck_limit", s.stuck_limit},
                {"stuck_total", s.stuck_total},
                {"leaks_suspected", s.leaks_suspected},
                {"leaking", std::count_if(s.processes.begin(), s.processes.end(),
                                          [](const auto& w) { return w.leak_suspected; })},
                {"stuck_tasks", s.stuck_tasks},
                {"wait", latency(s.wait_time)},
                {"run", latency(s.run_time)}}},
              {"process", process_figures()}};
  metrics.fill(out);
  out["http"]["connections"] = sessions.load();
  if (!s.processes.empty()) {
    json rows = json::array();
    for (const auto& w : s.processes) rows.push_back(task_worker_json(w));
    out["task_workers"] = std::move(rows);
  }
  return out;
}

namespace {

// This worker's live snapshot followed by the peers' latest ones, by worker id. A peer's
// snapshot that does not parse (it never should) is left out rather than failing the request.
std::vector<json> cluster_snapshots(json own, const ClusterWorker& worker) {
  std::vector<json> all;
  all.push_back(std::move(own));
  for (const auto& peer : worker.peers()) {
    json s = json::parse(peer.state, nullptr, false);
    if (!s.is_discarded() && s.is_object()) all.push_back(std::move(s));
  }
  std::sort(all.begin(), all.end(), [](const json& a, const json& b) {
    return a.at("worker").get<int>() < b.at("worker").get<int>();
  });
  return all;
}

}  // namespace

std::vector<json> Server::Impl::all_snapshots() {
  if (cluster == nullptr) return {snapshot()};
  return cluster_snapshots(snapshot(), *cluster);
}

std::string Server::Impl::render_metrics() {
  // The backend's numbers are the same from every cluster worker (a Redis queue is shared), so
  // they appear once, from this one.
  return render_prometheus(all_snapshots(), cluster != nullptr) + runner->backend_metrics();
}

json Server::Impl::render_stats() {
  return stats_of(all_snapshots());
}

json Server::Impl::stats_of(std::vector<json> all) {
  const int self = cluster != nullptr ? cluster->id() : 0;
  auto own = std::find_if(all.begin(), all.end(),
                          [&](const json& s) { return s.at("worker").get<int>() == self; });
  json out = stats_json(own != all.end() ? *own : all.front());
  if (cluster == nullptr) return out;
  out["worker"] = self;
  json workers = json::array();
  for (const auto& s : all) {
    json w = stats_json(s);
    w["worker"] = s.at("worker");
    workers.push_back(std::move(w));
  }
  out["cluster"] = {{"workers", std::move(workers)}, {"totals", stats_json(merge_snapshots(all))}};
  return out;
}

void Server::Impl::run_monitor() {
  std::unique_lock lock(monitor_mutex);
  while (!monitor_stopping) {
    // On the wall clock's whole seconds: every cluster worker samples the same second, and a
    // sample's seq (that second) means the same moment on each.
    const auto wall = std::chrono::system_clock::now();
    const auto next = std::chrono::ceil<std::chrono::seconds>(wall + std::chrono::milliseconds(1));
    if (monitor_wake.wait_for(lock, next - wall, [&] { return monitor_stopping; })) break;
    lock.unlock();
    take_sample();
    lock.lock();
  }
}

void Server::Impl::take_sample() {
  std::shared_ptr<const std::string> event;
  try {
    const double wall =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    event = monitor.add(all_snapshots(), wall, Clock::now());
  } catch (const std::exception& e) {
    // A sample that cannot be made is skipped; the next second tries again.
    spdlog::warn("crew serve: monitor sample skipped: {}", e.what());
    return;
  }
  std::vector<std::shared_ptr<EventSink>> to;
  {
    std::lock_guard lock(sinks_mutex);
    for (const auto& [key, weak] : sinks) {
      if (auto sink = weak.lock()) to.push_back(std::move(sink));
    }
  }
  for (const auto& sink : to) sink->post_event(event);
}

Server::Server(ServeConfig config, std::unique_ptr<Runner> runner)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(runner))) {
  // spdlog creates its registry on first use. Create it here, before the I/O threads start, so
  // that its construction happens-before every log call from them and from the pool's threads
  // (ThreadSanitizer cannot see the guard of a static inside the uninstrumented libspdlog).
  spdlog::default_logger_raw();
  if (impl_->config.log_format != "off") {
    impl_->access = spdlog::get("crew.access");
    if (!impl_->access) {
      try {
        impl_->access = spdlog::stdout_color_mt("crew.access");
      } catch (const spdlog::spdlog_ex&) {
        impl_->access = spdlog::get("crew.access");
      }
    }
  }
}

Server::~Server() {
  stop();
  // Tasks still running hold sessions through their continuations; let them finish (their
  // results are posted to the stopped io_context and dropped with it) before it goes away.
  impl_->runner->close();
}

std::size_t Server::reload_tokens() {
  return impl_->auth.reload();
}

void Server::terminate_tasks() {
  impl_->runner->terminate();
}

void Server::start(int listen_fd) {
  auto& i = *impl_;
  if (!i.config.tls_cert.empty() || !i.config.tls_key.empty()) {
    i.tls = make_tls_context(i.config.tls_cert, i.config.tls_key);
  }
  beast::error_code ec;
  if (listen_fd >= 0) {
    // A cluster worker: the primary bound the socket; every worker accepts on the same one.
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len);
    i.acceptor.assign(addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), listen_fd, ec);
    if (ec) throw std::system_error(ec, "crew serve: the inherited listening socket is unusable");
    i.accept();
    if (i.cluster != nullptr) i.cluster->accepting(true);
    i.tick_lag();
    i.started = true;
    for (std::size_t t = 0; t < std::max<std::size_t>(1, i.config.io_threads); ++t) {
      i.threads.emplace_back([&i] { i.run_io(); });
    }
    i.monitor_thread = std::thread([&i] { i.run_monitor(); });
    return;
  }
  const auto address = asio::ip::make_address(i.config.host, ec);
  if (ec) {
    throw std::invalid_argument(fmt::format("crew serve: --host '{}' is not an IP address: {}",
                                            i.config.host, ec.message()));
  }
  const tcp::endpoint endpoint(address, i.config.port);
  i.acceptor.open(endpoint.protocol());
  i.acceptor.set_option(asio::socket_base::reuse_address(true));
  i.acceptor.bind(endpoint, ec);
  if (ec) {
    throw std::system_error(
        ec, fmt::format("crew serve: cannot listen on {}:{}", i.config.host, i.config.port));
  }
  i.acceptor.listen(asio::socket_base::max_listen_connections);
  i.accept();
  i.tick_lag();
  i.started = true;
  for (std::size_t t = 0; t < std::max<std::size_t>(1, i.config.io_threads); ++t) {
    i.threads.emplace_back([&i] { i.run_io(); });
  }
  i.monitor_thread = std::thread([&i] { i.run_monitor(); });
}

std::uint16_t Server::port() const noexcept {
  beast::error_code ec;
  const auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void Server::join_cluster(ClusterWorker& worker) {
  impl_->cluster = &worker;
}

std::string Server::snapshot() const {
  return impl_->snapshot().dump(-1, ' ', false, json::error_handler_t::replace);
}

bool Server::ready() const noexcept {
  return impl_->started && !impl_->draining;
}

bool Server::drain(std::chrono::milliseconds timeout) {
  auto& i = *impl_;
  i.draining = true;
  if (i.cluster != nullptr) i.cluster->accepting(false);
  asio::post(i.ioc, [&i] {
    beast::error_code ec;
    i.acceptor.close(ec);
  });
  // Called outside the lock: a drainer holds its session for a moment, and when the session
  // ends meanwhile on an I/O thread, its destructor runs here and takes sessions_mutex.
  std::vector<std::function<void()>> drainers;
  {
    std::lock_guard lock(i.sessions_mutex);
    for (const auto& [key, drain_one] : i.drainers) drainers.push_back(drain_one);
  }
  for (const auto& drain_one : drainers) drain_one();
  std::unique_lock lock(i.drain_mutex);
  return i.drained.wait_for(lock, timeout,
                            [&] { return i.inflight.load() == 0 && i.sessions.load() == 0; });
}

void Server::stop() {
  auto& i = *impl_;
  {
    std::lock_guard lock(i.monitor_mutex);
    i.monitor_stopping = true;
  }
  i.monitor_wake.notify_all();
  if (i.monitor_thread.joinable()) i.monitor_thread.join();
  std::thread heap;
  {
    std::lock_guard lock(i.heap_mutex);
    heap = std::move(i.heap_thread);
  }
  if (heap.joinable()) heap.join();  // at most the pool's profile timeout
  i.ioc.stop();
  for (auto& t : i.threads) {
    if (t.joinable()) t.join();
  }
  i.threads.clear();
}

int run_task_worker() {
  // As task threads are in thread isolation (--task-nice).
  const char* nice = std::getenv("CREW_SERVE_TASK_NICE");
  ::setpriority(PRIO_PROCESS, 0, nice != nullptr ? std::atoi(nice) : 0);
  Tasks tasks;
  add_builtin_tasks(tasks);
  std::vector<std::string> plugins;
  if (const char* list = std::getenv("CREW_SERVE_PLUGINS")) {
    std::stringstream in(list);
    for (std::string p; std::getline(in, p, ':');) {
      if (!p.empty()) plugins.push_back(p);
    }
  }
  load_plugins(plugins, tasks);  // a failure ends this worker; the pool reports it
  return crew::serve(tasks);
}

namespace {
// After the shutdown timeout, how long tasks get to honour their stop request before the process
// exits without them: a thread cannot be killed, and one that ignores its stop token would
// otherwise hold the exit for ever.
constexpr std::chrono::milliseconds kForceExitGrace{500};

// Ends the process with exit code 1 `grace` after arm() unless disarm() comes first. The thread
// is detached (it must outlive a join that never returns) and shares its state, so a disarmed
// watchdog touches nothing that static destruction at exit may already have freed.
class ExitWatchdog {
 public:
  void arm(std::chrono::milliseconds grace) {
    std::thread([state = state_, grace] {
      std::unique_lock lock(state->mutex);
      if (state->cv.wait_for(lock, grace, [&] { return state->disarmed; })) return;
      // Still locked: disarm() cannot return, so the process is not exiting beneath this.
      spdlog::error(
          "crew serve: tasks still running {} ms after the shutdown timeout ignore their stop "
          "request; exiting without them",
          grace.count());
      spdlog::shutdown();
      std::_Exit(1);
    }).detach();
  }
  void disarm() {
    std::lock_guard lock(state_->mutex);
    state_->disarmed = true;
    state_->cv.notify_all();
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable cv;
    bool disarmed = false;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};
}  // namespace

std::chrono::milliseconds task_timeout_limit(const ServeConfig& config) {
  const auto limit =
      config.max_task_timeout.count() > 0 ? config.max_task_timeout : config.task_timeout;
  if (limit.count() > 0 && (config.task_timeout.count() == 0 || config.task_timeout > limit)) {
    throw std::invalid_argument(
        fmt::format("--task-timeout-ms {} is more than --max-task-timeout-ms {}: the default "
                    "timeout must be within the limit clients are held to (0 means none)",
                    config.task_timeout.count(), limit.count()));
  }
  return limit;
}

namespace {
// The Redis backend's runner in `out`, or the exit code when there is none.
int make_backend(const ServeConfig& config, const Tasks& tasks, std::unique_ptr<Runner>& out) {
  try {
    out = make_redis_runner(
        tasks, RedisRunnerOptions{
                   .url = config.backend, .queue = config.queue, .max_queue = config.max_queue});
    return 0;
  } catch (const redis::ConnectionError& e) {
    std::fprintf(stderr, "crew serve: cannot reach Redis (--backend): %s\n", e.what());
    return 69;  // EX_UNAVAILABLE, as crew worker
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "crew serve: %s\n", e.what());
    return 2;  // usage, as a flag CLI11 refuses
  }
}
}  // namespace

int run_service(const ServeConfig& config) {
  const bool tls = !config.tls_cert.empty() || !config.tls_key.empty();
  try {
    (void)task_timeout_limit(config);
    if (config.heap_profiling && (!(config.backend == "local") || config.isolation != "process")) {
      throw std::invalid_argument(
          "--heap-profiling needs --isolation process (and the local backend): only task worker "
          "processes are started with jemalloc's profiling");
    }
    // Before a cluster's primary starts workers: bad files stop the primary itself, at once.
    if (tls) (void)make_tls_context(config.tls_cert, config.tls_key);
    if (!config.auth_token_file.empty()) {
      const auto tokens = TokenSet::load(config.auth_token_file);
      spdlog::info("crew serve: access control: {} bearer token{} from {}", tokens.size(),
                   tokens.size() == 1 ? "" : "s", config.auth_token_file);
    } else if (!is_loopback(config.host)) {
      if (!config.insecure_no_auth) {
        throw std::invalid_argument(fmt::format(
            "--host {} can be reached from other machines, and without access control anyone "
            "there could run every task. Give --auth-token-file FILE (one bearer token a line), "
            "or --insecure-no-auth to serve without it on purpose",
            config.host));
      }
      spdlog::warn("crew serve: --insecure-no-auth: anyone who can reach {} may run every task",
                   config.host);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew serve: %s\n", e.what());
    return 78;  // EX_CONFIG
  }
  Tasks tasks;
  add_builtin_tasks(tasks);
  try {
    load_plugins(config.plugins, tasks);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew serve: %s\n", e.what());
    return 78;  // EX_CONFIG
  }
  const bool local = config.backend == "local";
  if (!local && config.cluster > 0) {
    // Checked by the primary before any worker starts; each worker then connects on its own.
    std::unique_ptr<Runner> check;
    if (const int rc = make_backend(config, tasks, check); rc != 0) return rc;
    check->close();
  }
  std::unique_ptr<Cluster> cluster;
  if (config.cluster > 0) {
    // The primary only supervises; each worker is this same command, serving on the socket.
    try {
      cluster = std::make_unique<Cluster>(
          ClusterOptions{.workers = config.cluster,
                         .host = config.host,
                         .port = config.port,
                         .min_uptime = config.min_uptime,
                         .max_restarts = config.max_restarts,
                         .shutdown_timeout = config.shutdown_timeout,
                         .max_memory_restart = config.max_memory_restart});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "crew serve: %s\n", e.what());
      return 69;  // EX_UNAVAILABLE
    }
    if (cluster->is_primary()) {
      spdlog::info("crew serve: listening on {}://{}:{} (cluster of {} workers, {})",
                   tls ? "https" : "http", config.host, cluster->port(), config.cluster,
                   local ? config.isolation + " isolation" : "Redis queue '" + config.queue + "'");
      return cluster->run();
    }
  }
  // Signals are taken by sigwait below (or by the cluster worker's wait); block them before any
  // thread exists so none of the pool or I/O threads receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (cluster == nullptr) sigaddset(&signals, SIGHUP);  // re-reads the token file
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<Runner> runner;
  if (!local) {
    if (const int rc = make_backend(config, tasks, runner); rc != 0) return rc;
  } else if (config.isolation == "process") {
    ProcessPoolOptions o;
    o.max_workers = config.workers;
    o.min_workers = config.workers == 0 ? default_thread_count() : config.workers;
    o.max_queue = config.max_queue;
    o.name = "crew-task";
    std::string list;
    for (const auto& p : config.plugins) list += (list.empty() ? "" : ":") + p;
    o.env["CREW_SERVE_PLUGINS"] = list;
    o.env["CREW_SERVE_TASK_NICE"] = std::to_string(config.task_nice);
    o.heap_profiling = config.heap_profiling;
    o.heap_profile_dir = config.heap_profile_dir;
    runner = make_process_runner(tasks, std::move(o));
  } else {
    runner = make_thread_runner(tasks,
                                ThreadRunnerOptions{.threads = config.workers,
                                                    .max_queue = config.max_queue,
                                                    .task_nice = config.task_nice,
                                                    .max_stuck_threads = config.max_stuck_threads});
  }
  ClusterWorker* worker = cluster ? &cluster->worker() : nullptr;
  Server server(config, std::move(runner));
  if (worker != nullptr) server.join_cluster(*worker);
  try {
    server.start(worker != nullptr ? worker->listen_fd() : -1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 69;  // EX_UNAVAILABLE
  }
  if (worker != nullptr) {
    worker->ready();
    worker->wait([&server] { return server.snapshot(); }, kClusterPublishPeriod);
    spdlog::info("crew serve: cluster worker {} draining (up to {} ms)", worker->id(),
                 config.shutdown_timeout.count());
  } else {
    spdlog::info("crew serve: listening on {}://{}:{} ({}, {} tasks)", tls ? "https" : "http",
                 config.host, server.port(),
                 local ? config.isolation + " isolation" : "Redis queue '" + config.queue + "'",
                 tasks.size());
    int sig = 0;
    while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
      if (config.auth_token_file.empty()) {
        spdlog::info("crew serve: SIGHUP: nothing to reload (no --auth-token-file)");
        continue;
      }
      try {
        spdlog::info("crew serve: SIGHUP: {} bearer tokens from {}", server.reload_tokens(),
                     config.auth_token_file);
      } catch (const std::exception& e) {
        spdlog::error("crew serve: SIGHUP: {}; the previous tokens stay in force", e.what());
      }
    }
    spdlog::info("crew serve: {} received, draining (up to {} ms)", ::strsignal(sig),
                 config.shutdown_timeout.count());
  }
  const bool drained = server.drain(config.shutdown_timeout);
  server.stop();
  if (drained) {
    spdlog::info("crew serve: drained, bye");
    return 0;
  }
  spdlog::warn("crew serve: shutdown timeout: in-flight requests were cut; stopping their tasks");
  ExitWatchdog watchdog;
  watchdog.arm(kForceExitGrace);
  server.terminate_tasks();  // returns once every task has stopped; the pool is then closed
  watchdog.disarm();
  return 1;
}

}  // namespace crew::serve_app
