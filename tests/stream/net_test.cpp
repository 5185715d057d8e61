// crew::net: a Connection as a Duplex — both sides in pipelines at once — and the Listener, on
// crew's executor and on an io_context of the test's.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>  // before Boost 1.74's Asio, which uses std::exchange without it
#include <vector>

#include <arpa/inet.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/stream.hpp>
#include <crew/stream/net.hpp>

namespace {

namespace cs = crew::stream;
using ::testing::HasSubstr;

std::string text_of(std::size_t n) {
  std::string s(n, ' ');
  std::mt19937 rng(5);
  for (char& c : s) c = static_cast<char>("abcxyz 09\n"[rng() % 10]);
  return s;
}

std::string upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return s;
}

std::size_t thread_count() {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)e;
    ++n;
  }
  return n;
}

// Sends `text` on `conn` and reads the echo back, in two pipelines; the receiving pipeline's
// Summary goes to `received_summary` when given.
std::string echo_through(crew::net::Connection& conn, const std::string& text,
                         cs::Summary* received_summary = nullptr) {
  std::vector<crew::Buffer> chunks;
  for (std::size_t at = 0; at < text.size(); at += 10'000) {
    chunks.push_back(crew::Buffer::copy_of(std::string_view(text).substr(at, 10'000)));
  }
  auto send = cs::from(std::move(chunks)) | conn.writable();
  auto receive = conn.readable() | cs::collect();
  auto sent = send.run();
  auto received = receive.run();
  (void)sent.get();
  cs::Summary summary = received.get();
  if (received_summary) *received_summary = std::move(summary);
  std::string echoed;
  for (const auto& b : receive.take()) echoed += b.view();
  return echoed;
}

TEST(Net, DuplexRoundTripThroughUppercase) {
  crew::net::Listener listener;
  ASSERT_NE(listener.port(), 0);
  std::jthread server([&listener] {
    auto conn = listener.accept();
    ASSERT_TRUE(conn);
    auto p = conn->readable({.chunk = 1024}) | cs::uppercase() | conn->writable();
    (void)p.run().get();
  });

  const std::string text = text_of(300'000);
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  EXPECT_THAT(client.remote_endpoint(), HasSubstr(std::to_string(listener.port())));
  cs::Summary s;
  EXPECT_EQ(echo_through(client, text, &s), upper(text));
  EXPECT_EQ(s.stage("net.read").bytes_out, text.size());
}

TEST(Net, CloseWakesABlockedAccept) {
  crew::net::Listener listener;
  std::jthread closer([&listener] { listener.close(); });
  EXPECT_EQ(listener.accept(), nullptr);
}

TEST(Net, AcceptHonoursAStopToken) {
  crew::net::Listener listener;
  std::stop_source stop;
  stop.request_stop();
  EXPECT_EQ(listener.accept(stop.get_token()), nullptr);
}

TEST(Net, ConnectFailureNamesTheEndpoint) {
  // A port this test holds without listening on it: connecting is refused, and no other test
  // running beside this one can take the port meanwhile (as it could a port merely closed).
  const int held = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(held, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(held, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(held, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::uint16_t port = ntohs(a.sin_port);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{held};
  try {
    (void)crew::net::Connection::connect("127.0.0.1", port);
    FAIL();
  } catch (const std::system_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("127.0.0.1:" + std::to_string(port)));
  }
}

TEST(Net, BadOptionsAndSecondUse) {
  EXPECT_THROW(crew::net::Listener({.address = "not-an-ip"}), std::invalid_argument);
  EXPECT_THROW(crew::net::Listener({.backlog = 0}), std::invalid_argument);
  crew::net::Listener listener;
  std::jthread server([&listener] { auto c = listener.accept(); });
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  auto r = client.readable();
  EXPECT_THROW((void)client.readable(), std::logic_error);
  client.close();
}

TEST(Net, StopCancelsASilentReader) {
  crew::net::Listener listener;
  std::unique_ptr<crew::net::Connection> server_side;
  std::jthread server([&] { server_side = listener.accept(); });
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  server.join();
  std::stop_source stop;
  auto p = client.readable() | cs::count();
  auto f = p.run(stop.get_token());
  stop.request_stop();
  EXPECT_THROW((void)f.get(), crew::Cancelled);
}

TEST(Net, SocketPipelinesStartNoThreadPerConnection) {
  crew::net::Listener listener;
  constexpr std::size_t kConnections = 32;
  std::vector<crew::net::Connection> clients;
  std::vector<std::unique_ptr<crew::net::Connection>> served;
  std::vector<cs::Pipeline<void>> echoes;
  std::vector<crew::Future<cs::Summary>> done;
  const std::size_t before = thread_count();
  for (std::size_t i = 0; i < kConnections; ++i) {
    clients.push_back(crew::net::Connection::connect("127.0.0.1", listener.port()));
    served.push_back(listener.accept());
    ASSERT_TRUE(served.back());
    echoes.push_back(served.back()->readable() | cs::uppercase() | served.back()->writable());
    done.push_back(echoes.back().run());
  }
  // Every echo is running (waiting for its client's bytes), and none took a thread.
  EXPECT_LT(thread_count(), before + 4);
  for (std::size_t i = 0; i < kConnections; ++i) {
    const std::string text = text_of(20'000 + i);
    EXPECT_EQ(echo_through(clients[i], text), upper(text)) << "connection " << i;
    EXPECT_EQ(done[i].get().stage("net.write").bytes_in, text.size());
  }
}

TEST(Net, RunsOnAProgramsIoContext) {
  boost::asio::io_context io;
  crew::net::Listener listener({.executor = io.get_executor()});
  std::promise<std::thread::id> stage_thread;
  std::atomic<bool> seen{false};
  std::optional<cs::Pipeline<void>> echo;
  crew::Future<cs::Summary> done;
  listener.async_accept([&](boost::system::error_code ec, crew::net::Connection conn) {
    ASSERT_FALSE(ec) << ec.message();
    auto shared = std::make_shared<crew::net::Connection>(std::move(conn));
    echo.emplace(shared->readable() | cs::tap([&](const crew::Buffer&) {
                   if (!seen.exchange(true)) stage_thread.set_value(std::this_thread::get_id());
                 }) |
                 cs::uppercase() | shared->writable());
    done = echo->run();
  });
  std::thread::id io_thread;
  std::jthread runner([&] {
    io_thread = std::this_thread::get_id();
    io.run();  // until the accept and the echo are over: then it runs out of work
  });
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  const std::string text = text_of(100'000);
  EXPECT_EQ(echo_through(client, text), upper(text));
  const std::thread::id stage = stage_thread.get_future().get();
  runner.join();
  EXPECT_EQ(stage, io_thread);
  EXPECT_EQ(done.get().stage("net.read").bytes_out, text.size());
}

boost::asio::awaitable<void> accept_one(crew::net::Listener* listener,
                                        crew::net::Connection* accepted) {
  *accepted = co_await listener->async_accept(boost::asio::use_awaitable);
}

boost::asio::awaitable<void> connect_to(std::uint16_t port, crew::net::Connection* connected) {
  *connected = co_await crew::net::Connection::async_connect(
      co_await boost::asio::this_coro::executor, "127.0.0.1", port, boost::asio::use_awaitable);
}

TEST(Net, AsyncAcceptInACoroutine) {
  boost::asio::io_context io;
  crew::net::Listener listener({.executor = io.get_executor()});
  crew::net::Connection server_side;
  boost::asio::co_spawn(io, accept_one(&listener, &server_side), boost::asio::detached);
  std::jthread runner([&] { io.run(); });  // until the coroutine is done
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  runner.join();
  ASSERT_TRUE(server_side);
  EXPECT_EQ(server_side.remote_endpoint(), client.local_endpoint());
}

TEST(Net, AsyncConnectInACoroutine) {
  boost::asio::io_context io;
  crew::net::Listener listener;  // on crew's executor
  crew::net::Connection client;
  boost::asio::co_spawn(io, connect_to(listener.port(), &client), boost::asio::detached);
  std::jthread runner([&] { io.run(); });
  auto server_side = listener.accept();
  ASSERT_TRUE(server_side);
  runner.join();
  ASSERT_TRUE(client);
  EXPECT_EQ(client.local_endpoint(), server_side->remote_endpoint());
}

TEST(Net, AsyncConnectFailureIsAnErrorCode) {
  boost::asio::io_context io;
  boost::system::error_code error;
  bool called = false;
  // Port 0 is never listening: the connect is refused.
  crew::net::Connection::async_connect(
      io.get_executor(), "127.0.0.1", 0,
      [&](boost::system::error_code ec, crew::net::Connection conn) {
        called = true;
        error = ec;
        EXPECT_FALSE(conn);
      });
  io.run();
  EXPECT_TRUE(called);
  EXPECT_TRUE(error);
}

TEST(Net, CloseEndsAPendingAsyncAccept) {
  crew::net::Listener listener;
  std::promise<boost::system::error_code> result;
  listener.async_accept([&](boost::system::error_code ec, crew::net::Connection conn) {
    EXPECT_FALSE(conn);
    result.set_value(ec);
  });
  listener.close();
  EXPECT_EQ(result.get_future().get(), boost::asio::error::operation_aborted);
}

TEST(Net, ADroppedPipelineObjectStillRunsToTheEnd) {
  crew::net::Listener listener;
  auto client = crew::net::Connection::connect("127.0.0.1", listener.port());
  auto server_side = listener.accept();
  ASSERT_TRUE(server_side);
  crew::Future<cs::Summary> done;
  {
    auto p = server_side->readable() | cs::uppercase() | server_side->writable();
    done = p.run();
  }  // the run keeps what it needs
  server_side.reset();
  const std::string text = text_of(50'000);
  EXPECT_EQ(echo_through(client, text), upper(text));
  EXPECT_EQ(done.get().stage("net.write").bytes_in, text.size());
}

// A raw client socket connected to `port`; with `buffer_bytes`, its kernel buffers are fixed at
// that size (no autotuning).
int raw_connect(std::uint16_t port, int buffer_bytes = 0) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (buffer_bytes > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
  }
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

// The last of the three numbers in /proc/sys/<name> (tcp_rmem: min, default, max).
std::uint64_t sysctl_max(const std::string& name) {
  std::ifstream in("/proc/sys/" + name);
  std::uint64_t min = 0, def = 0, max = 0;
  in >> min >> def >> max;
  return max;
}

TEST(Net, AWriterOnAPipelineThreadDeliversEverythingToASlowReader) {
  crew::net::Listener listener;
  const int fd = raw_connect(listener.port(), 128 * 1024);
  ASSERT_GE(fd, 0);
  auto server_side = listener.accept();
  ASSERT_TRUE(server_side);
  // The server produces 64 MiB as fast as the socket lets it; the client reads 4 KiB at a time.
  constexpr std::uint64_t kTotal = 64u << 20;
  constexpr std::size_t kChunk = 64 * 1024;
  std::atomic<std::uint64_t> produced{0};
  auto p = cs::from([&produced]() -> std::optional<crew::Buffer> {
             if (produced.load() >= kTotal) return std::nullopt;
             produced += kChunk;
             return crew::Buffer(kChunk);
           }) |
           server_side->writable();
  auto f = p.run();
  // Ahead of the reader by at most the kernel's buffers on both ends (the client's fixed and
  // doubled, the server's send buffer up to the system's limit), the sink's mark and a chunk.
  const std::uint64_t bound =
      sysctl_max("net/ipv4/tcp_wmem") + 4 * 128 * 1024 + 2 * kChunk + (1u << 20);
  std::uint64_t consumed = 0, most_ahead = 0;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    ASSERT_GE(n, 0) << std::strerror(errno);
    if (n == 0) break;
    consumed += static_cast<std::uint64_t>(n);
    most_ahead = std::max(most_ahead, produced.load() - consumed);
  }
  ::close(fd);
  EXPECT_EQ(consumed, kTotal);
  EXPECT_LT(most_ahead, bound);
  (void)f.get();
}

TEST(Net, ASinkThatCannotWriteStopsItsSourceReading) {
  // The echo runs on an io_context this test steps, so that "nothing more happens" is a fact
  // of the executor's queue, not a guess from the clock.
  boost::asio::io_context io;
  crew::net::Listener listener({.executor = io.get_executor()});
  const int fd = raw_connect(listener.port(), 128 * 1024);
  ASSERT_GE(fd, 0);
  crew::net::Connection server_side;
  listener.async_accept([&](boost::system::error_code ec, crew::net::Connection conn) {
    EXPECT_FALSE(ec) << ec.message();
    server_side = std::move(conn);
  });
  while (!server_side) io.run_one();
  io.restart();  // it ran out of work after the accept
  auto echo = server_side.readable() | server_side.writable();
  auto f = echo.run();
  // The client sends and never reads. Once the kernel's buffers are full the echo's writes
  // stop, so it must stop reading too: the client then finds no room, however long it waits.
  // What it can send is bounded by the buffers: its own (fixed, and doubled by the kernel) and
  // the server socket's, which grow up to the system's limits. An echo that read on regardless
  // would take 64 MiB more.
  const std::uint64_t bound = sysctl_max("net/ipv4/tcp_rmem") + sysctl_max("net/ipv4/tcp_wmem") +
                              4 * 128 * 1024 + (1u << 20);
  std::vector<char> chunk(64 * 1024, 'x');
  std::uint64_t sent = 0;
  for (int idle = 0; idle < 3 && sent < bound + (64u << 20);) {
    const ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::uint64_t>(n);
      idle = 0;
    }
    const std::size_t ran = io.poll();
    ASSERT_FALSE(io.stopped()) << "the echo has no read or write pending";
    if (n <= 0 && ran == 0) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 100) == 0) ++idle;
    }
  }
  EXPECT_LT(sent, bound);
  // Closing with unread data resets the connection: the echo's pending write fails.
  ::close(fd);
  io.run();
  EXPECT_THROW((void)f.get(), crew::StageError);
}

TEST(Net, AResetPeerFailsTheWriterWithItsName) {
  crew::net::Listener listener;
  const int fd = raw_connect(listener.port());
  ASSERT_GE(fd, 0);
  auto server_side = listener.accept();
  ASSERT_TRUE(server_side);
  // Closing with a zero linger resets the connection instead of shutting it down.
  linger l{1, 0};
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
  ::close(fd);
  auto endless = cs::from([]() -> std::optional<crew::Buffer> { return crew::Buffer(4096); }) |
                 server_side->writable();
  try {
    (void)endless.run().get();
    FAIL() << "writing to a reset connection succeeded";
  } catch (const crew::StageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("net.write"));
  }
}

}  // namespace
