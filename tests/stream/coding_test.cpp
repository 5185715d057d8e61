// Codec stages: gzip/gunzip and encrypt/decrypt round trips through pipelines, parallel jobs
// in order, corrupt input and wrong keys as StageErrors with the offset.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <crew/stream.hpp>
#include <crew/stream/coding.hpp>

namespace {

namespace cs = crew::stream;
using ::testing::HasSubstr;

std::string make_text(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  static constexpr char kWords[][8] = {"GET ", "/index", " 200 ", "POST ", "error ", "\n"};
  std::string s;
  s.reserve(n + 8);
  while (s.size() < n) {
    s += kWords[rng() % 6];
    if (rng() % 4 == 0) s += std::to_string(rng() % 100000);
  }
  s.resize(n);
  return s;
}

// Cuts `text` into chunks of varying size, as a reader would deliver them.
std::vector<crew::Buffer> chunks_of(const std::string& text, std::size_t chunk) {
  std::vector<crew::Buffer> out;
  for (std::size_t at = 0; at < text.size(); at += chunk) {
    out.push_back(crew::Buffer::copy_of(std::string_view(text).substr(at, chunk)));
  }
  return out;
}

std::string join(const std::vector<crew::Buffer>& v) {
  std::string s;
  for (const auto& b : v) s += b.view();
  return s;
}

std::vector<crew::Buffer> run_all(std::vector<crew::Buffer> in,
                                  cs::FixedStage<crew::Buffer, crew::Buffer> a,
                                  cs::FixedStage<crew::Buffer, crew::Buffer> b) {
  auto p = cs::from(std::move(in)) | std::move(a) | std::move(b) | cs::collect();
  (void)p.run().get();
  return p.take();
}

TEST(CodecStages, GzipGunzipRoundTripOverSizes) {
  crew::ThreadPool pool({.max_workers = 2});
  const cs::CodecStageOptions on_pool{.pool = &pool, .max_in_flight = 3};
  constexpr std::size_t kBlock = 64 * 1024;
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, kBlock - 1, kBlock, kBlock + 1, 3 * kBlock + 17}) {
    const std::string text = make_text(n, static_cast<std::uint32_t>(n));
    auto out = run_all(chunks_of(text, 10000), cs::gzip({.level = 6, .block = kBlock}, on_pool),
                       cs::gunzip(on_pool));
    EXPECT_EQ(join(out), text) << n;
  }
}

TEST(CodecStages, EncryptDecryptRoundTrip) {
  const cs::Key key = cs::Key::random();
  crew::ThreadPool pool({.max_workers = 2});
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{8191}, std::size_t{8192},
                        std::size_t{8193}, std::size_t{100 * 1024}}) {
    const std::string text = make_text(n, static_cast<std::uint32_t>(n) + 1);
    auto p = cs::from(chunks_of(text, 3000)) |
             cs::encrypt(key, {.chunk = 8 * 1024}, {.pool = &pool}) |
             cs::decrypt(key, {.pool = &pool}) | cs::collect();
    cs::Summary s = p.run().get();
    EXPECT_EQ(join(p.take()), text) << n;
    EXPECT_LE(s.stage("encrypt").peak_in_flight, 4U);
  }
}

TEST(CodecStages, WrongKeyFailsWithStageErrorAndNoPlaintext) {
  const cs::Key key = cs::Key::random();
  const cs::Key other = cs::Key::random();
  const std::string text = make_text(50 * 1024, 11);
  std::uint64_t plaintext_bytes = 0;
  auto p = cs::from(chunks_of(text, 4096)) | cs::encrypt(key, {.chunk = 8 * 1024}) |
           cs::decrypt(other) | cs::to([&](crew::Buffer b) { plaintext_bytes += b.size(); });
  try {
    (void)p.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "decrypt");
    EXPECT_EQ(e.unit(), crew::StageError::Unit::byte);
    EXPECT_THROW(std::rethrow_exception(e.cause()), cs::DataError);
    EXPECT_THAT(e.what(), HasSubstr("byte offset"));
  }
  EXPECT_EQ(plaintext_bytes, 0U);
}

TEST(CodecStages, CorruptGzipFailsWithTheOffset) {
  const std::string text = make_text(300 * 1024, 13);
  auto p = cs::from(chunks_of(text, 8192)) | cs::gzip({.block = 64 * 1024}) | cs::collect();
  (void)p.run().get();
  std::string packed = join(p.take());
  ASSERT_GT(packed.size(), 1000U);
  packed[packed.size() / 2] = static_cast<char>(packed[packed.size() / 2] ^ 0x5a);
  std::uint64_t sunk = 0;
  auto q = cs::from(chunks_of(packed, 4096)) | cs::gunzip() |
           cs::to([&](crew::Buffer b) { sunk += b.size(); });
  try {
    (void)q.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "gunzip");
    EXPECT_LE(e.position(), packed.size());
    EXPECT_THROW(std::rethrow_exception(e.cause()), cs::DataError);
  }
  EXPECT_LT(sunk, text.size());
}

TEST(CodecStages, TruncatedGzipFails) {
  const std::string text = make_text(100 * 1024, 17);
  auto p = cs::from(chunks_of(text, 8192)) | cs::gzip() | cs::collect();
  (void)p.run().get();
  std::string packed = join(p.take());
  packed.resize(packed.size() - 10);
  auto q = cs::from(chunks_of(packed, 4096)) | cs::gunzip() | cs::count();
  EXPECT_THROW((void)q.run().get(), crew::StageError);
}

TEST(CodecStages, BadOptionsThrowAtTheCall) {
  EXPECT_THROW((void)cs::gzip({.level = 99}), std::invalid_argument);
  crew::ThreadPool pool({.max_workers = 1});
  try {
    (void)cs::gunzip({.pool = &pool, .max_in_flight = 0});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("max_in_flight (0)"));
  }
}

}  // namespace
