#include <cstring>
#include <thread>
#include <utility>

#include <gtest/gtest.h>

#include <crew/buffer.hpp>

namespace {

TEST(Buffer, AllocatesZeroFilledBytes) {
  crew::Buffer b(4096);
  ASSERT_EQ(b.size(), 4096U);
  ASSERT_NE(b.data(), nullptr);
  for (std::byte x : b.span()) ASSERT_EQ(x, std::byte{0});
  EXPECT_FALSE(b.detached());
  EXPECT_FALSE(b.empty());
}

TEST(Buffer, MoveTransfersTheSameMemoryAndDetachesTheSource) {
  crew::Buffer a(1 << 20);
  std::memset(a.data(), 0x5a, a.size());
  std::byte* const address = a.data();
  crew::Buffer b = std::move(a);
  EXPECT_EQ(b.data(), address);  // no copy: the receiver sees the same memory
  EXPECT_EQ(b.size(), std::size_t{1} << 20);
  EXPECT_TRUE(a.detached());  // NOLINT(bugprone-use-after-move): detaching is the point
  EXPECT_EQ(a.size(), 0U);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_FALSE(b.detached());
  crew::Buffer c;
  c = std::move(b);
  EXPECT_EQ(c.data(), address);
  EXPECT_TRUE(b.detached());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.span()[12345], std::byte{0x5a});
}

TEST(Buffer, MovingADetachedBufferStaysDetached) {
  crew::Buffer a(8);
  crew::Buffer b = std::move(a);
  crew::Buffer c = std::move(a);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(c.detached());
  EXPECT_EQ(c.size(), 0U);
  EXPECT_EQ(b.size(), 8U);
}

TEST(Buffer, DefaultIsEmptyNotDetached) {
  crew::Buffer b;
  EXPECT_TRUE(b.empty());
  EXPECT_FALSE(b.detached());
  crew::Buffer zero(0);
  EXPECT_TRUE(zero.empty());
  EXPECT_FALSE(zero.detached());
}

TEST(Buffer, CopyOfAndView) {
  const crew::Buffer b = crew::Buffer::copy_of("hello, crew");
  EXPECT_EQ(b.view(), "hello, crew");
  const crew::Buffer u = crew::Buffer::uninitialized(3);
  EXPECT_EQ(u.size(), 3U);
  EXPECT_EQ(crew::Buffer::copy_of(std::string_view{}).size(), 0U);
}

TEST(Buffer, CrossesThreadsByMove) {
  crew::Buffer a = crew::Buffer::copy_of("payload");
  const std::byte* address = a.data();
  const std::byte* seen = nullptr;
  std::string text;
  std::thread t([&seen, &text, b = std::move(a)]() mutable {
    seen = b.data();
    text = std::string(b.view());
  });
  t.join();
  EXPECT_EQ(seen, address);
  EXPECT_EQ(text, "payload");
  EXPECT_TRUE(a.detached());  // NOLINT(bugprone-use-after-move)
}

}  // namespace
