// The most requests/s any HTTP server can answer on this machine next to wrk: N processes on one
// listening socket, epoll, a canned /healthz response, no parsing beyond finding the blank line.
// Not a server (no keep-alive rules, no errors, no limits): a ceiling to read the cluster figures
// against. bench/serve/run.sh compiles and runs it.
//
//   ceiling <port> <processes>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
  const int port = argc > 1 ? std::atoi(argv[1]) : 18085;
  const int procs = argc > 2 ? std::atoi(argv[2]) : 2;
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  const int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, 4096) != 0) {
    std::perror("ceiling: bind/listen");
    return 1;
  }
  for (int i = 1; i < procs; ++i) {
    if (::fork() == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // go when the first process is killed
      break;
    }
  }
  static constexpr std::string_view kResponse =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
      "{\"status\":\"ok\"}";
  const int ep = ::epoll_create1(0);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.fd = lfd;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  epoll_event events[256];
  char buf[4096];
  for (;;) {
    const int n = ::epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == lfd) {
        for (int c; (c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) {
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = c;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      const ssize_t got = ::read(fd, buf, sizeof buf);
      if (got <= 0) {
        ::close(fd);
        continue;
      }
      // One response per request in what arrived (wrk sends one at a time per connection).
      for (std::string_view in(buf, static_cast<std::size_t>(got));;) {
        const auto end = in.find("\r\n\r\n");
        if (end == std::string_view::npos) break;
        [[maybe_unused]] auto w = ::write(fd, kResponse.data(), kResponse.size());
        in.remove_prefix(end + 4);
      }
    }
  }
}
