#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/shared_buffer.hpp>

namespace {

TEST(SharedBuffer, CopiesShareTheSameZeroedBlock) {
  auto a = crew::SharedBuffer::create(256);
  ASSERT_EQ(a.size(), 256U);
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a.data()[i], std::byte{0});
  crew::SharedBuffer b = a;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(a.data(), b.data());
  EXPECT_TRUE(a == b);
  a.span<std::int32_t>()[3] = 42;
  EXPECT_EQ(b.span<std::int32_t>()[3], 42);
  EXPECT_EQ(b.span<std::int32_t>().size(), 64U);
  EXPECT_FALSE(a.across_processes());
  EXPECT_EQ(a.fd(), -1);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % 64, 0U);
}

TEST(SharedBuffer, OutlivesTheHandleThatCreatedIt) {
  crew::SharedBuffer keep;
  {
    auto made = crew::SharedBuffer::create(64);
    made.span<std::uint64_t>()[0] = 7;
    keep = made;
  }
  EXPECT_EQ(keep.span<std::uint64_t>()[0], 7U);
}

TEST(SharedBuffer, SpanRejectsPartialElements) {
  auto b = crew::SharedBuffer::create(10);
  EXPECT_EQ(b.span<std::uint16_t>().size(), 5U);
  try {
    (void)b.span<std::uint32_t>();
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("10 bytes"), std::string::npos) << e.what();
  }
}

TEST(SharedBuffer, ZeroSizeAndNullHandles) {
  auto z = crew::SharedBuffer::create(0);
  EXPECT_EQ(z.size(), 0U);
  auto zp = crew::SharedBuffer::create(0, {.across_processes = true});
  EXPECT_EQ(zp.size(), 0U);
  crew::SharedBuffer null;
  EXPECT_FALSE(null);
  EXPECT_EQ(null.size(), 0U);
  EXPECT_EQ(null.data(), nullptr);
}

TEST(SharedBuffer, ProcessSharedBlockIsSeenByAForkedChild) {
  auto b = crew::SharedBuffer::create(4096, {.across_processes = true});
  ASSERT_TRUE(b.across_processes());
  ASSERT_GE(b.fd(), 0);
  auto cells = b.span<std::int32_t>();
  cells[0] = 1;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child sees the parent's write and answers through the same memory.
    const int ok = cells[0] == 1 ? 0 : 3;
    cells[1] = 99;
    ::_exit(ok);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(cells[1], 99);
}

TEST(SharedBuffer, AttachMapsTheSameBlock) {
  auto b = crew::SharedBuffer::create(128, {.across_processes = true});
  auto again = crew::SharedBuffer::attach(b.fd());
  EXPECT_EQ(again.size(), 128U);
  EXPECT_NE(again.fd(), b.fd());  // its own duplicate
  b.span<std::int64_t>()[2] = -5;
  EXPECT_EQ(again.span<std::int64_t>()[2], -5);
}

TEST(SharedBuffer, AttachRejectsOtherFds) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  try {
    (void)crew::SharedBuffer::attach(fds[0]);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not the fd()"), std::string::npos) << e.what();
  }
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
