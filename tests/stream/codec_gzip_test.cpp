// Tests for the gzip/gunzip codecs of crew/stream/codec.hpp.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <zlib.h>

#include <crew/buffer.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>
#include <crew/stream/codec.hpp>

namespace {

using crew::Buffer;
using crew::stream::ChunkCodec;
using crew::stream::DataError;

using Bytes = std::vector<std::byte>;

// Feeds `input` in pieces of `piece` bytes, runs the jobs in order, returns the output.
Bytes run_codec(ChunkCodec& codec, const Bytes& input, std::size_t piece) {
  std::vector<ChunkCodec::Job> jobs;
  for (std::size_t at = 0; at < input.size(); at += piece) {
    std::size_t n = std::min(piece, input.size() - at);
    codec.feed(Buffer::copy_of(std::span<const std::byte>(input.data() + at, n)), jobs);
  }
  codec.finish(jobs);
  Bytes out;
  for (auto& job : jobs) {
    Buffer b = job();
    out.insert(out.end(), b.data(), b.data() + b.size());
  }
  return out;
}

// As run_codec, but every job runs on `pool`, concurrently with the others and with feed().
Bytes run_on_pool(ChunkCodec& codec, const Bytes& input, std::size_t piece,
                  crew::ThreadPool& pool) {
  std::vector<ChunkCodec::Job> jobs;
  std::vector<crew::Future<Buffer>> results;
  auto submit = [&] {
    for (auto& job : jobs)
      results.push_back(pool.run([j = std::move(job)]() mutable { return j(); }));
    jobs.clear();
  };
  for (std::size_t at = 0; at < input.size(); at += piece) {
    std::size_t n = std::min(piece, input.size() - at);
    codec.feed(Buffer::copy_of(std::span<const std::byte>(input.data() + at, n)), jobs);
    submit();
  }
  codec.finish(jobs);
  submit();
  Bytes out;
  for (auto& f : results) {
    Buffer b = f.get();
    out.insert(out.end(), b.data(), b.data() + b.size());
  }
  return out;
}

// Text-like bytes: compressible but not trivial.
Bytes make_text(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  static const char* words[] = {"GET ", "/api/v1/items ", "200 ", "404 ",  "user=",
                                "42 ",  "latency_ms=",    "7\n",  "INFO ", "WARN "};
  Bytes out;
  out.reserve(n);
  while (out.size() < n) {
    const char* w = words[rng() % 10];
    for (const char* p = w; *p && out.size() < n; ++p) out.push_back(std::byte(*p));
    if (rng() % 7 == 0 && out.size() < n) out.push_back(std::byte(rng() & 0xff));
  }
  return out;
}

// zlib's own gzip writer (deflateInit2 with windowBits 31), optionally with an FNAME header.
Bytes zlib_gzip(const Bytes& in, const char* name = nullptr) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
  gz_header h{};
  if (name) {
    h.name = reinterpret_cast<Bytef*>(const_cast<char*>(name));
    h.comment = reinterpret_cast<Bytef*>(const_cast<char*>("a comment"));
    h.hcrc = 1;
    deflateSetHeader(&z, &h);
  }
  Bytes out(deflateBound(&z, in.size()) + 64);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

Bytes zlib_gunzip(const Bytes& in) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, 31), Z_OK);
  Bytes out;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  std::vector<std::byte> tmp(1 << 16);
  while (true) {
    z.next_out = reinterpret_cast<Bytef*>(tmp.data());
    z.avail_out = static_cast<uInt>(tmp.size());
    int r = inflate(&z, Z_NO_FLUSH);
    out.insert(out.end(), tmp.data(), tmp.data() + (tmp.size() - z.avail_out));
    if (r == Z_STREAM_END) {
      if (z.avail_in == 0) break;
      inflateReset(&z);  // next member
      continue;
    }
    if (r != Z_OK) {
      ADD_FAILURE() << "zlib inflate failed: " << r;
      break;
    }
  }
  inflateEnd(&z);
  return out;
}

constexpr std::size_t kBlock = 64 << 10;  // the smallest block, so boundaries are cheap to hit

TEST(CodecGzip, RoundTripsRandomSizesAroundBlockBoundaries) {
  std::mt19937 rng(1);
  std::vector<std::size_t> sizes = {0,      1,          2,          kBlock - 1,
                                    kBlock, kBlock + 1, 2 * kBlock, 3 * kBlock + 7};
  for (int i = 0; i < 6; ++i) sizes.push_back(rng() % (5 * kBlock));
  for (std::size_t size : sizes) {
    Bytes input = make_text(size, static_cast<unsigned>(size));
    for (std::size_t piece : {std::size_t{1000}, kBlock, std::size_t{3 * kBlock + 5}}) {
      auto gz = crew::stream::make_gzip_codec({.level = 6, .block = kBlock});
      Bytes packed = run_codec(*gz, input, piece);
      ASSERT_GE(packed.size(), 26u);
      EXPECT_EQ(zlib_gunzip(packed), input) << "zlib reads crew gzip, size " << size;
      auto gunzip = crew::stream::make_gunzip_codec();
      EXPECT_EQ(run_codec(*gunzip, packed, piece), input) << "size " << size << " piece " << piece;
      auto gunzip_bytewise = crew::stream::make_gunzip_codec();
      if (packed.size() < 4000) {
        EXPECT_EQ(run_codec(*gunzip_bytewise, packed, 1), input);
      }
    }
  }
}

TEST(CodecGzip, EveryMemberCarriesItsSizeInTheExtraField) {
  Bytes input = make_text(3 * kBlock + 100, 3);
  auto gz = crew::stream::make_gzip_codec({.block = kBlock});
  Bytes packed = run_codec(*gz, input, kBlock);
  std::size_t at = 0;
  int members = 0;
  while (at < packed.size()) {
    ASSERT_EQ(packed[at], std::byte{0x1f});
    ASSERT_EQ(packed[at + 3], std::byte{0x04});  // FEXTRA
    ASSERT_EQ(packed[at + 12], std::byte{'C'});
    ASSERT_EQ(packed[at + 13], std::byte{'W'});
    std::uint32_t size = 0;
    std::memcpy(&size, &packed[at + 16], 4);
    at += size;
    ++members;
  }
  EXPECT_EQ(at, packed.size());
  EXPECT_EQ(members, 4);
}

TEST(CodecGzip, JobsRunConcurrentlyOnAPoolAndKeepTheirOrder) {
  crew::ThreadPool pool({.max_workers = 4, .name = "codec-test"});
  Bytes input = make_text(12 * kBlock + 123, 11);
  for (int level : {1, 6}) {
    auto gz = crew::stream::make_gzip_codec({.level = level, .block = kBlock});
    Bytes packed = run_on_pool(*gz, input, 50000, pool);
    EXPECT_EQ(zlib_gunzip(packed), input);
    auto gunzip = crew::stream::make_gunzip_codec();
    EXPECT_EQ(run_on_pool(*gunzip, packed, 70000, pool), input);
  }
  Bytes foreign = zlib_gzip(input);
  auto gunzip = crew::stream::make_gunzip_codec();
  EXPECT_EQ(run_on_pool(*gunzip, foreign, 30000, pool), input);
}

TEST(CodecGzip, LevelsAndBlockAreValidated) {
  EXPECT_THROW(crew::stream::make_gzip_codec({.level = 13}), std::invalid_argument);
  EXPECT_THROW(crew::stream::make_gzip_codec({.level = -1}), std::invalid_argument);
  EXPECT_THROW(crew::stream::make_gzip_codec({.block = 100}), std::invalid_argument);
  for (int level : {0, 1, 9, 12}) {
    Bytes input = make_text(100000, 9);
    auto gz = crew::stream::make_gzip_codec({.level = level});
    EXPECT_EQ(zlib_gunzip(run_codec(*gz, input, 4096)), input) << "level " << level;
  }
}

TEST(CodecGunzip, ReadsZlibSingleMemberWithNameCommentAndHeaderCrc) {
  Bytes input = make_text(300000, 4);
  for (const char* name : {static_cast<const char*>(nullptr), "file.txt"}) {
    Bytes packed = zlib_gzip(input, name);
    for (std::size_t piece : {std::size_t{1}, std::size_t{777}, std::size_t{1 << 20}}) {
      if (piece == 1 && packed.size() > 200000) continue;
      auto gunzip = crew::stream::make_gunzip_codec();
      EXPECT_EQ(run_codec(*gunzip, packed, piece), input);
    }
  }
}

TEST(CodecGunzip, ReadsMultiMemberMixOfForeignAndCrewMembersAndZeroPadding) {
  Bytes a = make_text(50000, 5), b = make_text(200000, 6), c;
  Bytes packed = zlib_gzip(a, "a");
  auto gz = crew::stream::make_gzip_codec({.block = kBlock});
  Bytes crew_part = run_codec(*gz, b, 10000);
  packed.insert(packed.end(), crew_part.begin(), crew_part.end());
  Bytes tail = zlib_gzip(c);  // an empty member
  packed.insert(packed.end(), tail.begin(), tail.end());
  Bytes last = zlib_gzip(a);
  packed.insert(packed.end(), last.begin(), last.end());
  packed.insert(packed.end(), 512, std::byte{0});
  Bytes expect = a;
  expect.insert(expect.end(), b.begin(), b.end());
  expect.insert(expect.end(), a.begin(), a.end());
  for (std::size_t piece : {std::size_t{999}, std::size_t{65536}}) {
    auto gunzip = crew::stream::make_gunzip_codec();
    EXPECT_EQ(run_codec(*gunzip, packed, piece), expect);
  }
}

// Runs gunzip over `packed` and returns the DataError it must throw.
DataError expect_data_error(const Bytes& packed, std::size_t piece = 4096) {
  auto gunzip = crew::stream::make_gunzip_codec();
  try {
    run_codec(*gunzip, packed, piece);
  } catch (const DataError& e) {
    return e;
  }
  ADD_FAILURE() << "no DataError";
  return DataError("none", ~0ull);
}

TEST(CodecGunzip, TruncatedInputIsADataErrorAtTheEnd) {
  Bytes input = make_text(3 * kBlock, 7);
  auto gz = crew::stream::make_gzip_codec({.block = kBlock});
  Bytes crew_packed = run_codec(*gz, input, kBlock);
  Bytes zlib_packed = zlib_gzip(input);
  for (const Bytes* full : {&crew_packed, &zlib_packed}) {
    for (std::size_t cut : {std::size_t{1}, std::size_t{5}, std::size_t{15}, full->size() / 2,
                            full->size() - 4, full->size() - 1}) {
      Bytes t(full->begin(), full->begin() + static_cast<std::ptrdiff_t>(cut));
      DataError e = expect_data_error(t);
      EXPECT_EQ(e.offset(), cut) << e.what();
      EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(expect_data_error({}).offset(), 0u);
}

TEST(CodecGunzip, BitFlipsAreDataErrorsWithAnOffsetInsideTheInput) {
  Bytes input = make_text(3 * kBlock, 8);
  auto gz = crew::stream::make_gzip_codec({.block = kBlock});
  Bytes crew_packed = run_codec(*gz, input, kBlock);
  Bytes zlib_packed = zlib_gzip(input);
  std::mt19937 rng(8);
  for (const Bytes* full : {&crew_packed, &zlib_packed}) {
    for (int i = 0; i < 40; ++i) {
      Bytes t = *full;
      std::size_t at = rng() % t.size();
      if (at >= 4 && at < 10) continue;  // MTIME/XFL/OS are not checked by any gzip reader
      t[at] ^= std::byte(1u << (rng() % 8));
      auto gunzip = crew::stream::make_gunzip_codec();
      try {
        Bytes out = run_codec(*gunzip, t, 4096);
        // A flip in the size subfield of a crew member makes it a foreign member: still read
        // correctly. Every other flip must be caught.
        EXPECT_EQ(out, input) << "flip at " << at << " went unnoticed";
      } catch (const DataError& e) {
        EXPECT_LE(e.offset(), t.size()) << e.what();
        EXPECT_NE(std::string(e.what()).find("byte"), std::string::npos);
      }
    }
  }
}

TEST(CodecGunzip, GarbageAndTrailingDataAreRejected) {
  Bytes text = make_text(1000, 9);
  EXPECT_EQ(expect_data_error(text).offset(), 0u);
  Bytes packed = zlib_gzip(text);
  std::size_t end = packed.size();
  packed.push_back(std::byte{'x'});
  EXPECT_EQ(expect_data_error(packed).offset(), end);
  packed.back() = std::byte{0};
  packed.push_back(std::byte{1});
  EXPECT_EQ(expect_data_error(packed).offset(), end + 1);
}

}  // namespace
