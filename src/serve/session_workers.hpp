// The Session's worker actions: POST /api/workers/{id}/restart and /heap.
#pragma once

#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <string>

#include "session.hpp"

namespace crew::serve_app {

// POST /api/workers/{id}/restart and /heap, {id} as in GET /api/monitor's rows.
template <class Executor, bool Tls>
void Session<Executor, Tls>::worker_action(std::string_view rest) {
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
    return respond(
        http::status::conflict,
        error_body("OtherWorker", fmt::format("worker '{}' belongs to cluster worker {}, and this "
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
template <class Executor, bool Tls>
void Session<Executor, Tls>::heap_profile(const std::string& id, const std::string& worker) {
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
template <class Executor, bool Tls>
void Session<Executor, Tls>::restart_server(const std::string& id, int server) {
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
                   error_body("Refused", fmt::format("could not signal worker {} (pid {}): {}", id,
                                                     pid, std::strerror(errno))));
  }
  respond(http::status::accepted, json{{"restarting", id}});
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::unknown_worker(const std::string& id) {
  respond(http::status::not_found,
          error_body("NotFound", fmt::format("no worker '{}'; GET /api/monitor lists them "
                                             "(workers[].id)",
                                             id)));
}

}  // namespace crew::serve_app
