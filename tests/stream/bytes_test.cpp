// Byte streams: read_file/write_file (atomic rename, cancellation, errors), read_fd/write_fd
// over pipes, lines() across chunk boundaries, uppercase(), sha256().
#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <crew/stream.hpp>
#include <crew/stream/bytes.hpp>

namespace {

namespace cs = crew::stream;
namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class Bytes : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("crew-bytes-") + info->name() + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path file(const std::string& name, const std::string& contents) const {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << contents;
    return p;
  }
  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path dir_;
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  std::mt19937 rng(42);
  for (char& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

TEST_F(Bytes, ReadFileInChunksWriteFileRenames) {
  const std::string text = pattern(100'000);
  const fs::path in = file("in.txt", text);
  const fs::path out = dir_ / "out.txt";
  auto p = cs::read_file(in, {.chunk = 4096}) | cs::write_file(out);
  cs::Summary s = p.run().get();
  EXPECT_EQ(slurp(out), text);
  EXPECT_EQ(s.stage("read_file").items_out, (100'000U + 4095) / 4096);
  EXPECT_EQ(s.stage("read_file").bytes_out, 100'000U);
  EXPECT_EQ(s.stage("write_file").bytes_in, 100'000U);
  EXPECT_TRUE(s.stage("read_file").counts_bytes);
  EXPECT_LE(s.stage("read_file").peak_buffered, 4096U);
  EXPECT_THAT(entries(), ElementsAre("in.txt", "out.txt"));  // no temporary left
}

TEST_F(Bytes, EmptyFileGivesEmptyDestination) {
  const fs::path in = file("empty", "");
  auto p = cs::read_file(in) | cs::write_file(dir_ / "copy");
  (void)p.run().get();
  EXPECT_TRUE(fs::exists(dir_ / "copy"));
  EXPECT_EQ(fs::file_size(dir_ / "copy"), 0U);
}

TEST_F(Bytes, WriteFileReplacesAtomicallyAndKeepsTheOldFileOnFailure) {
  const fs::path out = file("out.txt", "old contents");
  const fs::path in = file("in.txt", pattern(50'000));
  // Fails half way: the old destination must be untouched and no temporary left.
  auto p = cs::read_file(in, {.chunk = 1000}) | cs::tap([n = 0](const crew::Buffer&) mutable {
             if (++n == 20) throw std::runtime_error("disk on fire");
           }) |
           cs::write_file(out);
  EXPECT_THROW((void)p.run().get(), crew::StageError);
  EXPECT_EQ(slurp(out), "old contents");
  EXPECT_THAT(entries(), ElementsAre("in.txt", "out.txt"));
  auto q = cs::read_file(in) | cs::write_file(out);
  (void)q.run().get();
  EXPECT_EQ(slurp(out), slurp(in));
}

TEST_F(Bytes, CancelledCopyStopsWithinOneChunkAndLeavesNoFile) {
  const fs::path in = file("in.bin", pattern(1 << 20));
  const fs::path out = dir_ / "out.bin";
  std::stop_source stop;
  std::atomic<int> chunks{0};
  auto p = cs::read_file(in, {.chunk = 4096}) | cs::tap([&](const crew::Buffer&) {
             if (chunks.fetch_add(1) + 1 == 3) stop.request_stop();
           }) |
           cs::write_file(out);
  EXPECT_THROW((void)p.run(stop.get_token()).get(), crew::Cancelled);
  EXPECT_EQ(chunks.load(), 3);  // the chunk in progress finished; no further chunk was read
  EXPECT_FALSE(fs::exists(out));
  EXPECT_THAT(entries(), ElementsAre("in.bin"));
}

TEST_F(Bytes, MissingFileNamesThePath) {
  const fs::path missing = dir_ / "no-such-file.txt";
  auto p = cs::read_file(missing) | cs::write_file(dir_ / "out");
  try {
    (void)p.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "read_file");
    EXPECT_THAT(e.what(), HasSubstr(missing.string()));
    EXPECT_THAT(e.what(), HasSubstr("No such file"));
  }
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(Bytes, WriteFileIntoMissingDirectoryNamesIt) {
  const fs::path in = file("in", "x");
  auto p = cs::read_file(in) | cs::write_file(dir_ / "nope" / "out");
  try {
    (void)p.run().get();
    FAIL();
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "write_file");
    EXPECT_THAT(e.what(), HasSubstr("nope"));
  }
}

TEST_F(Bytes, BadArguments) {
  EXPECT_THROW((void)cs::read_file("x", {.chunk = 0}), std::invalid_argument);
  EXPECT_THROW((void)cs::read_fd(-1), std::invalid_argument);
  EXPECT_THROW((void)cs::write_fd(-1), std::invalid_argument);
  EXPECT_THROW((void)cs::write_file(""), std::invalid_argument);
}

TEST(Lines, JoinsLinesSplitAcrossChunks) {
  // Every way of cutting the text into 1..7-byte chunks gives the same lines.
  const std::string text = "alpha\nbeta\r\n\ngamma delta\nlast line without newline";
  for (std::size_t chunk = 1; chunk <= 7; ++chunk) {
    std::vector<crew::Buffer> chunks;
    for (std::size_t at = 0; at < text.size(); at += chunk) {
      chunks.push_back(crew::Buffer::copy_of(std::string_view(text).substr(at, chunk)));
    }
    auto p = cs::from(std::move(chunks)) | cs::lines() | cs::collect();
    (void)p.run().get();
    EXPECT_THAT(p.take(),
                ElementsAre("alpha", "beta", "", "gamma delta", "last line without newline"))
        << chunk;
  }
}

TEST(Lines, EmptyInputAndTrailingNewline) {
  std::vector<crew::Buffer> none;
  auto p = cs::from(std::move(none)) | cs::lines() | cs::count();
  (void)p.run().get();
  EXPECT_EQ(p.take(), 0U);
  std::vector<crew::Buffer> one;
  one.push_back(crew::Buffer::copy_of("a\nb\n"));
  auto q = cs::from(std::move(one)) | cs::lines() | cs::collect();
  (void)q.run().get();
  EXPECT_THAT(q.take(), ElementsAre("a", "b"));
}

TEST(Uppercase, UppercasesAsciiOnly) {
  std::vector<crew::Buffer> in;
  in.push_back(crew::Buffer::copy_of("Hello, wörld! abc"));
  auto p = cs::from(std::move(in)) | cs::uppercase() | cs::collect();
  (void)p.run().get();
  auto out = p.take();
  ASSERT_EQ(out.size(), 1U);
  EXPECT_EQ(out[0].view(), "HELLO, WöRLD! ABC");
}

TEST(Sha256, ReportsTheDigestAndPassesBytesThrough) {
  std::vector<crew::Buffer> in;
  in.push_back(crew::Buffer::copy_of("a"));
  in.push_back(crew::Buffer::copy_of("bc"));
  std::string via_callback;
  auto p = cs::from(std::move(in)) | cs::sha256([&](const std::string& d) { via_callback = d; }) |
           cs::collect();
  cs::Summary s = p.run().get();
  const std::string abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(s.stage("sha256").report, abc);
  EXPECT_EQ(via_callback, abc);
  auto out = p.take();
  ASSERT_EQ(out.size(), 2U);
  EXPECT_EQ(std::string(out[0].view()) + std::string(out[1].view()), "abc");
  EXPECT_THAT(s.to_string(), HasSubstr(abc));
}

TEST(Fd, ReadFdWriteFdOverPipes) {
  int in[2];
  int out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  const std::string text = pattern(200'000);
  std::jthread writer([&] {
    std::size_t at = 0;
    while (at < text.size()) {
      const ssize_t n =
          ::write(in[1], text.data() + at, std::min<std::size_t>(7000, text.size() - at));
      if (n <= 0) break;
      at += static_cast<std::size_t>(n);
    }
    ::close(in[1]);
  });
  std::string received;
  std::jthread reader([&] {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      received.append(buf, static_cast<std::size_t>(n));
    }
  });
  auto p = cs::read_fd(in[0]) | cs::uppercase() | cs::write_fd(out[1]);
  cs::Summary s = p.run().get();
  ::close(out[1]);
  writer.join();
  reader.join();
  ::close(in[0]);
  ::close(out[0]);
  std::string expected = text;
  for (char& c : expected) c = static_cast<char>(c - 'a' + 'A');
  EXPECT_EQ(received, expected);
  EXPECT_EQ(s.stage("write_fd").bytes_in, text.size());
}

TEST(Fd, StopWhileTheSourceWaitsForData) {
  int in[2];
  ASSERT_EQ(::pipe(in), 0);
  std::stop_source stop;
  auto p = cs::read_fd(in[0]) | cs::count();
  auto f = p.run(stop.get_token());
  EXPECT_FALSE(f.wait_for(std::chrono::milliseconds(20)));
  stop.request_stop();
  EXPECT_THROW((void)f.get(), crew::Cancelled);
  ::close(in[0]);
  ::close(in[1]);
}

TEST(Fd, WriteToAClosedPipeFails) {
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  ::close(out[0]);
  ::signal(SIGPIPE, SIG_IGN);
  std::vector<crew::Buffer> in;
  in.push_back(crew::Buffer::copy_of("data"));
  auto p = cs::from(std::move(in)) | cs::write_fd(out[1]);
  try {
    (void)p.run().get();
    FAIL();
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "write_fd");
    EXPECT_THAT(e.what(), HasSubstr("Broken pipe"));
  }
  ::close(out[1]);
}

}  // namespace
