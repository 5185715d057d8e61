// The Session's helpers that do not depend on its stream: queries, error bodies, a task's error.
#include "session.hpp"

#include <chrono>
#include <string>
#include <typeinfo>

#include <fmt/format.h>

#include <crew/errors.hpp>
#include <crew/process.hpp>

namespace crew::serve_app {

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

json error_body(std::string_view type, std::string_view message) {
  return json{{"error", {{"type", type}, {"message", message}}}};
}

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

}  // namespace crew::serve_app
