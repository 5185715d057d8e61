// crew::redis::parse_url: the URL forms Connection accepts, and messages that name what is wrong.
// Also process_unique_id, which names producers, workers and jobs.
#include <array>
#include <stdexcept>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "connection.hpp"
#include "outcome.hpp"

namespace {

using crew::redis::parse_url;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedisUrl, HostOnlyTakesTheDefaults) {
  auto url = parse_url("redis://localhost");
  EXPECT_EQ(url.host, "localhost");
  EXPECT_EQ(url.port, 6379);
  EXPECT_EQ(url.db, 0);
  EXPECT_EQ(url.user, "");
  EXPECT_EQ(url.password, "");
}

TEST(RedisUrl, EveryPart) {
  auto url = parse_url("redis://alice:s%40cret:x@10.0.0.7:7000/5");
  EXPECT_EQ(url.host, "10.0.0.7");
  EXPECT_EQ(url.port, 7000);
  EXPECT_EQ(url.db, 5);
  EXPECT_EQ(url.user, "alice");
  EXPECT_EQ(url.password, "s@cret:x");
  EXPECT_EQ(url.redacted(), "redis://alice@10.0.0.7:7000/5");
}

TEST(RedisUrl, PasswordWithoutUserAndIpv6Host) {
  auto url = parse_url("redis://:pw@[::1]:6380/");
  EXPECT_EQ(url.host, "::1");
  EXPECT_EQ(url.port, 6380);
  EXPECT_EQ(url.db, 0);
  EXPECT_EQ(url.user, "");
  EXPECT_EQ(url.password, "pw");
  EXPECT_EQ(url.redacted(), "redis://[::1]:6380/0");
}

std::string error_of(const std::string& url) {
  try {
    parse_url(url);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(RedisUrl, BadUrlsNameTheField) {
  EXPECT_THAT(error_of("http://localhost"), HasSubstr("scheme must be redis://, got 'http://'"));
  EXPECT_THAT(error_of("localhost:6379"), HasSubstr("scheme"));
  EXPECT_THAT(error_of("rediss://localhost"), HasSubstr("TLS"));
  EXPECT_THAT(error_of("redis://"), HasSubstr("host is empty"));
  EXPECT_THAT(error_of("redis://:pw@:6379"), HasSubstr("host is empty"));
  EXPECT_THAT(error_of("redis://localhost:"), HasSubstr("port must be"));
  EXPECT_THAT(error_of("redis://localhost:0"), HasSubstr("port must be"));
  EXPECT_THAT(error_of("redis://localhost:65536"), HasSubstr("port must be"));
  EXPECT_THAT(error_of("redis://localhost:6379x"), HasSubstr("port must be"));
  EXPECT_THAT(error_of("redis://localhost/x"), HasSubstr("db must be"));
  EXPECT_THAT(error_of("redis://localhost/-1"), HasSubstr("db must be"));
  EXPECT_THAT(error_of("redis://localhost?db=1"), HasSubstr("query"));
  EXPECT_THAT(error_of("redis://user@localhost"), HasSubstr("credentials"));
  EXPECT_THAT(error_of("redis://:%zz@localhost"), HasSubstr("percent-encoding in the password"));
  EXPECT_THAT(error_of("redis://[::1/0"), HasSubstr("'[' without ']'"));
}

TEST(RedisUrl, MessagesNeverShowThePassword) {
  auto message = error_of("redis://alice:hunter2@localhost:99999");
  EXPECT_THAT(message, HasSubstr("port must be"));
  EXPECT_THAT(message, Not(HasSubstr("hunter2")));
  EXPECT_THAT(message, HasSubstr("redis://***@localhost:99999"));
}

// The `<host>-<pid>-` part is kept per process: a forked child's ids name the child, and its
// random part does not repeat the parent's.
TEST(RedisIds, NameTheProcessThatMadeThemAlsoAfterAFork) {
  // Built by appending: GCC 12 at -O3 warns (-Wrestrict, falsely) on "-" + to_string(...) + "-".
  const auto dashed = [](pid_t p) {
    return std::string("-").append(std::to_string(p)).append("-");
  };
  const std::string pid = dashed(::getpid());
  const std::string first = crew::redis::process_unique_id();
  EXPECT_THAT(first, HasSubstr(pid));
  EXPECT_NE(crew::redis::process_unique_id(), first);

  std::array<int, 2> pipe_fds{};
  ASSERT_EQ(::pipe(pipe_fds.data()), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string id = crew::redis::process_unique_id();
    const bool written =
        ::write(pipe_fds[1], id.data(), id.size()) == static_cast<ssize_t>(id.size());
    ::_exit(written ? 0 : 1);
  }
  ::close(pipe_fds[1]);
  std::string from_child;
  std::array<char, 512> buffer{};
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer.data(), buffer.size())) > 0;) {
    from_child.append(buffer.data(), static_cast<std::size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_THAT(from_child, HasSubstr(dashed(child)));
  EXPECT_THAT(from_child, Not(HasSubstr(pid)));
  // The parent's next number, which the child's generator would repeat had it not been reseeded.
  const std::string next = crew::redis::process_unique_id();
  EXPECT_NE(next.substr(next.size() - 16), from_child.substr(from_child.size() - 16));
}

}  // namespace
