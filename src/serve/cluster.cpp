// The cluster primary: one epoll loop over a signalfd (SIGHUP, SIGTERM, SIGINT), each worker's
// pidfd (exit) and channel (readiness), and timers (restart backoff, shutdown deadline, memory
// polling). Workers are forked by this thread and exec this same program with the listening
// socket and a channel inherited at fixed descriptors.
#include "cluster.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace crew::serve_app {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
constexpr int kListenFd = 3;
constexpr int kChannelFd = 4;
constexpr const char* kEnvChannel = "CREW_CLUSTER_CHANNEL";
constexpr const char* kEnvListen = "CREW_CLUSTER_LISTEN";
constexpr const char* kEnvId = "CREW_CLUSTER_WORKER";
constexpr milliseconds kBackoffCap{15'000};
constexpr milliseconds kStable{30'000};

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

struct Worker {
  int id = 0;
  pid_t pid = -1;
  int pidfd = -1;
  int channel = -1;
  Clock::time_point started{};
  bool ready = false;
  bool draining = false;
  bool replaced = false;  // part of a reload: exits on purpose
};

std::size_t rss_of(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace

std::optional<ClusterWorkerEnv> cluster_worker_env() {
  const char* ch = std::getenv(kEnvChannel);
  const char* ls = std::getenv(kEnvListen);
  if (ch == nullptr || ls == nullptr) return std::nullopt;
  ClusterWorkerEnv env;
  env.channel = std::atoi(ch);
  env.listen_fd = std::atoi(ls);
  const char* id = std::getenv(kEnvId);
  env.id = id != nullptr ? std::atoi(id) : 0;
  return env;
}

void cluster_worker_ready(const ClusterWorkerEnv& env) {
  [[maybe_unused]] auto n = ::send(env.channel, "ready", 5, MSG_NOSIGNAL);
}

void cluster_worker_wait(const ClusterWorkerEnv& env) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const int sfd = ::signalfd(-1, &set, SFD_CLOEXEC);
  pollfd fds[2] = {{env.channel, POLLIN, 0}, {sfd, POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) break;  // SIGTERM or SIGINT
    if (fds[0].revents != 0) {
      char msg[32];
      const ssize_t n = ::recv(env.channel, msg, sizeof msg, 0);
      if (n <= 0) break;  // the primary is gone
      if (std::string_view(msg, static_cast<std::size_t>(n)) == "drain") break;
    }
  }
  if (sfd >= 0) ::close(sfd);
}

int open_listener(const std::string& host, unsigned short port) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_INET;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof *v4;
  } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof *v6;
  } else {
    throw std::invalid_argument(fmt::format("crew serve: --host '{}' is not an IP address", host));
  }
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_errno("crew serve: socket");
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(),
                            fmt::format("crew serve: cannot listen on {}:{}", host, port));
  }
  return fd;
}

Cluster::Cluster(ClusterOptions options, std::vector<std::string> argv)
    : options_(options), argv_(std::move(argv)) {
  if (options_.workers == 0) throw std::invalid_argument("crew serve: --cluster must be >= 1");
}

int Cluster::run(int listen_fd) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  const int sfd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (sfd < 0 || ep < 0) throw_errno("crew serve --cluster: signalfd/epoll");
  auto watch = [&](int fd, std::uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  watch(sfd, 0);

  std::map<int, Worker> workers;  // by id
  int next_id = 1;
  std::size_t unstable = 0;
  milliseconds backoff{0};
  Clock::time_point next_spawn{};
  bool stopping = false;
  Clock::time_point stop_deadline{};
  std::deque<int> to_reload;   // old workers still to replace, in order
  int reload_waiting_for = 0;  // the new worker whose readiness releases the next old one
  Clock::time_point next_memory_check = Clock::now();
  int exit_code = 0;

  const std::string exe = "/proc/self/exe";
  auto spawn = [&]() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    Worker w;
    w.id = next_id++;
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    env.push_back(fmt::format("{}={}", kEnvListen, kListenFd));
    env.push_back(fmt::format("{}={}", kEnvChannel, kChannelFd));
    env.push_back(fmt::format("{}={}", kEnvId, w.id));
    std::vector<char*> envp, argv;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    for (auto& a : argv_) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int child_listen = ::fcntl(listen_fd, F_DUPFD_CLOEXEC, 10);
    const int child_channel = ::fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
    const pid_t parent = ::getpid();
    sigset_t none;
    sigemptyset(&none);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(child_listen, kListenFd);
      ::dup2(child_channel, kChannelFd);
      ::syscall(SYS_close_range, 5U, ~0U, 0U);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execve(exe.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(child_listen);
    ::close(child_channel);
    ::close(sv[1]);
    if (pid < 0) {
      ::close(sv[0]);
      throw_errno("fork");
    }
    w.pid = pid;
    w.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    w.channel = sv[0];
    w.started = Clock::now();
    watch(w.pidfd, static_cast<std::uint64_t>(w.id) << 1);
    watch(w.channel, (static_cast<std::uint64_t>(w.id) << 1) | 1);
    spdlog::info("crew cluster: worker {} started (pid {})", w.id, pid);
    workers.emplace(w.id, w);
    return w.id;
  };
  auto drain = [&](Worker& w) {
    if (w.draining) return;
    w.draining = true;
    [[maybe_unused]] auto n = ::send(w.channel, "drain", 5, MSG_NOSIGNAL);
  };
  auto live = [&] {
    std::size_t n = 0;
    for (auto& [id, w] : workers) n += (!w.draining && !w.replaced) ? 1 : 0;
    return n;
  };
  auto start_next_reload = [&] {
    while (!to_reload.empty() && !workers.contains(to_reload.front())) to_reload.pop_front();
    if (to_reload.empty() || stopping) {
      reload_waiting_for = 0;
      return;
    }
    workers.at(to_reload.front()).replaced = true;
    reload_waiting_for = spawn();
  };

  for (std::size_t i = 0; i < options_.workers; ++i) spawn();

  epoll_event events[32];
  for (;;) {
    const auto now = Clock::now();
    int timeout = 1000;
    if (stopping) {
      timeout = static_cast<int>(std::max<long long>(
          0, std::chrono::duration_cast<milliseconds>(stop_deadline - now).count()));
    } else if (live() < options_.workers && next_spawn > now) {
      timeout = static_cast<int>(std::chrono::ceil<milliseconds>(next_spawn - now).count());
    } else if (live() < options_.workers) {
      timeout = 0;
    }
    const int n = ::epoll_wait(ep, events, 32, timeout);
    const auto t = Clock::now();
    for (int e = 0; e < n; ++e) {
      const std::uint64_t tag = events[e].data.u64;
      if (tag == 0) {
        signalfd_siginfo si{};
        while (::read(sfd, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGHUP && !stopping) {
            spdlog::info("crew cluster: SIGHUP, reloading {} workers one at a time",
                         workers.size());
            for (auto& [id, w] : workers) {
              if (!w.draining && !w.replaced) to_reload.push_back(id);
            }
            if (reload_waiting_for == 0) start_next_reload();
          } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            if (!stopping) {
              spdlog::info("crew cluster: {}, draining every worker (up to {} ms)",
                           ::strsignal(static_cast<int>(si.ssi_signo)),
                           options_.shutdown_timeout.count());
              stopping = true;
              stop_deadline = t + options_.shutdown_timeout;
              for (auto& [id, w] : workers) drain(w);
            }
          }
        }
        continue;
      }
      const int id = static_cast<int>(tag >> 1);
      auto it = workers.find(id);
      if (it == workers.end()) continue;
      Worker& w = it->second;
      if ((tag & 1) == 1) {
        char msg[32];
        const ssize_t got = ::recv(w.channel, msg, sizeof msg, MSG_DONTWAIT);
        if (got > 0 && std::string_view(msg, static_cast<std::size_t>(got)) == "ready") {
          w.ready = true;
          if (id == reload_waiting_for && !to_reload.empty()) {
            // The replacement serves: now the old one may go.
            const int old = to_reload.front();
            to_reload.pop_front();
            if (auto o = workers.find(old); o != workers.end()) drain(o->second);
            start_next_reload();
          }
        } else if (got == 0) {
          ::epoll_ctl(ep, EPOLL_CTL_DEL, w.channel, nullptr);
        }
        continue;
      }
      // Exit.
      int status = 0;
      ::waitpid(w.pid, &status, 0);
      const auto uptime = t - w.started;
      const bool expected = w.draining || w.replaced || stopping;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 78) {
        spdlog::error("crew cluster: worker {} cannot start (configuration, exit 78); stopping",
                      id);
        exit_code = 78;
        stopping = true;
        stop_deadline = t + options_.shutdown_timeout;
        for (auto& [oid, o] : workers) drain(o);
      } else if (!expected) {
        const std::string how = WIFSIGNALED(status)
                                    ? fmt::format("killed by signal {}", WTERMSIG(status))
                                    : fmt::format("exited with code {}", WEXITSTATUS(status));
        if (uptime < options_.min_uptime) {
          ++unstable;
          backoff = backoff.count() == 0 ? options_.restart_backoff
                                         : std::min(kBackoffCap, backoff * 3 / 2);
        } else {
          unstable = 0;
          if (uptime >= kStable) backoff = milliseconds(0);
        }
        next_spawn = t + backoff;
        spdlog::warn("crew cluster: worker {} (pid {}) {} after {} ms; restarting in {} ms", id,
                     w.pid, how, std::chrono::duration_cast<milliseconds>(uptime).count(),
                     backoff.count());
        if (unstable > options_.max_restarts) {
          spdlog::error(
              "crew cluster: too many unstable restarts ({} workers in a row died within {} ms of "
              "starting); giving up",
              unstable, options_.min_uptime.count());
          exit_code = 1;
          stopping = true;
          stop_deadline = t + options_.shutdown_timeout;
          for (auto& [oid, o] : workers) drain(o);
        }
      }
      ::close(w.pidfd);
      ::close(w.channel);
      workers.erase(it);
      if (id == reload_waiting_for) start_next_reload();  // the replacement died: move on
    }
    const auto after = Clock::now();
    if (stopping) {
      if (workers.empty()) break;
      if (after >= stop_deadline) {
        for (auto& [id, w] : workers) ::kill(w.pid, SIGKILL);
        if (exit_code == 0) exit_code = 1;
        stop_deadline = after + milliseconds(1000);
      }
      continue;
    }
    if (options_.max_memory_restart != 0 && after >= next_memory_check) {
      next_memory_check = after + milliseconds(1000);
      for (auto& [id, w] : workers) {
        if (w.ready && !w.draining && !w.replaced && rss_of(w.pid) > options_.max_memory_restart &&
            std::find(to_reload.begin(), to_reload.end(), id) == to_reload.end()) {
          spdlog::warn("crew cluster: worker {} is above max_memory_restart; reloading it", id);
          to_reload.push_back(id);
          if (reload_waiting_for == 0) start_next_reload();
        }
      }
    }
    while (live() < options_.workers && after >= next_spawn) spawn();
  }
  ::close(ep);
  ::close(sfd);
  spdlog::info("crew cluster: all workers stopped, exit {}", exit_code);
  return exit_code;
}

}  // namespace crew::serve_app
