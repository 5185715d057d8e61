// One connection of `crew serve`: a Session reads requests, routes them and writes the responses,
// with its deadlines and its part in a drain. Its routes are defined by area in session_*.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <crew/redis.hpp>

#include "server_impl.hpp"

namespace crew::serve_app {

std::string query_param(std::string_view query, std::string_view key);

inline std::string_view std_view(beast::string_view s) {
  return {s.data(), s.size()};
}

json error_body(std::string_view type, std::string_view message);

// How a task's error is answered: the same on POST /v1/tasks/{name} and in GET /v1/jobs/{id}.
struct TaskError {
  http::status status;
  const char* outcome;  // the crew_tasks_total label
  std::string type;
  std::string message;
  bool retry_later = false;  // Retry-After: 1
};

// `source` names what threw, for an exception of no type crew knows: "task 'fib'".
TaskError task_error(const std::exception_ptr& error, std::string_view source);

// GET /v1/jobs/{id} for a job that exists. Times are Unix milliseconds of the Redis clock.
json job_json(const redis::JobStatus& job);

constexpr std::chrono::milliseconds kDrainGrace{500};
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

  // The routes, defined by area in session_*.hpp (server.cpp, which instantiates Session,
  // includes them all). session_routes.hpp: route() and the answers of no one area.
  void route();
  void unauthorized(AuthVerdict verdict);
  void serve_dashboard(std::string_view path);
  void method_not_allowed(const char* allow);
  void reload_cluster();

  // session_monitor.hpp: the monitor's queries and the /api/events stream.
  bool number_param(std::string_view key, std::optional<std::uint64_t>& out);
  std::optional<std::vector<json>> kept_sample(std::uint64_t seq);
  void open_stream();
  void post_event(std::shared_ptr<const std::string> event) override;
  void on_event(const std::shared_ptr<const std::string>& event);
  void send_event(std::shared_ptr<const std::string> event);
  void end_stream();

  // session_workers.hpp: POST /api/workers/{id}/restart and /heap.
  void worker_action(std::string_view rest);
  void heap_profile(const std::string& id, const std::string& worker);
  void restart_server(const std::string& id, int server);
  void unknown_worker(const std::string& id);

  // session_tasks.hpp: POST /v1/tasks/{name}, GET /v1/jobs/{id}, and a task's answer.
  void run_task(std::string name);
  void show_job(std::string id);
  void post_hangup_check() override;
  void check_hangup();
  void stop_watching();
  void finish_task(Future<PackedValue> result, Clock::time_point started);
  void answer_unsettled();
  void finish_submit(Future<Submitted> submitted);
  void finish_job(Future<redis::JobStatus> status);
  void finish_error(const std::exception_ptr& error, const std::string& task);
  void count_outcome(const char* outcome);

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

}  // namespace crew::serve_app
