// crew::net — TCP connections as byte streams on an Asio executor: a Connection is a Duplex
// whose readable side is a crew::stream source and whose writable side is a crew::stream sink.
// Every socket operation is asynchronous Boost.Asio on the connection's executor: crew's own
// I/O thread by default, or an io_context of the program's.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <utility>  // before Boost 1.74's Asio, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/system/error_code.hpp>

#include <crew/buffer.hpp>
#include <crew/stream/bytes.hpp>
#include <crew/stream/flow.hpp>

namespace crew {
inline namespace v0 {
namespace net {

/// The executor sockets run on.
using Executor = boost::asio::any_io_executor;

/// crew's own I/O executor: one thread (`crew-net`), started on first use, shared by every
/// Connection and Listener made without an executor of the program's. Pipelines reading from
/// those sockets run their stages on it: keep them quick, or hand heavy work to a pool
/// (`parallel_map`) or give the sockets an executor with more threads.
Executor default_executor();

namespace detail {
struct SocketState;
struct ListenerState;
}  // namespace detail

class Connection;
namespace detail {
// Completes an accept or connect: the handler gets the error (or none) and the connection.
using ConnectionHandler = std::function<void(boost::system::error_code, Connection)>;

// Wraps an Asio completion handler: it runs on its own associated executor (default: `fallback`),
// which counts the pending operation as work meanwhile, so that its io_context does not run out.
template <class Handler>
ConnectionHandler completion_of(Handler handler, const Executor& fallback);
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
/// A pipeline reading from a Connection starts no thread: its stages run on the connection's
/// executor, each read waiting until the stages and the sink have room (a socket sink: until its
/// writes completed). A connection's handlers run one at a time (a strand), so an executor with
/// several threads serves several connections at once. The socket closes when the Connection
/// and every flow or sink made from it are gone.
///
/// Thread safety: readable() and writable() may each be called once; shutdown_write() and close()
/// may be called from any thread. Writing from a pipeline that is not driven by a socket (a
/// `from()` source, say) waits on its pipeline thread for the executor, which must be running.
class Connection {
 public:
  /// An empty connection (what a failed async_accept() hands over with its error).
  Connection() noexcept;
  /// Resolves `host` and connects, on crew's executor or `executor`. Throws std::system_error
  /// naming host and port on failure.
  static Connection connect(const std::string& host, std::uint16_t port);
  static Connection connect(const std::string& host, std::uint16_t port, const Executor& executor);

  /// Resolves and connects asynchronously on `executor`; completes with
  /// `void(boost::system::error_code, Connection)` on the token's executor. Any completion token.
  ///
  ///     crew::net::Connection conn = co_await crew::net::Connection::async_connect(
  ///         io.get_executor(), "127.0.0.1", port, asio::use_awaitable);
  template <class CompletionToken>
  static auto async_connect(const Executor& executor, std::string host, std::uint16_t port,
                            CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, Connection)>(
        [executor, host = std::move(host), port](auto handler) mutable {
          start_connect(executor, std::move(host), port,
                        detail::completion_of(std::move(handler), executor));
        },
        token);
  }

  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// The bytes the peer sends, in chunks of at most `options.chunk`, until it shuts down its
  /// sending side. A stop request passed to the pipeline's run() cancels a pending read at once.
  stream::Flow<Buffer> readable(stream::ReadOptions options = {});
  /// A sink sending every chunk to the peer; at the end of the stream it shuts down the sending
  /// side (the peer reads end of file). A reset connection fails the stage.
  stream::FixedSink<Buffer> writable();

  /// Shuts down the sending side now (the peer's reads see end of file).
  void shutdown_write();
  /// Shuts down both directions; pending reads end as at end of file.
  void close();

  /// "address:port" of this end and of the peer.
  [[nodiscard]] std::string local_endpoint() const;
  [[nodiscard]] std::string remote_endpoint() const;
  /// False for an empty or moved-from connection.
  explicit operator bool() const noexcept { return state_ != nullptr; }

 private:
  friend class Listener;
  explicit Connection(std::shared_ptr<detail::SocketState> state) noexcept;
  static void start_connect(const Executor& executor, std::string host, std::uint16_t port,
                            detail::ConnectionHandler handler);
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
  /// Where the listener and the connections it accepts run; empty: crew's default_executor().
  Executor executor{};
};

/// A listening TCP socket.
///
///     crew::net::Listener server({.port = 0});
///     while (auto conn = server.accept()) { ... }   // empty once closed
///
/// or, on an io_context of the program's, one coroutine per connection and no thread:
///
///     crew::net::Listener server({.port = 8080, .executor = io.get_executor()});
///     for (;;) {
///       crew::net::Connection conn = co_await server.async_accept(asio::use_awaitable);
///       co_spawn(io, serve(std::move(conn)), asio::detached);
///     }
///
/// Thread safety: accept() and async_accept() may be called from one thread at a time while
/// close() is called from another; close() ends a pending accept at once.
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
  /// The executor the listener and its connections run on.
  [[nodiscard]] Executor executor() const;
  /// Waits for the next connection. Empty once the listener is closed or `stop` fires. Needs
  /// the executor running on another thread (crew's default one always is).
  std::unique_ptr<Connection> accept(std::stop_token stop = {});
  /// Accepts the next connection asynchronously; completes with `void(boost::system::error_code,
  /// Connection)` on the token's executor (`boost::asio::error::operation_aborted` once the
  /// listener is closed). Any completion token: a callback, `use_awaitable`, `use_future`.
  template <class CompletionToken>
  auto async_accept(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, Connection)>(
        [this](auto handler) {
          start_accept(detail::completion_of(std::move(handler), executor()));
        },
        token);
  }
  /// Stops accepting; a pending accept ends (accept() returns empty, async_accept() with
  /// operation_aborted). Idempotent.
  void close();

 private:
  void start_accept(detail::ConnectionHandler handler, std::stop_token stop = {});
  std::shared_ptr<detail::ListenerState> state_;
};

template <class Handler>
detail::ConnectionHandler detail::completion_of(Handler handler, const Executor& fallback) {
  auto work = boost::asio::prefer(boost::asio::get_associated_executor(handler, fallback),
                                  boost::asio::execution::outstanding_work.tracked);
  // std::function copies what it holds; Asio handlers may be move-only.
  auto shared = std::make_shared<Handler>(std::move(handler));
  return [shared, work](boost::system::error_code ec, Connection conn) {
    boost::asio::dispatch(
        work, [shared, ec, conn = std::move(conn)]() mutable { (*shared)(ec, std::move(conn)); });
  };
}

}  // namespace net
}  // namespace v0
}  // namespace crew
