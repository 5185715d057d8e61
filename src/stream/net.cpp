// crew::net: Asio sets up the sockets (resolve, connect, bind, listen, accept); the byte I/O uses
// the descriptors directly, so the reading and the writing side can run on two threads at once.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/net.hpp>

namespace crew {
inline namespace v0 {
namespace net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace detail {

struct SocketState {
  asio::io_context io;
  tcp::socket socket{io};
  int fd = -1;
  std::string local, remote;
  std::atomic<bool> readable_taken{false};
  std::atomic<bool> writable_taken{false};
};

struct ListenerState {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::uint16_t port = 0;
  std::atomic<bool> closed{false};
};

}  // namespace detail

namespace {

std::string to_string(const tcp::endpoint& e) {
  return fmt::format("{}:{}", e.address().to_string(), e.port());
}

std::shared_ptr<detail::SocketState> adopt(std::shared_ptr<detail::SocketState> s) {
  s->fd = s->socket.native_handle();
  boost::system::error_code ec;
  s->socket.set_option(tcp::no_delay(true), ec);
  auto l = s->socket.local_endpoint(ec);
  if (!ec) s->local = to_string(l);
  auto r = s->socket.remote_endpoint(ec);
  if (!ec) s->remote = to_string(r);
  return s;
}

class SocketSource final : public stream::detail::Source<Buffer> {
 public:
  SocketSource(std::shared_ptr<detail::SocketState> s, std::size_t chunk)
      : s_(std::move(s)), chunk_(chunk) {}
  bool pull(std::vector<Buffer>& out, std::size_t /*max*/, const std::stop_token& stop) override {
    for (;;) {
      if (stop.stop_requested()) return true;
      pollfd p{s_->fd, POLLIN, 0};
      const int r = ::poll(&p, 1, 50);
      if (r > 0) break;
      if (r < 0 && errno != EINTR) {
        throw std::system_error(errno, std::generic_category(),
                                fmt::format("net: poll on {} failed", s_->remote));
      }
    }
    Buffer b = Buffer::uninitialized(chunk_);
    ssize_t n;
    do {
      n = ::recv(s_->fd, b.data(), chunk_, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      throw std::system_error(errno, std::generic_category(),
                              fmt::format("net: cannot read from {}", s_->remote));
    }
    if (n == 0) return false;
    const auto got = static_cast<std::size_t>(n);
    if (got < chunk_) {
      Buffer exact = Buffer::uninitialized(got);
      std::memcpy(exact.data(), b.data(), got);
      b = std::move(exact);
    }
    out.push_back(std::move(b));
    return true;
  }

 private:
  std::shared_ptr<detail::SocketState> s_;
  std::size_t chunk_;
};

class SocketSink final : public stream::detail::SinkNode<Buffer> {
 public:
  SocketSink(std::shared_ptr<detail::SocketState> s, stream::detail::Slot& slot)
      : SinkNode(slot), s_(std::move(s)) {}
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    try {
      for (Buffer& b : batch) {
        const std::byte* p = b.data();
        std::size_t left = b.size();
        while (left > 0) {
          const ssize_t n = ::send(s_->fd, p, left, MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category(),
                                    fmt::format("net: cannot write to {}", s_->remote));
          }
          p += n;
          left -= static_cast<std::size_t>(n);
        }
        position_ += b.size();
      }
    } catch (...) {
      fail(position_);
    }
    end();
  }
  void finish() override { ::shutdown(s_->fd, SHUT_WR); }

 private:
  std::shared_ptr<detail::SocketState> s_;
};

}  // namespace

Connection Connection::connect(const std::string& host, std::uint16_t port) {
  auto s = std::make_shared<detail::SocketState>();
  boost::system::error_code ec;
  tcp::resolver resolver(s->io);
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (!ec) asio::connect(s->socket, endpoints, ec);
  if (ec) {
    throw std::system_error(ec.value(), std::generic_category(),
                            fmt::format("crew::net::Connection::connect: {}:{}", host, port));
  }
  return Connection(adopt(std::move(s)));
}

Connection::Connection(std::shared_ptr<detail::SocketState> state) noexcept
    : state_(std::move(state)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() = default;

stream::Flow<Buffer> Connection::readable(stream::ReadOptions options) {
  if (!state_) throw std::logic_error("crew::net::Connection::readable: moved-from connection");
  if (options.chunk == 0) {
    throw std::invalid_argument("crew::net::Connection::readable: chunk (0) must be >= 1");
  }
  if (state_->readable_taken.exchange(true)) {
    throw std::logic_error("crew::net::Connection::readable: called twice; call it once");
  }
  return stream::Flow<Buffer>(std::make_unique<SocketSource>(state_, options.chunk), "net.read",
                              {options.high_water_mark, options.high_water_bytes});
}

stream::FixedSink<Buffer> Connection::writable() {
  if (!state_) throw std::logic_error("crew::net::Connection::writable: moved-from connection");
  if (state_->writable_taken.exchange(true)) {
    throw std::logic_error("crew::net::Connection::writable: called twice; call it once");
  }
  stream::FixedSink<Buffer> s;
  s.name = "net.write";
  s.factory = [state = state_](stream::detail::Slot& slot, const stream::detail::Context&) {
    return std::make_unique<SocketSink>(state, slot);
  };
  return s;
}

void Connection::shutdown_write() {
  if (state_) ::shutdown(state_->fd, SHUT_WR);
}
void Connection::close() {
  if (state_) ::shutdown(state_->fd, SHUT_RDWR);
}
std::string Connection::local_endpoint() const {
  return state_ ? state_->local : std::string();
}
std::string Connection::remote_endpoint() const {
  return state_ ? state_->remote : std::string();
}

Listener::Listener(ListenOptions options) : state_(std::make_unique<detail::ListenerState>()) {
  if (options.backlog < 1) {
    throw std::invalid_argument(
        fmt::format("crew::net::Listener: backlog ({}) must be >= 1", options.backlog));
  }
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(options.address, ec);
  if (ec) {
    throw std::invalid_argument(fmt::format(
        "crew::net::Listener: address ('{}') is not a numeric IP address", options.address));
  }
  const tcp::endpoint endpoint(address, options.port);
  auto& a = state_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(options.backlog, ec);
  if (ec) {
    throw std::system_error(
        ec.value(), std::generic_category(),
        fmt::format("crew::net::Listener: cannot listen on {}:{}", options.address, options.port));
  }
  state_->port = a.local_endpoint().port();
}

Listener::~Listener() {
  close();
}

std::uint16_t Listener::port() const noexcept {
  return state_->port;
}

std::unique_ptr<Connection> Listener::accept(std::stop_token stop) {
  const int fd = state_->acceptor.native_handle();
  for (;;) {
    if (state_->closed.load() || stop.stop_requested()) return nullptr;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 50);
    if (r < 0 && errno != EINTR) {
      throw std::system_error(errno, std::generic_category(), "crew::net::Listener::accept: poll");
    }
    if (r <= 0) continue;
    auto s = std::make_shared<detail::SocketState>();
    boost::system::error_code ec;
    state_->acceptor.accept(s->socket, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again ||
        ec == asio::error::connection_aborted || ec == asio::error::interrupted) {
      continue;
    }
    if (ec) {
      throw std::system_error(ec.value(), std::generic_category(), "crew::net::Listener::accept");
    }
    return std::unique_ptr<Connection>(new Connection(adopt(std::move(s))));
  }
}

void Listener::close() {
  // The descriptor itself is closed by the destructor, never under a concurrent accept().
  if (state_) state_->closed.store(true);
}

}  // namespace net
}  // namespace v0
}  // namespace crew
