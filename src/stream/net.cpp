// crew::net: every socket operation is asynchronous Asio on a strand of the connection's
// executor. The readable side is an AsyncSource (a pipeline from it runs in its reads'
// completions); the writable side queues chunks and writes them with gathered async_writes,
// reporting readiness to the driver once they completed: that is the backpressure.
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <fmt/format.h>
#include <pthread.h>

#include <crew/stream/net.hpp>

namespace crew {
inline namespace v0 {
namespace net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Strand = asio::strand<Executor>;

Executor default_executor() {
  // Never destroyed: sockets may outlive every static destructor, and the thread serves them
  // until the process exits.
  struct Loop {
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  };
  static Loop* const loop = [] {
    auto* l = new Loop;
    std::thread([l] {
      pthread_setname_np(pthread_self(), "crew-net");
      l->io.run();
    }).detach();
    return l;
  }();
  return loop->io.get_executor();
}

namespace detail {

struct SocketState {
  SocketState(Strand s, tcp::socket sock) : strand(std::move(s)), socket(std::move(sock)) {}
  explicit SocketState(Strand s) : strand(std::move(s)), socket(strand) {}

  Strand strand;
  tcp::socket socket;
  std::string local, remote;
  std::atomic<bool> readable_taken{false};
  std::atomic<bool> writable_taken{false};

  // The writing side; used on the strand only.
  std::deque<Buffer> queued;
  std::size_t queued_bytes = 0;
  std::size_t mark = 0;  // the sink has room while less than this is queued
  bool writing = false;
  bool finishing = false;  // the end of the stream came: shut down writing once idle
  std::exception_ptr write_error;
  std::vector<stream::detail::Inlet<Buffer>::Ready> waiters;
  std::uint64_t written = 0;
  stream::detail::Slot sink_info;  // name and index for a StageError, copied from the sink's slot
};

struct ListenerState {
  explicit ListenerState(Executor ex)
      : executor(std::move(ex)), strand(executor), acceptor(strand) {}
  Executor executor;
  Strand strand;
  tcp::acceptor acceptor;
  std::uint16_t port = 0;
  std::atomic<bool> closed{false};
};

}  // namespace detail

namespace {

using detail::SocketState;

std::string to_string(const tcp::endpoint& e) {
  return fmt::format("{}:{}", e.address().to_string(), e.port());
}

std::shared_ptr<SocketState> adopt(std::shared_ptr<SocketState> s) {
  boost::system::error_code ec;
  s->socket.set_option(tcp::no_delay(true), ec);
  auto l = s->socket.local_endpoint(ec);
  if (!ec) s->local = to_string(l);
  auto r = s->socket.remote_endpoint(ec);
  if (!ec) s->remote = to_string(r);
  return s;
}

class SocketSource final : public stream::detail::AsyncSource<Buffer> {
 public:
  SocketSource(std::shared_ptr<SocketState> s, std::size_t chunk)
      : s_(std::move(s)), chunk_(chunk) {}

  void read(std::vector<Buffer>& out, Delivery done) override {
    asio::dispatch(s_->strand, [s = s_, chunk = chunk_, &out, done = std::move(done)]() mutable {
      Buffer b = Buffer::uninitialized(chunk);
      auto space = asio::buffer(b.data(), chunk);
      s->socket.async_read_some(space, [s, chunk, &out, b = std::move(b), done = std::move(done)](
                                           boost::system::error_code ec, std::size_t n) mutable {
        if (n > 0) {
          if (n < chunk) {
            Buffer exact = Buffer::uninitialized(n);
            std::memcpy(exact.data(), b.data(), n);
            b = std::move(exact);
          }
          out.push_back(std::move(b));
        }
        if (!ec || ec == asio::error::operation_aborted) return done(nullptr, true);
        if (ec == asio::error::eof) return done(nullptr, false);
        done(std::make_exception_ptr(
                 std::system_error(ec, fmt::format("net: cannot read from {}", s->remote))),
             false);
      });
    });
  }
  void cancel() noexcept override {
    asio::post(s_->strand, [s = s_] {
      boost::system::error_code ec;
      s->socket.cancel(ec);
    });
  }
  void post(std::function<void()> fn) override { asio::post(s_->strand, std::move(fn)); }

 private:
  std::shared_ptr<SocketState> s_;
  std::size_t chunk_;
};

// Writes with at most this many chunks gathered into one call.
constexpr std::size_t kGather = 64;

void after_write(const std::shared_ptr<SocketState>& s);

void write_queued(const std::shared_ptr<SocketState>& s) {
  std::vector<asio::const_buffer> gather;
  const std::size_t n = std::min(s->queued.size(), kGather);
  gather.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    gather.emplace_back(s->queued[i].data(), s->queued[i].size());
  }
  s->writing = true;
  asio::async_write(s->socket, gather, [s, n](boost::system::error_code ec, std::size_t bytes) {
    s->writing = false;
    s->written += bytes;
    if (ec) {
      s->queued_bytes = 0;
      try {
        try {
          throw std::system_error(ec, fmt::format("net: cannot write to {}", s->remote));
        } catch (...) {
          stream::detail::rethrow_as_stage_error(s->sink_info, s->written);
        }
      } catch (...) {
        s->write_error = std::current_exception();
      }
      s->queued.clear();
    } else {
      s->queued.erase(s->queued.begin(), s->queued.begin() + static_cast<std::ptrdiff_t>(n));
      s->queued_bytes -= bytes;
    }
    if (!s->queued.empty()) write_queued(s);
    after_write(s);
  });
}

// The sink has room while less than its mark is queued (the next read overlaps the writes), and
// after the end of the stream once everything is written.
bool has_room(const SocketState& s) {
  if (s.write_error) return true;
  return s.finishing ? !s.writing : s.queued_bytes < s.mark;
}

// A write completed: once everything is written the end of the stream shuts down writing, and
// whoever waits for room is told.
void after_write(const std::shared_ptr<SocketState>& s) {
  if (!s->writing && s->finishing && !s->write_error) {
    boost::system::error_code ec;
    s->socket.shutdown(tcp::socket::shutdown_send, ec);
  }
  if (!s->waiters.empty() && has_room(*s)) {
    for (auto& ready : std::exchange(s->waiters, {})) ready(s->write_error);
  }
}

class SocketSink final : public stream::detail::SinkNode<Buffer> {
 public:
  SocketSink(std::shared_ptr<SocketState> s, stream::detail::Slot& slot, std::size_t mark)
      : SinkNode(slot), s_(std::move(s)) {
    s_->sink_info.name = slot.name;
    s_->sink_info.index = slot.index;
    s_->mark = mark;
  }
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    asio::dispatch(s_->strand, [s = s_, chunks = std::move(batch)]() mutable {
      if (s->write_error) return;
      for (Buffer& b : chunks) {
        s->queued_bytes += b.size();
        if (b.size() > 0) s->queued.push_back(std::move(b));
      }
      if (!s->writing && !s->queued.empty()) write_queued(s);
    });
    batch.clear();
    end();
  }
  void finish() override {
    asio::dispatch(s_->strand, [s = s_] {
      s->finishing = true;
      after_write(s);
    });
  }
  void when_ready(Ready ready) override {
    asio::dispatch(s_->strand, [s = s_, ready = std::move(ready)]() mutable {
      if (has_room(*s)) {
        ready(s->write_error);
      } else {
        s->waiters.push_back(std::move(ready));
      }
    });
  }

 private:
  std::shared_ptr<SocketState> s_;
};

[[noreturn]] void throw_system_error(const boost::system::error_code& ec, const std::string& what) {
  throw std::system_error(ec, what);
}

}  // namespace

Connection Connection::connect(const std::string& host, std::uint16_t port) {
  return connect(host, port, default_executor());
}

Connection Connection::connect(const std::string& host, std::uint16_t port,
                               const Executor& executor) {
  if (!executor) {
    throw std::invalid_argument("crew::net::Connection::connect: executor is empty");
  }
  auto s = std::make_shared<SocketState>(Strand(executor));
  // Blocking resolve and connect: neither needs the executor to run.
  boost::system::error_code ec;
  tcp::resolver resolver(executor);
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (!ec) asio::connect(s->socket, endpoints, ec);
  if (ec) throw_system_error(ec, fmt::format("crew::net::Connection::connect: {}:{}", host, port));
  return Connection(adopt(std::move(s)));
}

void Connection::start_connect(const Executor& executor, std::string host, std::uint16_t port,
                               detail::ConnectionHandler handler) {
  if (!executor) {
    throw std::invalid_argument("crew::net::Connection::async_connect: executor is empty");
  }
  auto s = std::make_shared<SocketState>(Strand(executor));
  auto resolver = std::make_shared<tcp::resolver>(executor);
  resolver->async_resolve(host, std::to_string(port),
                          [s, resolver, handler = std::move(handler)](
                              boost::system::error_code ec, tcp::resolver::results_type endpoints) {
                            if (ec) return handler(ec, Connection());
                            asio::async_connect(
                                s->socket, endpoints,
                                [s, handler](boost::system::error_code ec, const tcp::endpoint&) {
                                  if (ec) return handler(ec, Connection());
                                  handler(ec, Connection(adopt(s)));
                                });
                          });
}

Connection::Connection() noexcept = default;
Connection::Connection(std::shared_ptr<SocketState> state) noexcept : state_(std::move(state)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() = default;

stream::Flow<Buffer> Connection::readable(stream::ReadOptions options) {
  if (!state_) throw std::logic_error("crew::net::Connection::readable: empty connection");
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
  if (!state_) throw std::logic_error("crew::net::Connection::writable: empty connection");
  if (state_->writable_taken.exchange(true)) {
    throw std::logic_error("crew::net::Connection::writable: called twice; call it once");
  }
  stream::FixedSink<Buffer> s;
  s.name = "net.write";
  s.factory = [state = state_](stream::detail::Slot& slot, const stream::detail::Context& ctx) {
    return std::make_unique<SocketSink>(state, slot, ctx.marks().high_water_bytes);
  };
  return s;
}

void Connection::shutdown_write() {
  if (!state_) return;
  asio::dispatch(state_->strand, [s = state_] {
    boost::system::error_code ec;
    s->socket.shutdown(tcp::socket::shutdown_send, ec);
  });
}

void Connection::close() {
  if (!state_) return;
  asio::dispatch(state_->strand, [s = state_] {
    boost::system::error_code ec;
    s->socket.shutdown(tcp::socket::shutdown_both, ec);
  });
}

std::string Connection::local_endpoint() const {
  return state_ ? state_->local : std::string();
}
std::string Connection::remote_endpoint() const {
  return state_ ? state_->remote : std::string();
}

Listener::Listener(ListenOptions options) {
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
  state_ = std::make_shared<detail::ListenerState>(options.executor ? options.executor
                                                                    : default_executor());
  const tcp::endpoint endpoint(address, options.port);
  auto& a = state_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(options.backlog, ec);
  if (ec) {
    throw_system_error(ec, fmt::format("crew::net::Listener: cannot listen on {}:{}",
                                       options.address, options.port));
  }
  state_->port = a.local_endpoint().port();
}

Listener::~Listener() {
  close();
}

std::uint16_t Listener::port() const noexcept {
  return state_->port;
}

Executor Listener::executor() const {
  return state_->executor;
}

void Listener::start_accept(detail::ConnectionHandler handler, std::stop_token stop) {
  // On the strand: a close() or a stop that came first is seen here, one that comes later
  // cancels the accept (its cancel is posted to the same strand).
  asio::dispatch(state_->strand, [st = state_, handler = std::move(handler),
                                  stop = std::move(stop)]() mutable {
    if (st->closed.load() || stop.stop_requested()) {
      return handler(asio::error::operation_aborted, Connection());
    }
    Strand strand(st->executor);
    st->acceptor.async_accept(strand, [strand, handler = std::move(handler)](
                                          boost::system::error_code ec, tcp::socket socket) {
      if (ec) return handler(ec, Connection());
      handler(ec, Connection(adopt(std::make_shared<SocketState>(strand, std::move(socket)))));
    });
  });
}

std::unique_ptr<Connection> Listener::accept(std::stop_token stop) {
  struct Wait {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    boost::system::error_code ec;
    Connection conn;
  };
  for (;;) {
    if (state_->closed.load() || stop.stop_requested()) return nullptr;
    auto wait = std::make_shared<Wait>();
    std::stop_callback on_stop(stop, [st = state_] {
      asio::post(st->strand, [st] {
        boost::system::error_code ec;
        st->acceptor.cancel(ec);
      });
    });
    start_accept(
        [wait](boost::system::error_code ec, Connection conn) {
          std::lock_guard lock(wait->mutex);
          wait->ec = ec;
          wait->conn = std::move(conn);
          wait->done = true;
          wait->cv.notify_one();
        },
        stop);
    std::unique_lock lock(wait->mutex);
    wait->cv.wait(lock, [&] { return wait->done; });
    const auto ec = wait->ec;
    if (!ec) return std::make_unique<Connection>(std::move(wait->conn));
    if (ec == asio::error::operation_aborted) return nullptr;
    // A peer that gave up between the kernel's accept and ours, or a signal: take the next one.
    if (ec == asio::error::connection_aborted || ec == asio::error::interrupted ||
        ec == asio::error::try_again || ec == asio::error::would_block) {
      continue;
    }
    throw_system_error(ec, "crew::net::Listener::accept");
  }
}

void Listener::close() {
  if (!state_ || state_->closed.exchange(true)) return;
  // The descriptor itself closes with the last reference, never under a pending accept.
  asio::post(state_->strand, [st = state_] {
    boost::system::error_code ec;
    st->acceptor.cancel(ec);
  });
}

}  // namespace net
}  // namespace v0
}  // namespace crew
