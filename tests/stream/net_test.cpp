// crew::net: a Connection as a Duplex — both sides in pipelines at once — and the Listener.
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <crew/net.hpp>
#include <crew/stream.hpp>

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
  std::vector<crew::Buffer> chunks;
  for (std::size_t at = 0; at < text.size(); at += 10'000) {
    chunks.push_back(crew::Buffer::copy_of(std::string_view(text).substr(at, 10'000)));
  }
  auto send = cs::from(std::move(chunks)) | client.writable();
  auto receive = client.readable() | cs::collect();
  auto sent = send.run();
  auto received = receive.run();
  (void)sent.get();
  cs::Summary s = received.get();
  std::string echoed;
  for (const auto& b : receive.take()) echoed += b.view();
  EXPECT_EQ(echoed, upper(text));
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

}  // namespace
