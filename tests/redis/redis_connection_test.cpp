// crew::redis::Connection against a real redis-server: errors, binary-safe commands, timeouts,
// reconnecting after a crash, the function library coming back, the eviction policy.
#include <chrono>
#include <csignal>
#include <stop_token>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "connection.hpp"
#include "crew_lua.hpp"
#include "redis/redis_server.hpp"

namespace {

using crew::redis::Connection;
using crew::redis::ConnectionError;
using crew::redis::ConnectionOptions;
using crew::redis::parse_url;
using crew::redis::Reply;
using crew_test::RedisServer;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

TEST(RedisConnection, RefusedConnectNamesTheUrlWithoutThePassword) {
  int port = 0;
  {
    RedisServer server;  // a port that was just free, and is again once the server stops
    port = server.port();
  }
  auto url = parse_url("redis://:hunter2@127.0.0.1:" + std::to_string(port) + "/2");
  try {
    Connection connection(url);
    FAIL() << "connected to a port nothing listens on";
  } catch (const ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("redis://127.0.0.1:" + std::to_string(port) + "/2"));
    EXPECT_THAT(e.what(), HasSubstr("refused"));
    EXPECT_THAT(e.what(), Not(HasSubstr("hunter2")));
  }
}

TEST(RedisConnection, BinarySafeRoundTrip) {
  RedisServer server;
  Connection redis(parse_url(server.url()));
  const std::string bytes("a\0b\r\n\xff\0", 7);
  EXPECT_EQ(redis.command({"SET", std::string_view("k\0ey", 4), bytes}).str(), "OK");
  Reply got = redis.command({"GET", std::string_view("k\0ey", 4)});
  EXPECT_EQ(got.type(), Reply::Type::string);
  EXPECT_EQ(got.str(), bytes);
  EXPECT_TRUE(redis.command({"GET", "missing"}).is_nil());
  EXPECT_EQ(redis.command(std::vector<std::string>{"RPUSH", "list", bytes, "x"}).integer(), 2);
  Reply list = redis.command({"LRANGE", "list", "0", "-1"});
  ASSERT_EQ(list.elements().size(), 2u);
  EXPECT_EQ(list[0].str(), bytes);
  EXPECT_EQ(list[1].str(), "x");
}

TEST(RedisConnection, ErrorRepliesAreValuesAndAccessorsCheckTheType) {
  RedisServer server;
  Connection redis(parse_url(server.url()));
  Reply error = redis.command({"INCR", "a", "b"});
  ASSERT_TRUE(error.is_error());
  EXPECT_THAT(error.error(), HasSubstr("wrong number of arguments"));
  EXPECT_THROW((void)error.str(), crew::BadArguments);
  EXPECT_FALSE(redis.broken());
  EXPECT_EQ(redis.command({"PING"}).str(), "PONG");
}

TEST(RedisConnection, AuthAndSelectFromTheUrl) {
  RedisServer server;
  {
    Connection admin(parse_url(server.url()));
    ASSERT_EQ(admin.command({"CONFIG", "SET", "requirepass", "s3cret"}).str(), "OK");
  }
  const std::string authority = "127.0.0.1:" + std::to_string(server.port());
  Connection redis(parse_url("redis://:s3cret@" + authority + "/3"));
  ASSERT_EQ(redis.command({"SET", "where", "db3"}).str(), "OK");
  EXPECT_EQ(redis.command({"SELECT", "3"}).str(), "OK");
  EXPECT_EQ(redis.command({"GET", "where"}).str(), "db3");
  ASSERT_EQ(redis.command({"SELECT", "0"}).str(), "OK");
  EXPECT_TRUE(redis.command({"GET", "where"}).is_nil());

  try {
    Connection wrong(parse_url("redis://:nope@" + authority));
    FAIL() << "AUTH with a wrong password succeeded";
  } catch (const ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("AUTH failed"));
    EXPECT_THAT(e.what(), Not(HasSubstr("nope")));
  }
}

TEST(RedisConnection, PausedServerTimesOutThenReconnects) {
  RedisServer server;
  ConnectionOptions options;
  options.command_timeout = 1s;
  options.connect_timeout = 1s;
  Connection redis(parse_url(server.url()), options);
  ASSERT_EQ(redis.command({"SET", "k", "v"}).str(), "OK");

  server.pause();
  const auto start = Clock::now();
  try {
    redis.command({"GET", "k"});
    FAIL() << "a paused server answered";
  } catch (const ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("command timeout"));
  }
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_TRUE(redis.broken());
  EXPECT_THROW(redis.command({"PING"}), ConnectionError);
  // Still paused: a reconnect with a short budget gives up instead of hanging.
  EXPECT_THROW(redis.reconnect(500ms), ConnectionError);

  server.resume();
  redis.reconnect(10s);
  EXPECT_FALSE(redis.broken());
  EXPECT_EQ(redis.command({"GET", "k"}).str(), "v");
}

// The connection sends with MSG_NOSIGNAL: writing to a connection Redis closed fails the call
// instead of raising SIGPIPE, whose default action (set here) would end the test program.
TEST(RedisConnection, ASendToAClosedConnectionFailsTheCallNotTheProcess) {
  ASSERT_NE(std::signal(SIGPIPE, SIG_DFL), SIG_ERR);
  RedisServer server;
  Connection redis(parse_url(server.url()));
  Connection other(parse_url(server.url()));
  ASSERT_EQ(other.command({"CLIENT", "KILL", "ID", std::to_string(redis.client_id())}).integer(),
            1);
  // More than the socket buffers hold: the send itself meets the closed connection.
  const std::string big(32 << 20, 'x');
  try {
    redis.command({"SET", "k", big});
    FAIL() << "a closed connection took the request";
  } catch (const ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("send failed"));  // EPIPE, or ECONNRESET
  }
  EXPECT_TRUE(redis.broken());
  redis.reconnect(10s);
  EXPECT_EQ(redis.command({"PING"}).str(), "PONG");
}

// A paused server reads nothing: a request larger than the socket buffers cannot be sent, and
// the send gives up after the command timeout rather than blocking for good.
TEST(RedisConnection, ASendThePausedServerCannotTakeEndsAfterTheCommandTimeout) {
  RedisServer server;
  ConnectionOptions options;
  options.command_timeout = 1s;
  Connection redis(parse_url(server.url()), options);
  const std::string big(128 << 20, 'x');
  server.pause();
  const auto start = Clock::now();
  try {
    redis.command({"SET", "k", big});
    FAIL() << "a paused server took the request";
  } catch (const ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("could not send within the command timeout (1000 ms)"));
  }
  EXPECT_LT(Clock::now() - start, 30s);
  EXPECT_TRUE(redis.broken());
  server.resume();
}

TEST(RedisConnection, ReconnectStopsWhenAsked) {
  RedisServer server;
  Connection redis(parse_url(server.url()));
  server.kill9();
  EXPECT_THROW(redis.command({"PING"}), ConnectionError);
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  const auto start = Clock::now();
  EXPECT_THROW(redis.reconnect(60s, stop.get_token()), crew::Cancelled);
  EXPECT_LT(Clock::now() - start, 10s);
}

TEST(RedisConnection, ReconnectAfterCrashKeepsAofDataAndFunctions) {
  RedisServer server({.appendonly = true});
  Connection redis(parse_url(server.url()));
  ASSERT_EQ(redis.functions_version(), crew::redis::detail::kLibraryVersion);
  ASSERT_EQ(redis.command({"SET", "survives", "yes"}).str(), "OK");

  server.kill9();
  EXPECT_THROW(redis.command({"GET", "survives"}), ConnectionError);
  server.restart();
  redis.reconnect(10s);
  EXPECT_EQ(redis.command({"GET", "survives"}).str(), "yes");
  EXPECT_EQ(redis.functions_version(), crew::redis::detail::kLibraryVersion);
}

TEST(RedisConnection, ReconnectLoadsMissingFunctions) {
  RedisServer server;  // no persistence: a restart forgets everything
  Connection redis(parse_url(server.url()));
  ASSERT_EQ(redis.command({"SET", "forgotten", "yes"}).str(), "OK");
  server.kill9();
  server.restart();
  EXPECT_THROW(redis.command({"PING"}), ConnectionError);
  redis.reconnect(10s);
  EXPECT_TRUE(redis.command({"GET", "forgotten"}).is_nil());
  EXPECT_EQ(redis.functions_version(), crew::redis::detail::kLibraryVersion);

  ASSERT_EQ(redis.command({"FUNCTION", "DELETE", "crew"}).str(), "OK");
  EXPECT_EQ(redis.functions_version(), 0);
  redis.reconnect(10s);
  EXPECT_EQ(redis.functions_version(), crew::redis::detail::kLibraryVersion);
}

TEST(RedisConnection, WithoutFunctionsOptionNothingIsLoaded) {
  RedisServer server;
  ConnectionOptions options;
  options.functions = false;
  Connection redis(parse_url(server.url()), options);
  EXPECT_EQ(redis.functions_version(), 0);
  redis.load_functions();
  EXPECT_EQ(redis.functions_version(), crew::redis::detail::kLibraryVersion);
}

TEST(RedisConnection, CheckNoevictionReportsThePolicy) {
  RedisServer server;
  Connection redis(parse_url(server.url()));
  EXPECT_EQ(redis.check_noeviction(), "noeviction");
  ASSERT_EQ(redis.command({"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"}).str(), "OK");
  EXPECT_EQ(redis.check_noeviction(), "allkeys-lru");
}

}  // namespace
