// crew pipe's engine: runs input through a chain of ChunkCodecs on a ThreadPool, in parallel,
// with output in order and a bound on the jobs in flight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>
#include <crew/stream/codec.hpp>

namespace crew::tool {

/// Feeds bytes through codec 0, its output through codec 1, and so on; the output of the last
/// codec goes to `sink` in stream order. Each codec's jobs run on `pool`; at most
/// `max_in_flight` jobs per codec are queued or running, so memory stays bounded by about
/// codecs × max_in_flight × (job input + job output) whatever the input size.
///
/// Errors: a DataError (or any exception) from a codec or a job propagates out of push() or
/// finish(); nothing from that job or later ones reaches the sink. The chain is unusable then.
///
/// Thread safety: push() and finish() are called from one thread (not a pool thread); the sink
/// runs on that thread.
class CodecChain {
 public:
  CodecChain(std::vector<std::unique_ptr<stream::ChunkCodec>> codecs, ThreadPool& pool,
             std::size_t max_in_flight, std::function<void(Buffer)> sink);
  CodecChain(const CodecChain&) = delete;
  CodecChain& operator=(const CodecChain&) = delete;

  /// The next input chunk.
  void push(Buffer input);
  /// End of input: finishes every codec in order and delivers the rest of the output.
  void finish();

 private:
  void feed(std::size_t stage, Buffer input);
  void submit(std::size_t stage, std::vector<stream::ChunkCodec::Job>& jobs);
  // Takes stage `s`'s oldest result (waiting for it) and hands it downstream.
  void pop(std::size_t stage);
  // Hands downstream every result that is already ready, oldest first, in every stage.
  void pop_ready();

  std::vector<std::unique_ptr<stream::ChunkCodec>> codecs_;
  std::vector<std::deque<Future<Buffer>>> pending_;
  ThreadPool& pool_;
  std::size_t max_in_flight_;
  std::function<void(Buffer)> sink_;
};

}  // namespace crew::tool
