// crew::stream codec stages: gzip(), gunzip(), encrypt(), decrypt() — the ChunkCodecs of
// <crew/stream/codec.hpp> run as pipeline stages whose jobs execute on a pool, in order.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>

#include <crew/buffer.hpp>
#include <crew/pool.hpp>
#include <crew/stream/codec.hpp>
#include <crew/stream/flow.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

/// Where and how wide a codec stage runs.
struct CodecStageOptions {
  /// The pool that runs the codec's jobs; it must outlive the run. Default: one process-wide
  /// pool shared by all codec stages (`crew::default_thread_count()` threads, named
  /// `crew-codec-wN`), started on first use.
  ThreadPool* pool = nullptr;
  /// Most jobs running or finished-but-not-yet-handed-on at once (each holds about one block or
  /// chunk of the codec). Default: twice the pool's thread count, at least 2. 0 is an error.
  std::optional<std::size_t> max_in_flight{};
};

/// The process-wide pool of codec stages with no pool of their own.
ThreadPool& default_codec_pool();

/// A stage running the ChunkCodec that `make_codec()` returns (called once per run): input
/// chunks are fed in order, the jobs run on the pool with at most `max_in_flight` at once, and
/// their outputs are handed on in job order. A job that throws (crew::stream::DataError for
/// corrupt input) fails the stage with a crew::StageError at the codec's input offset; nothing
/// from that job or a later one is handed on. Throws std::invalid_argument when max_in_flight
/// is 0.
FixedStage<Buffer, Buffer> codec_stage(std::function<std::unique_ptr<ChunkCodec>()> make_codec,
                                       std::string name, CodecStageOptions options = {});

/// Compresses into a standard (multi-member) gzip stream, blocks in parallel.
///
///     read_file("big.log") | gzip({.level = 6}) | write_file("big.log.gz")
FixedStage<Buffer, Buffer> gzip(GzipOptions codec = {}, CodecStageOptions options = {});
/// Decompresses any gzip stream (crew's own output in parallel, member by member).
FixedStage<Buffer, Buffer> gunzip(CodecStageOptions options = {});
/// Encrypts with AES-256-GCM in authenticated chunks, chunks in parallel.
FixedStage<Buffer, Buffer> encrypt(const Key& key, EncryptOptions codec = {},
                                   CodecStageOptions options = {});
/// Decrypts what encrypt() wrote; a wrong key or tampered input fails the stage before any
/// unauthenticated plaintext is handed on.
FixedStage<Buffer, Buffer> decrypt(const Key& key, CodecStageOptions options = {});

}  // namespace stream
}  // namespace v0
}  // namespace crew
