// crew::net — TCP connections as byte streams: a Connection is a Duplex whose readable side is a
// crew::stream source and whose writable side is a crew::stream sink (Boost.Asio underneath).
#pragma once

#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>

#include <crew/buffer.hpp>
#include <crew/stream/bytes.hpp>
#include <crew/stream/flow.hpp>

namespace crew {
inline namespace v0 {
namespace net {

namespace detail {
struct SocketState;
struct ListenerState;
}  // namespace detail

/// One connected TCP socket, used as a Duplex: `readable()` is a flow of the bytes the peer
/// sends, `writable()` a sink whose bytes go to the peer. Both may run at the same time, in one
/// pipeline (`conn.readable() | uppercase() | conn.writable()`, an echo-through-transform) or in
/// two.
///
///     crew::net::Connection conn = crew::net::Connection::connect("127.0.0.1", port);
///     auto send = crew::stream::from(chunks) | conn.writable();     // shuts down writing at end
///     auto recv = conn.readable() | crew::stream::collect();        // until the peer shuts down
///     auto sent = send.run();
///     recv.run().get();
///
/// The socket closes when the Connection and every flow or sink made from it are gone.
///
/// Thread safety: readable() and writable() may each be called once; the resulting source and
/// sink run on their pipelines' threads and may run concurrently with each other.
/// shutdown_write() and close() may be called from any thread.
class Connection {
 public:
  /// Resolves `host` and connects. Throws std::system_error naming host and port on failure.
  static Connection connect(const std::string& host, std::uint16_t port);

  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// The bytes the peer sends, in chunks of at most `options.chunk`, until it shuts down its
  /// sending side. A stop request is noticed within 50 ms even while the peer is silent.
  stream::Flow<Buffer> readable(stream::ReadOptions options = {});
  /// A sink sending every chunk to the peer; at the end of the stream it shuts down the sending
  /// side (the peer reads end of file). A reset connection fails the stage.
  stream::FixedSink<Buffer> writable();

  /// Shuts down the sending side now (the peer's reads see end of file).
  void shutdown_write();
  /// Shuts down both directions; blocked reads return end of file.
  void close();

  /// "address:port" of this end and of the peer.
  [[nodiscard]] std::string local_endpoint() const;
  [[nodiscard]] std::string remote_endpoint() const;

 private:
  friend class Listener;
  explicit Connection(std::shared_ptr<detail::SocketState> state) noexcept;
  std::shared_ptr<detail::SocketState> state_;
};

/// Options of a Listener.
struct ListenOptions {
  /// Numeric IPv4 or IPv6 address to bind.
  std::string address = "127.0.0.1";
  /// 0 picks a free port (read it back with port()).
  std::uint16_t port = 0;
  /// Pending connections the kernel queues. Must be >= 1.
  int backlog = 128;
};

/// A listening TCP socket.
///
///     crew::net::Listener server({.port = 0});
///     while (auto conn = server.accept()) { ... }   // empty once closed
///
/// Thread safety: accept() may be called from one thread while close() is called from another;
/// close() wakes a blocked accept() within 50 ms.
class Listener {
 public:
  /// Binds and listens. Throws std::invalid_argument for a bad option, std::system_error
  /// naming the address and port when the bind fails.
  explicit Listener(ListenOptions options = {});
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  /// The bound port.
  [[nodiscard]] std::uint16_t port() const noexcept;
  /// Waits for the next connection. Empty once the listener is closed or `stop` fires.
  std::unique_ptr<Connection> accept(std::stop_token stop = {});
  /// Stops accepting; a blocked accept() returns empty. Idempotent.
  void close();

 private:
  std::unique_ptr<detail::ListenerState> state_;
};

}  // namespace net
}  // namespace v0
}  // namespace crew
