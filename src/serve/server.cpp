#include "server.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/version.hpp>

#include "metrics.hpp"
#include "monitor.hpp"
#include "server_impl.hpp"
#include "tasks.hpp"
#include "tls.hpp"
// The Session and its routes, by area: instantiated here (Server::Impl::accept).
#include "session.hpp"
#include "session_monitor.hpp"
#include "session_routes.hpp"
#include "session_tasks.hpp"
#include "session_workers.hpp"

namespace crew::serve_app {

namespace {

constexpr std::chrono::milliseconds kAcceptLater{1};

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
  return crew::worker_main(tasks);
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
                         .max_rss_restart_bytes = config.max_rss_restart_bytes});
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
    runner = make_thread_runner(
        tasks, ThreadRunnerOptions{.workers = config.workers,
                                   .max_queue = config.max_queue,
                                   .task_nice = config.task_nice,
                                   .max_stuck_replacements = config.max_stuck_replacements});
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
