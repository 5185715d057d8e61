// The Session's task routes: POST /v1/tasks/{name} (run, or submit with ?wait=false), GET
// /v1/jobs/{id}, watching the connection while its task runs, and the task's answer.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

#include <poll.h>
#include <sys/socket.h>

#include "session.hpp"

namespace crew::serve_app {

// While draining, a request that still reaches this server (on a connection it had already
// accepted) is served, and its response closes the connection: refusing it would turn a
// graceful reload into failed requests. Only a closed pool answers 503 (PoolClosed).
template <class Executor, bool Tls>
void Session<Executor, Tls>::run_task(std::string name) {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::show_job(std::string id) {
  job_ = id;
  try {
    when_ready(
        server_.runner->status(std::move(id)),
        [](Session& self, Future<redis::JobStatus> status) { self.finish_job(std::move(status)); });
  } catch (...) {
    respond_error(task_error(std::current_exception(), fmt::format("looking up job '{}'", job_)));
  }
}

// While its task runs, a connection is not read, so a hang-up shows only to a look at the
// socket: the server's 100 ms tick has each session whose task has run that long look (a peek
// that finds the end of the stream, or an error, means the client is gone) and cancels the
// task: a queued one never runs, a running one sees its stop token (thread isolation) or loses
// its worker process. Bytes to read are a pipelined request, not a hang-up. (An asio wait on
// the socket per task cost about a third of the compute throughput; quick tasks need no look.)
template <class Executor, bool Tls>
void Session<Executor, Tls>::post_hangup_check() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] { self->check_hangup(); });
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::check_hangup() {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::stop_watching() {
  if (!running_) return;
  running_.reset();
  server_.unwatch(this);
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::finish_task(Future<PackedValue> result, Clock::time_point started) {
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
    out["duration_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    count_outcome("ok");
    respond(http::status::ok, out);
  } catch (...) {
    finish_error(std::current_exception(), task_);
  }
}

// 202 for a job still unsettled after --max-wait-ms: its state now, and where to ask again.
template <class Executor, bool Tls>
void Session<Executor, Tls>::answer_unsettled() {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::finish_submit(Future<Submitted> submitted) {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::finish_job(Future<redis::JobStatus> status) {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::finish_error(const std::exception_ptr& error,
                                          const std::string& task) {
  const TaskError e = task_error(error, fmt::format("task '{}'", task));
  count_outcome(e.outcome);
  respond_error(e);
}

// A task request's answer, counted by outcome and (for the monitor) by task name.
template <class Executor, bool Tls>
void Session<Executor, Tls>::count_outcome(const char* outcome) {
  server_.metrics.outcome(outcome, task_,
                          std::chrono::duration<double>(Clock::now() - start_).count());
}

}  // namespace crew::serve_app
