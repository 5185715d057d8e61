// Tests for crew::Cluster. This executable is also its own worker program: started by a
// primary, main() runs a tiny line server on the shared socket. "who\n" is answered with
// "<id> <pid> <peer-id>=<peer-state>...\n" so the tests can see which worker answered and what it
// knows of the others.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/process.hpp>

#include "process/observe.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr const char* kRole = "CREW_TEST_CLUSTER_ROLE";

// --- the worker program --------------------------------------------------------------------

std::string read_line(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

void write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// Role "balance": keeps every connection it accepts open and answers "who" on any of them with
// its id, accepting the way a server does (until the backlog is empty) but asking accept_later()
// after each connection. Worker 2 is slow: it starts accepting 5 ms after each wake-up, as a
// worker busy with other work would, so worker 1 would take a whole burst if it did not wait.
int balance_main(crew::ClusterWorker& me) {
  ::fcntl(me.listen_fd(), F_SETFL, O_NONBLOCK);
  std::atomic<bool> stop{false};
  std::thread server([&] {
    std::vector<int> conns;
    Clock::time_point later_until{};  // accept again from then on
    me.accepting(true);
    while (!stop) {
      const bool later = Clock::now() < later_until;
      std::vector<pollfd> p;
      p.push_back({later ? -1 : me.listen_fd(), POLLIN, 0});
      for (int c : conns) p.push_back({c, POLLIN, 0});
      if (::poll(p.data(), p.size(), later ? 1 : 20) < 0) continue;
      if (p[0].revents != 0) {
        if (me.id() == 2) std::this_thread::sleep_for(5ms);
        for (;;) {
          const int c = ::accept4(me.listen_fd(), nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) break;
          conns.push_back(c);
          me.connection_opened();
          if (me.accept_later()) {
            later_until = Clock::now() + 1ms;
            break;
          }
        }
      }
      for (std::size_t i = 1; i < p.size(); ++i) {
        if (p[i].revents == 0) continue;
        // "who\n" arrives in one piece on loopback; never block on a connection.
        char buf[16];
        const ssize_t n = ::recv(p[i].fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
          write_all(p[i].fd, std::to_string(me.id()) + "\n");
        } else if (n == 0 || errno != EAGAIN) {
          ::close(p[i].fd);  // the client is gone
          std::erase(conns, p[i].fd);
          me.connection_closed();
        }
      }
    }
    for (int c : conns) ::close(c);
  });
  me.ready();
  const auto why = me.wait({}, 20ms);
  stop = true;
  server.join();
  return why == crew::ClusterWorker::Stop::drain ? 0 : 3;
}

int worker_main() {
  const char* role = std::getenv(kRole);
  const std::string r = role != nullptr ? role : "serve";
  if (r == "exit_at_start") return 1;
  if (r == "config_error") return 78;
  crew::Cluster cluster;
  crew::ClusterWorker& me = cluster.worker();
  if (r == "balance") return balance_main(me);
  // Non-blocking, so that a connection another worker took first never blocks this one.
  ::fcntl(me.listen_fd(), F_SETFL, O_NONBLOCK);
  std::atomic<bool> stop{false};
  std::thread server([&] {
    while (!stop) {
      pollfd p{me.listen_fd(), POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept4(me.listen_fd(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;  // another worker took it
      const std::string cmd = read_line(c);
      std::string reply;
      if (cmd == "who") {
        reply = std::to_string(me.id()) + " " + std::to_string(::getpid());
        for (const auto& p : me.peers()) reply += " " + std::to_string(p.id) + "=" + p.state;
      } else if (cmd == "inherit") {  // what a program this worker starts would inherit
        const int flags = ::fcntl(me.listen_fd(), F_GETFD);
        reply = std::string(crew::is_cluster_worker() ? "worker-env" : "no-worker-env") +
                ((flags & FD_CLOEXEC) != 0 ? " socket-cloexec" : " socket-inherited");
      } else if (cmd == "grow") {  // keeps 160 MiB, touched so that they are resident
        static std::vector<std::unique_ptr<char[]>> kept;
        for (int i = 0; i < 160; ++i) {
          kept.push_back(std::make_unique<char[]>(std::size_t{1} << 20));
          std::memset(kept.back().get(), 1, std::size_t{1} << 20);
        }
        reply = "grown";
      } else if (cmd == "big") {
        try {
          me.publish(std::string(crew::ClusterWorker::kMaxState + 1, 'x'));
          reply = "published";
        } catch (const std::length_error& e) {
          reply = e.what();
        }
      }
      write_all(c, reply + "\n");
      ::close(c);
    }
  });
  me.ready();
  const auto why = me.wait(
      [&] {
        // Not "s" + to_string(...): GCC 12 warns about it here (-Wrestrict, a false positive).
        std::string state = "s";
        return state += std::to_string(me.id());
      },
      20ms);
  stop = true;
  server.join();
  return why == crew::ClusterWorker::Stop::drain ? 0 : 3;
}

// --- the tests -----------------------------------------------------------------------------

using crew_test::children_of;
using crew_test::eventually;

struct Answer {
  int id = 0;
  int pid = 0;
  std::map<int, std::string> peers;
};

int connect_to(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::optional<std::string> ask(std::uint16_t port, const std::string& cmd) {
  const int fd = connect_to(port);
  if (fd < 0) return std::nullopt;
  write_all(fd, cmd + "\n");
  std::string line = read_line(fd);
  ::close(fd);
  if (line.empty()) return std::nullopt;
  return line;
}

std::optional<Answer> who(std::uint16_t port) {
  auto line = ask(port, "who");
  if (!line) return std::nullopt;
  std::istringstream in(*line);
  Answer a;
  in >> a.id >> a.pid;
  for (std::string peer; in >> peer;) {
    const auto eq = peer.find('=');
    a.peers[std::stoi(peer.substr(0, eq))] = peer.substr(eq + 1);
  }
  return a;
}

std::vector<std::string> self_argv() {
  return {"/proc/self/exe"};
}

// Runs a cluster's primary on a thread; stop() and join on destruction.
struct Running {
  explicit Running(crew::ClusterOptions o) : cluster(std::move(o)) {
    thread = std::thread([this] { code = cluster.run(); });
  }
  ~Running() {
    cluster.stop();
    if (thread.joinable()) thread.join();
  }
  int finish() {
    thread.join();
    return code;
  }
  int finish_after_stop() {
    cluster.stop();
    return finish();
  }
  crew::Cluster cluster;
  std::thread thread;
  std::atomic<int> code{-1};
};

crew::ClusterOptions opts(std::size_t workers = 2) {
  crew::ClusterOptions o;
  o.workers = workers;
  o.argv = self_argv();
  o.shutdown_timeout = 10s;
  return o;
}

TEST(Cluster, WorkersShareThePortAndSeeEachOthersState) {
  ::setenv(kRole, "serve", 1);
  Running r(opts());
  const auto port = r.cluster.port();
  ASSERT_NE(port, 0);
  std::set<int> ids;
  ASSERT_TRUE(eventually([&] {
    auto a = who(port);
    if (!a) return false;
    ids.insert(a->id);
    // Each worker knows the other one's latest published state.
    const int other = a->id == 1 ? 2 : 1;
    return ids.size() == 2 && a->peers.size() == 1 &&
           a->peers[other] == "s" + std::to_string(other);
  }));
  EXPECT_EQ(children_of(::getpid()).size(), 2U);
  r.cluster.stop();
  EXPECT_EQ(r.finish(), 0);  // both drained when asked, exit 0
  EXPECT_TRUE(children_of(::getpid()).empty());
}

TEST(Cluster, AKilledWorkerIsReplacedAndForgotten) {
  ::setenv(kRole, "serve", 1);
  Running r(opts());
  const auto port = r.cluster.port();
  std::optional<Answer> first;
  ASSERT_TRUE(eventually([&] {
    first = who(port);
    return first && first->peers.size() == 1;
  }));
  ::kill(first->pid, SIGKILL);
  // The survivor forgets the dead worker and learns about its replacement (id 3).
  ASSERT_TRUE(eventually([&] {
    auto a = who(port);
    return a && a->id != first->id && a->peers.size() == 1 && a->peers.contains(3) &&
           !a->peers.contains(first->id);
  }));
  EXPECT_EQ(r.finish_after_stop(), 0);
}

TEST(Cluster, ReloadReplacesEveryWorkerWithoutAGap) {
  ::setenv(kRole, "serve", 1);
  Running r(opts());
  const auto port = r.cluster.port();
  std::set<int> old_pids;
  ASSERT_TRUE(eventually([&] {
    if (auto a = who(port)) old_pids.insert(a->pid);
    return old_pids.size() == 2;
  }));
  r.cluster.reload();
  // Every connection meanwhile is answered; in the end only new workers (ids 3, 4) answer.
  int answered = 0, unanswered = 0;
  ASSERT_TRUE(eventually([&] {
    auto a = who(port);
    (a ? answered : unanswered)++;
    return a && a->id >= 3 && a->peers.size() == 1 && a->peers.begin()->first >= 3;
  }));
  EXPECT_EQ(unanswered, 0);
  EXPECT_TRUE(eventually([&] {
    for (int pid : old_pids) {
      if (::kill(pid, 0) == 0) return false;
    }
    return true;
  }));
  EXPECT_EQ(children_of(::getpid()).size(), 2U);
  EXPECT_EQ(r.finish_after_stop(), 0);
}

TEST(Cluster, AWorkerAboveMaxMemoryRestartIsReloadedWithinSeconds) {
  ::setenv(kRole, "serve", 1);
  auto o = opts(1);
  o.max_rss_restart_bytes = std::size_t{128} << 20;
  Running r(std::move(o));
  const auto port = r.cluster.port();
  std::optional<Answer> first;
  ASSERT_TRUE(eventually([&] { return (first = who(port)).has_value(); }));
  ASSERT_EQ(ask(port, "grow"), "grown");
  const auto crossed = Clock::now();
  ASSERT_TRUE(eventually([&] {
    auto a = who(port);
    return a && a->pid != first->pid;
  }));
  // Seen within 250 ms, then a new worker starts and the old one drains: well under a second
  // unloaded; 10 s leaves room for a loaded machine under a sanitizer.
  EXPECT_LT(Clock::now() - crossed, 10s);
  EXPECT_EQ(r.finish_after_stop(), 0);
}

TEST(Cluster, TooManyUnstableRestartsStopTheCluster) {
  ::setenv(kRole, "exit_at_start", 1);
  auto o = opts(1);
  o.max_restarts = 3;
  o.restart_backoff = 1ms;
  o.min_uptime = 10s;
  const auto start = Clock::now();
  Running r(std::move(o));
  EXPECT_EQ(r.finish(), 1);
  // 4 starts and 1 + 1.5 + 2.25 ms of backoff: a few starts' time, not a loop for ever.
  EXPECT_LT(Clock::now() - start, 30s);
  EXPECT_TRUE(children_of(::getpid()).empty());
}

TEST(Cluster, AWorkerThatCannotStartStopsItWithExitCode78) {
  ::setenv(kRole, "config_error", 1);
  Running r(opts(2));
  EXPECT_EQ(r.finish(), 78);
}

TEST(Cluster, BadOptionsAndMisuseSayWhatIsWrong) {
  ::setenv(kRole, "serve", 1);
  auto o = opts();
  o.host = "localhost:80";
  try {
    crew::Cluster c(o);
    FAIL() << "a host that is not an address was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'localhost:80' is not an IPv4 or IPv6 address"),
              std::string::npos);
  }
  crew::Cluster taken(opts());
  auto same = opts();
  same.port = taken.port();
  try {
    crew::Cluster c(same);
    FAIL() << "a port in use was accepted";
  } catch (const std::system_error& e) {
    EXPECT_NE(
        std::string(e.what()).find("cannot listen on 127.0.0.1:" + std::to_string(taken.port())),
        std::string::npos);
  }
  EXPECT_TRUE(taken.is_primary());
  EXPECT_THROW((void)taken.worker(), std::logic_error);
}

TEST(Cluster, AStateTooLargeToPublishIsRefusedWithItsSize) {
  ::setenv(kRole, "serve", 1);
  Running r(opts(1));
  std::optional<std::string> reply;
  ASSERT_TRUE(eventually([&] { return (reply = ask(r.cluster.port(), "big")).has_value(); }));
  EXPECT_NE(reply->find("the state is 65537 bytes; at most 65536"), std::string::npos) << *reply;
}

TEST(Cluster, ABurstOfConnectionsIsSharedBetweenWorkersEvenWhenOneIsSlow) {
  ::setenv(kRole, "balance", 1);
  Running r(opts());
  const auto port = r.cluster.port();
  // Both workers up and accepting (each probe connection is closed again).
  std::set<std::string> seen;
  ASSERT_TRUE(eventually([&] {
    if (auto line = ask(port, "who")) seen.insert(*line);
    return seen.size() == 2;
  }));
  constexpr int kConnections = 40;
  std::vector<int> fds;
  for (int i = 0; i < kConnections; ++i) {
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fds.push_back(fd);
  }
  // Every connection asks before any closes: the counts stay as the burst left them.
  for (int fd : fds) write_all(fd, "who\n");
  std::map<std::string, int> held;
  for (int fd : fds) ++held[read_line(fd)];
  for (int fd : fds) ::close(fd);
  ASSERT_EQ(held.size(), 2U) << "one worker took all " << kConnections << " connections";
  for (const auto& [id, n] : held) {
    EXPECT_GE(n, kConnections / 4) << "worker " << id << " holds " << n << " of " << kConnections;
  }
  EXPECT_EQ(r.finish_after_stop(), 0);
}

TEST(Cluster, ProgramsAWorkerStartsAreNotWorkersAndDoNotHoldTheSocket) {
  ::setenv(kRole, "serve", 1);
  Running r(opts(1));
  std::optional<std::string> reply;
  ASSERT_TRUE(eventually([&] { return (reply = ask(r.cluster.port(), "inherit")).has_value(); }));
  EXPECT_EQ(*reply, "no-worker-env socket-cloexec");
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_cluster_worker()) return worker_main();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
