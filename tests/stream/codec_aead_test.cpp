// Tests for the AES-256-GCM encrypt/decrypt codecs and Key of crew/stream/codec.hpp.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <crew/buffer.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>
#include <crew/stream/codec.hpp>

namespace {

using crew::Buffer;
using crew::stream::ChunkCodec;
using crew::stream::DataError;
using crew::stream::Key;

using Bytes = std::vector<std::byte>;

constexpr std::size_t kChunk = 4096;

Bytes random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = std::byte(rng() & 0xff);
  return b;
}

// Feeds `input` in pieces, runs the jobs in order and returns the output. If a job throws, the
// output gathered so far is in `partial` (what an ordered driver would have written).
Bytes run_codec(ChunkCodec& codec, const Bytes& input, std::size_t piece,
                Bytes* partial = nullptr) {
  std::vector<ChunkCodec::Job> jobs;
  Bytes out;
  auto drain = [&] {
    for (auto& job : jobs) {
      Buffer b = job();
      out.insert(out.end(), b.data(), b.data() + b.size());
      if (partial) *partial = out;
    }
    jobs.clear();
  };
  for (std::size_t at = 0; at < input.size(); at += piece) {
    std::size_t n = std::min(piece, input.size() - at);
    codec.feed(Buffer::copy_of(std::span<const std::byte>(input.data() + at, n)), jobs);
    drain();
  }
  codec.finish(jobs);
  drain();
  return out;
}

Bytes encrypt(const Key& key, const Bytes& plain, std::size_t piece = 1000) {
  auto enc = crew::stream::make_encrypt_codec(key, {.chunk = kChunk});
  return run_codec(*enc, plain, piece);
}

DataError expect_data_error(const Key& key, const Bytes& sealed, Bytes* partial = nullptr) {
  auto dec = crew::stream::make_decrypt_codec(key);
  try {
    run_codec(*dec, sealed, 1500, partial);
  } catch (const DataError& e) {
    return e;
  }
  ADD_FAILURE() << "no DataError";
  return DataError("none", ~0ull);
}

TEST(CodecAead, RoundTripsRandomSizesAroundChunkBoundaries) {
  Key key = Key::random();
  std::mt19937 rng(2);
  std::vector<std::size_t> sizes = {0,          1,      15,         16,         17,
                                    kChunk - 1, kChunk, kChunk + 1, 2 * kChunk, 5 * kChunk + 3};
  for (int i = 0; i < 8; ++i) sizes.push_back(rng() % (6 * kChunk));
  for (std::size_t size : sizes) {
    Bytes plain = random_bytes(size, static_cast<unsigned>(size));
    for (std::size_t piece : {std::size_t{1}, std::size_t{999}, kChunk, std::size_t{3 * kChunk}}) {
      if (piece == 1 && size > 2 * kChunk) continue;
      Bytes sealed = encrypt(key, plain, piece);
      std::size_t chunks = size / kChunk + 1;
      EXPECT_EQ(sealed.size(), 28 + size + 16 * chunks);
      auto dec = crew::stream::make_decrypt_codec(key);
      EXPECT_EQ(run_codec(*dec, sealed, piece), plain) << "size " << size << " piece " << piece;
    }
  }
}

TEST(CodecAead, JobsRunConcurrentlyOnAPoolAndKeepTheirOrder) {
  crew::ThreadPool pool({.max_workers = 4, .name = "aead-test"});
  auto run_on_pool = [&pool](ChunkCodec& codec, const Bytes& input) {
    std::vector<ChunkCodec::Job> jobs;
    for (std::size_t at = 0; at < input.size(); at += 10000) {
      std::size_t n = std::min<std::size_t>(10000, input.size() - at);
      codec.feed(Buffer::copy_of(std::span<const std::byte>(input.data() + at, n)), jobs);
    }
    codec.finish(jobs);
    std::vector<crew::Future<Buffer>> results;
    for (auto& job : jobs) {
      results.push_back(pool.run([j = std::move(job)]() mutable { return j(); }));
    }
    Bytes out;
    for (auto& f : results) {
      Buffer b = f.get();
      out.insert(out.end(), b.data(), b.data() + b.size());
    }
    return out;
  };
  Key key = Key::random();
  Bytes plain = random_bytes(40 * kChunk + 77, 12);
  auto enc = crew::stream::make_encrypt_codec(key, {.chunk = kChunk});
  Bytes sealed = run_on_pool(*enc, plain);
  auto dec = crew::stream::make_decrypt_codec(key);
  EXPECT_EQ(run_on_pool(*dec, sealed), plain);
}

TEST(CodecAead, EachEncryptionUsesAFreshNonce) {
  Key key = Key::random();
  Bytes plain = random_bytes(100, 1);
  EXPECT_NE(encrypt(key, plain), encrypt(key, plain));
}

TEST(CodecAead, WrongKeyFailsAtTheFirstChunkAndEmitsNothing) {
  Bytes plain = random_bytes(3 * kChunk, 3);
  Bytes sealed = encrypt(Key::random(), plain);
  Bytes partial;
  DataError e = expect_data_error(Key::random(), sealed, &partial);
  EXPECT_EQ(e.offset(), 28u);
  EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  EXPECT_TRUE(partial.empty());
}

TEST(CodecAead, TruncationIsDetectedAtEveryCutPoint) {
  Key key = Key::random();
  Bytes plain = random_bytes(3 * kChunk, 4);
  Bytes sealed = encrypt(key, plain);
  const std::size_t sealed_chunk = kChunk + 16;
  for (std::size_t cut :
       {std::size_t{0}, std::size_t{5}, std::size_t{27}, std::size_t{28}, std::size_t{40},
        28 + sealed_chunk, 28 + 2 * sealed_chunk, 28 + 3 * sealed_chunk, sealed.size() - 1}) {
    Bytes t(sealed.begin(), sealed.begin() + static_cast<std::ptrdiff_t>(cut));
    Bytes partial;
    DataError e = expect_data_error(key, t, &partial);
    EXPECT_LE(e.offset(), cut) << e.what();
    // Whole chunks before the cut decrypt; the stream as a whole is still rejected.
    EXPECT_LE(partial.size(), plain.size());
    EXPECT_TRUE(std::equal(partial.begin(), partial.end(), plain.begin()));
  }
}

TEST(CodecAead, TamperingReorderingAndSplicingAreDetected) {
  Key key = Key::random();
  Bytes plain = random_bytes(3 * kChunk + 100, 5);
  Bytes sealed = encrypt(key, plain);
  const std::size_t sc = kChunk + 16;
  std::mt19937 rng(5);
  for (int i = 0; i < 30; ++i) {
    Bytes t = sealed;
    std::size_t at = 28 + rng() % (t.size() - 28);
    t[at] ^= std::byte(1u << (rng() % 8));
    DataError e = expect_data_error(key, t);
    std::size_t chunk_start = 28 + (at - 28) / sc * sc;
    EXPECT_EQ(e.offset(), chunk_start) << e.what();
  }
  // Header tampering (nonce or chunk size) fails too.
  for (std::size_t at :
       {std::size_t{0}, std::size_t{8}, std::size_t{9}, std::size_t{13}, std::size_t{20}}) {
    Bytes t = sealed;
    t[at] ^= std::byte{0x01};
    expect_data_error(key, t);
  }
  // Swap chunks 0 and 1.
  Bytes swapped = sealed;
  std::swap_ranges(swapped.begin() + 28, swapped.begin() + 28 + static_cast<std::ptrdiff_t>(sc),
                   swapped.begin() + 28 + static_cast<std::ptrdiff_t>(sc));
  EXPECT_EQ(expect_data_error(key, swapped).offset(), 28u);
  // Drop a whole middle chunk.
  Bytes dropped = sealed;
  dropped.erase(dropped.begin() + 28 + static_cast<std::ptrdiff_t>(sc),
                dropped.begin() + 28 + 2 * static_cast<std::ptrdiff_t>(sc));
  EXPECT_EQ(expect_data_error(key, dropped).offset(), 28 + sc);
  // Appending another stream's chunks.
  Bytes extended = sealed;
  Bytes other = encrypt(key, plain);
  extended.insert(extended.end(), other.begin() + 28, other.end());
  expect_data_error(key, extended);
}

TEST(CodecAead, KeyFilesHoldRawBytesOrHex) {
  auto dir = std::filesystem::temp_directory_path() /
             ("crew-key-test-" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(dir);
  Key key = Key::random();
  {
    std::ofstream(dir / "raw", std::ios::binary)
        .write(reinterpret_cast<const char*>(key.bytes.data()), 32);
    std::ofstream(dir / "hex") << "  " << key.to_hex() << "\n";
    std::ofstream(dir / "bad") << "not a key\n";
  }
  EXPECT_EQ(Key::from_file(dir / "raw").bytes, key.bytes);
  EXPECT_EQ(Key::from_file(dir / "hex").bytes, key.bytes);
  EXPECT_THROW(Key::from_file(dir / "bad"), std::invalid_argument);
  EXPECT_THROW(Key::from_file(dir / "missing"), std::system_error);
  EXPECT_THROW(Key::from_bytes(std::span<const std::byte>(key.bytes.data(), 31)),
               std::invalid_argument);
  EXPECT_THROW(crew::stream::make_encrypt_codec(key, {.chunk = 10}), std::invalid_argument);
  std::filesystem::remove_all(dir);
}

TEST(CodecAead, NotCrewDataIsRejectedAtOnce) {
  Bytes junk = random_bytes(100, 6);
  EXPECT_EQ(expect_data_error(Key::random(), junk).offset(), 0u);
}

}  // namespace
