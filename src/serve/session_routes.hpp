// The Session's routing table (route()) and the answers of no one area: authentication, the
// dashboard's files, 405, the cluster's reload.
#pragma once

#include <cerrno>
#include <csignal>
#include <cstring>
#include <optional>
#include <string>

#include <unistd.h>

#include "dashboard.hpp"
#include "session.hpp"

namespace crew::serve_app {

template <class Executor, bool Tls>
void Session<Executor, Tls>::route() {
  const std::string_view target(request_.target().data(), request_.target().size());
  const auto q = target.find('?');
  const std::string_view path = target.substr(0, q);
  query_ = q == std::string_view::npos ? "" : std::string(target.substr(q + 1));
  const auto method = request_.method();
  // The dashboard's files hold no data: served without a token (the page asks for one).
  const bool dashboard = path == "/dashboard" || path.starts_with("/dashboard/");
  if (server_.auth.enabled() && !dashboard && path != "/healthz" &&
      !(server_.config.metrics_public && path == "/metrics")) {
    const AuthVerdict verdict = server_.auth.check(std_view(request_[http::field::authorization]));
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

// RFC 6750: a request without credentials gets the scheme; one with a wrong token, the error.
template <class Executor, bool Tls>
void Session<Executor, Tls>::unauthorized(AuthVerdict verdict) {
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
template <class Executor, bool Tls>
void Session<Executor, Tls>::serve_dashboard(std::string_view path) {
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

template <class Executor, bool Tls>
void Session<Executor, Tls>::method_not_allowed(const char* allow) {
  extra_ = {http::field::allow, allow};
  respond(http::status::method_not_allowed,
          error_body("MethodNotAllowed", fmt::format("use {} here", allow)));
}

// POST /api/cluster/reload: the primary's rolling reload, which its SIGHUP starts.
template <class Executor, bool Tls>
void Session<Executor, Tls>::reload_cluster() {
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

}  // namespace crew::serve_app
