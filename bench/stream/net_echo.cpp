// Echo-through-transform over TCP: a crew::net server pipes every connection through
// uppercase() straight back (`conn.readable() | uppercase() | conn.writable()`), and clients
// send a fixed volume and read the echo back. Prints the round-trip throughput and how many
// threads the server added while it served, for 1, 16 and 64 connections at once.
//
//     crew_net_echo [total MiB, default 256]
//
// The clients are plain Asio (one thread, asynchronous), so that a change to crew::net is the
// only change between two runs of this program.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>  // before Boost 1.74's Asio, which uses std::exchange without it
#include <vector>

#include <boost/asio.hpp>
#include <dirent.h>

#include <crew/stream.hpp>
#include <crew/stream/net.hpp>

namespace asio = boost::asio;
namespace cs = crew::stream;
using tcp = asio::ip::tcp;

namespace {

std::size_t thread_count() {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
  }
  return n;
}

// One client connection: writes `total` bytes in 16 KiB writes while reading the echo back.
struct Client : std::enable_shared_from_this<Client> {
  Client(asio::io_context& io, std::size_t total) : socket(io), left_to_send(total), total(total) {}
  tcp::socket socket;
  std::vector<char> out = std::vector<char>(16 * 1024, 'a');
  std::vector<char> in = std::vector<char>(64 * 1024);
  std::size_t left_to_send;
  std::size_t received = 0;
  std::size_t total;
  bool ok = true;

  void start() {
    send();
    receive();
  }
  void send() {
    if (left_to_send == 0) {
      boost::system::error_code ec;
      socket.shutdown(tcp::socket::shutdown_send, ec);
      return;
    }
    const std::size_t n = std::min(left_to_send, out.size());
    asio::async_write(socket, asio::buffer(out.data(), n),
                      [self = shared_from_this(), n](boost::system::error_code ec, std::size_t) {
                        if (ec) {
                          self->ok = false;
                          return;
                        }
                        self->left_to_send -= n;
                        self->send();
                      });
  }
  void receive() {
    socket.async_read_some(
        asio::buffer(in), [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
          if (n > 0 && self->in[0] != 'A') self->ok = false;
          self->received += n;
          if (!ec) self->receive();
        });
  }
};

struct Result {
  double mib_per_s = 0;
  std::size_t threads_added = 0;
  bool ok = true;
};

Result run(std::size_t connections, std::size_t total_bytes) {
  crew::net::Listener listener({.address = "127.0.0.1", .port = 0});
  const std::size_t before = thread_count();
  std::atomic<std::size_t> peak{0};

  std::vector<cs::Pipeline<void>> pipelines;
  std::vector<crew::Future<cs::Summary>> done;
  std::jthread server([&] {
    for (std::size_t i = 0; i < connections; ++i) {
      auto conn = listener.accept();
      if (!conn) return;
      auto p = conn->readable() | cs::uppercase() | conn->writable();
      done.push_back(p.run());
      pipelines.push_back(std::move(p));
    }
  });

  asio::io_context io;
  const std::size_t per = total_bytes / connections;
  std::vector<std::shared_ptr<Client>> clients;
  for (std::size_t i = 0; i < connections; ++i) {
    auto c = std::make_shared<Client>(io, per);
    c->socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), listener.port()));
    c->socket.set_option(tcp::no_delay(true));
    clients.push_back(c);
  }
  server.join();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& c : clients) c->start();
  asio::steady_timer sampler(io);
  std::function<void()> sample = [&] {
    const std::size_t now = thread_count();
    if (now > peak.load()) peak.store(now);
    sampler.expires_after(std::chrono::milliseconds(5));
    sampler.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      bool all = true;
      for (auto& c : clients) all = all && c->received >= c->total;
      if (!all) sample();
    });
  };
  sample();
  io.run();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  Result r;
  for (auto& c : clients) r.ok = r.ok && c->ok && c->received == c->total;
  for (auto& f : done) {
    try {
      (void)f.get();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "server pipeline failed: %s\n", e.what());
      r.ok = false;
    }
  }
  r.mib_per_s = static_cast<double>(per * connections) / (1024.0 * 1024.0) / seconds;
  // The client's own thread is this one; what the count grew by is the server's doing.
  r.threads_added = peak.load() > before ? peak.load() - before : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
  if (mib == 0) {
    std::fprintf(stderr, "usage: crew_net_echo [total MiB >= 1]\n");
    return 64;
  }
  std::printf("%-12s %12s %16s\n", "connections", "MiB/s", "threads added");
  bool ok = true;
  for (std::size_t c : {1, 16, 64}) {
    const Result r = run(c, mib * 1024 * 1024);
    std::printf("%-12zu %12.1f %16zu%s\n", c, r.mib_per_s, r.threads_added,
                r.ok ? "" : "  (WRONG ECHO)");
    ok = ok && r.ok;
  }
  return ok ? 0 : 1;
}
