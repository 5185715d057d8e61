// crew::stream codecs — byte transforms (gzip, gunzip, AES-256-GCM encrypt/decrypt) split into
// independent jobs that a pool runs in parallel while the output keeps stream order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/detail/unique_function.hpp>
#include <crew/errors.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

/// Corrupt or truncated input to a decoding codec: a damaged gzip stream, a ciphertext chunk that
/// fails authentication (wrong key, tampering, reordering) or input that ends early. `offset()` is
/// the byte offset in the codec's *input* where the bad data (or the unexpected end) was found;
/// `what()` says what went wrong and where, e.g.
/// `"gunzip: CRC32 mismatch in member at byte 1048576"`.
///
/// Thread safety: immutable after construction; safe to copy and read from any thread.
class DataError : public Error {
 public:
  DataError(const std::string& what, std::uint64_t offset) : Error(what), offset_(offset) {}
  /// Byte offset in the codec's input where the problem was detected.
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

 private:
  std::uint64_t offset_;
};

/// A byte transform cut into independent jobs, so a pool can run them in parallel while the
/// output stays in stream order.
///
/// The driver calls `feed()` with each input chunk in stream order, then `finish()` once at the
/// end. Each call appends zero or more jobs to `out`. The driver may run the jobs on any threads,
/// concurrently with each other and with later `feed()` calls, and must concatenate their
/// results in the order the jobs were appended. A job's result may be empty. A job may throw
/// DataError (for example a chunk that fails authentication); the driver must then stop and
/// emit nothing from that job or any later one. Codecs never hand out unauthenticated plaintext.
///
///     auto codec = crew::stream::make_gzip_codec({.level = 6});
///     std::vector<crew::stream::ChunkCodec::Job> jobs;
///     codec->feed(std::move(chunk), jobs);    // any number of times
///     codec->finish(jobs);
///     for (auto& job : jobs) write(job());    // or run them on a pool, keep the order
///
/// Thread safety: `feed()`/`finish()` are called by one thread at a time (not necessarily the
/// same one). Jobs own or share what they need and may run concurrently with each other and with
/// `feed()`; they stay valid after the codec is destroyed.
class ChunkCodec {
 public:
  /// One unit of parallel work; returns its piece of the output.
  /// A move-only `Buffer()` callable (a job owns its input Buffer, so std::function cannot hold
  /// it). Run once.
  using Job = crew::detail::BasicUniqueFunction<Buffer>;

  virtual ~ChunkCodec() = default;
  /// Consumes the next input chunk (may be empty) and appends the jobs it makes ready to `out`.
  /// Throws DataError when the input is already known to be corrupt.
  virtual void feed(Buffer input, std::vector<Job>& out) = 0;
  /// End of input: appends the remaining jobs. Throws DataError if the input was truncated.
  virtual void finish(std::vector<Job>& out) = 0;
  /// Short name for messages and stage summaries: "gzip", "gunzip", "encrypt", "decrypt".
  [[nodiscard]] virtual std::string_view name() const = 0;
};

/// Options for make_gzip_codec().
struct GzipOptions {
  /// Deflate level 0..12 (libdeflate; 1..9 mean what they mean to gzip, 10..12 compress harder).
  int level = 6;
  /// Input bytes per gzip member (one parallel job each). 64 KiB..64 MiB. Larger blocks compress a
  /// little better; smaller ones keep memory low: on log text 1 MiB blocks come out 0.35% larger
  /// than 64 MiB ones, and each job in flight holds about 1.5 × block bytes.
  std::size_t block = std::size_t{1} << 20;
};

/// Compresses into a standard multi-member gzip file (RFC 1952) that any gunzip reads. Each block
/// is an independent member whose header carries an FEXTRA subfield `'C','W'` (length 4) holding
/// the member's total compressed size, little-endian, so make_gunzip_codec() can find member
/// boundaries without inflating and inflate members in parallel.
/// Throws std::invalid_argument naming a bad option.
std::unique_ptr<ChunkCodec> make_gzip_codec(GzipOptions options = {});

/// Decompresses any gzip input. Members written by make_gzip_codec() (with the `'C','W'`
/// subfield) inflate in parallel, one job per member, each checking CRC-32 and ISIZE; any other
/// gzip (single or multi-member, FNAME/FCOMMENT/FHCRC/FEXTRA headers) is inflated as a stream in
/// `feed()` and its CRC-32 checked per member. Trailing zero padding is ignored, as gzip does.
/// Corrupt, truncated or non-gzip input throws DataError with the input offset.
std::unique_ptr<ChunkCodec> make_gunzip_codec();

/// A 256-bit AES key.
///
/// Thread safety: a value; immutable use from any thread is safe.
struct Key {
  std::array<std::byte, 32> bytes{};

  /// A key from exactly 32 raw bytes; throws std::invalid_argument on another size.
  static Key from_bytes(std::span<const std::byte> raw);
  /// Reads a key file: either exactly 32 raw bytes, or 64 hexadecimal digits (surrounding
  /// whitespace and a trailing newline allowed). Throws std::invalid_argument naming the file
  /// when it is neither, std::system_error when it cannot be read.
  static Key from_file(const std::filesystem::path& path);
  /// 32 bytes from the operating system's random generator.
  static Key random();
  /// The key as 64 lowercase hexadecimal digits.
  [[nodiscard]] std::string to_hex() const;
};

/// Options for make_encrypt_codec().
struct EncryptOptions {
  /// Plaintext bytes per authenticated chunk (one parallel job each). 1 KiB..64 MiB.
  std::size_t chunk = std::size_t{1} << 20;
};

/// Encrypts with AES-256-GCM in authenticated chunks. Output format (integers little-endian):
///
///     header   "CREWAEAD" (8) | version u8 = 1 | reserved (3 zero bytes) |
///              chunk size u32 | base nonce (12 random bytes)                — 28 bytes
///     chunk i  ciphertext (chunk size bytes; the last one 0..chunk size) | GCM tag (16)
///
/// Chunk i uses nonce = base nonce XOR (i as u64 in nonce bytes 4..11) and AAD = header (28
/// bytes) | i (u64) | final flag (u8). Only the last chunk has the final flag, and it is shorter
/// than a full chunk (possibly empty), so truncation, reordering, splicing and tampering all fail
/// authentication. Throws std::invalid_argument naming a bad option.
std::unique_ptr<ChunkCodec> make_encrypt_codec(const Key& key, EncryptOptions options = {});

/// Decrypts what make_encrypt_codec() wrote. Each chunk is authenticated before any of its
/// plaintext is returned. A wrong key, tampering, reordering, truncation or a bad header throws
/// DataError with the input offset of the failing chunk.
std::unique_ptr<ChunkCodec> make_decrypt_codec(const Key& key);

}  // namespace stream
}  // namespace v0
}  // namespace crew
