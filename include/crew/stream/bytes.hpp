// crew::stream byte streams: flows of crew::Buffer chunks from and to files and file
// descriptors, and the byte stages lines(), uppercase() and sha256().
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>

#include <crew/buffer.hpp>
#include <crew/stream/flow.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

/// Options of the byte sources (read_file, read_fd, a socket's readable side).
struct ReadOptions {
  /// Largest chunk read at once; a chunk is one crew::Buffer in the flow. Must be >= 1.
  std::size_t chunk = 64 * 1024;
  /// Marks of the pipeline this source starts (see FlowOptions): bytes for the byte stages,
  /// items once lines() or a map turned the chunks into something else.
  std::size_t high_water_mark = 16;
  std::size_t high_water_bytes = 64 * 1024;
};

/// Options of write_file().
struct WriteFileOptions {
  /// fsync the temporary file before renaming it, so the new contents survive a crash.
  bool sync = false;
};

/// A flow of the bytes of the file at `path`, in chunks of at most `options.chunk` bytes. The
/// file is opened when the pipeline runs; a missing or unreadable file rejects the run with a
/// crew::StageError whose message names the path and the OS error.
Flow<Buffer> read_file(std::filesystem::path path, ReadOptions options = {});

/// A flow of the bytes read from `fd` (a pipe, a socket, stdin: `read_fd(0)`) until end of file.
/// The descriptor is not closed. A stop request is noticed within 50 ms even while no data
/// arrives.
Flow<Buffer> read_fd(int fd, ReadOptions options = {});

/// A sink writing the stream to `path` atomically: the bytes go to a temporary file in the same
/// directory (`.<name>.crew-XXXXXX`), renamed over `path` when the stream ended successfully. A
/// failed or cancelled pipeline removes the temporary file, so it never leaves a truncated
/// destination — nor any new file at all.
FixedSink<Buffer> write_file(std::filesystem::path path, WriteFileOptions options = {});

/// A sink writing the stream to `fd` (a pipe, a socket, stdout: `write_fd(1)`). The descriptor
/// is not closed. A closed reader (EPIPE) fails the stage.
FixedSink<Buffer> write_fd(int fd);

/// Chunks to lines: one std::string per line, without its "\n" (or "\r\n"). A line split across
/// chunks is joined; a last line without a newline is still delivered; an empty input gives no
/// lines.
FixedStage<Buffer, std::string> lines();

/// ASCII letters to upper case, chunk by chunk, in place (the seed's Transform example).
FixedStage<Buffer, Buffer> uppercase();

/// A pass-through tap computing the SHA-256 of the bytes that flow through it (OpenSSL EVP).
/// At the end of the stream the lowercase hex digest is in the Summary (`stage("sha256")
/// .report`) and, if given, passed to `on_digest` (on the pipeline thread).
FixedStage<Buffer, Buffer> sha256(std::function<void(const std::string&)> on_digest = {});

}  // namespace stream
}  // namespace v0
}  // namespace crew
