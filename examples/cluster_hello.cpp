// Node's cluster hello world with crew::Cluster: two worker processes accept on one port and
// answer "hello"; each publishes how many requests it served, so every worker can also tell the
// others' counts. A client thread in the primary calls in, reloads the cluster (new workers, no
// gap) and stops it, so the program finishes on its own.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/process.hpp>

using namespace std::chrono_literals;

namespace {

// One request per connection: read the request line, write a one-line answer, close.
std::string call(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::write(fd, "GET / HTTP/1.0\r\n\r\n", 18) == 18) {
    char buf[512];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) reply.append(buf, std::size_t(n));
  }
  ::close(fd);
  const auto body = reply.find("\r\n\r\n");
  return body == std::string::npos ? "(no answer)" : reply.substr(body + 4);
}

int serve(crew::ClusterWorker& me) {
  std::atomic<long> served{0};
  std::atomic<bool> stop{false};
  ::fcntl(me.listen_fd(), F_SETFL, O_NONBLOCK);  // another worker may take a connection first
  std::thread acceptor([&] {
    while (!stop) {
      pollfd p{me.listen_fd(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(me.listen_fd(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      char request[512];
      [[maybe_unused]] auto n = ::read(c, request, sizeof request);
      std::string others;
      for (const auto& peer : me.peers()) {
        others += " worker " + std::to_string(peer.id) + " served " + peer.state + ";";
      }
      const std::string body = "hello from worker " + std::to_string(me.id()) + " (pid " +
                               std::to_string(::getpid()) + "), request " +
                               std::to_string(++served) + ";" + others + "\n";
      const std::string response =
          "HTTP/1.0 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
      [[maybe_unused]] auto w = ::write(c, response.data(), response.size());
      ::close(c);
    }
  });
  me.ready();
  const auto why = me.wait([&] { return std::to_string(served.load()); }, 100ms);
  stop = true;
  acceptor.join();
  return why == crew::ClusterWorker::Stop::drain ? 0 : 1;
}

}  // namespace

int main() {
  // First thing in main: in a worker this picks up the shared socket; in the primary it binds.
  crew::Cluster cluster({.workers = 2, .port = 0});
  if (!cluster.is_primary()) return serve(cluster.worker());

  std::printf("primary pid %d, listening on 127.0.0.1:%u\n", ::getpid(), cluster.port());
  bool ok = true;
  std::thread client([&] {
    auto from_old_worker = [](const std::string& r) {
      return r.starts_with("hello from worker 1 ") || r.starts_with("hello from worker 2 ");
    };
    for (int i = 0; i < 6; ++i) {
      std::printf("before reload: %s", call(cluster.port()).c_str());
      // Paces the calls so the workers' published counts show up; nothing checks them.
      std::this_thread::sleep_for(150ms);
    }
    cluster.reload();  // as SIGHUP: workers 3 and 4 replace 1 and 2, one at a time
    // Every call is answered during the reload; soon only the new workers answer (two worker
    // starts: well under a second, 60 s on the busiest machine).
    int fresh = 0;
    for (auto end = std::chrono::steady_clock::now() + 60s;
         fresh < 4 && std::chrono::steady_clock::now() < end;) {
      const std::string r = call(cluster.port());
      if (r == "(no answer)") ok = false;
      fresh = from_old_worker(r) ? 0 : fresh + 1;
      if (!from_old_worker(r)) std::printf("after reload: %s", r.c_str());
      std::this_thread::sleep_for(50ms);
    }
    ok = ok && fresh == 4;
    cluster.stop();  // as SIGTERM: drain every worker
  });
  const int code = cluster.run();
  client.join();
  std::printf("cluster stopped with exit code %d\n", code);
  return ok && code == 0 ? 0 : 1;
}
