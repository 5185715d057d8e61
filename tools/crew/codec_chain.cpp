#include "codec_chain.hpp"

#include <utility>

namespace crew::tool {

CodecChain::CodecChain(std::vector<std::unique_ptr<stream::ChunkCodec>> codecs, ThreadPool& pool,
                       std::size_t max_in_flight, std::function<void(Buffer)> sink)
    : codecs_(std::move(codecs)),
      pending_(codecs_.size()),
      pool_(pool),
      max_in_flight_(max_in_flight < 1 ? 1 : max_in_flight),
      sink_(std::move(sink)) {}

void CodecChain::push(Buffer input) {
  if (codecs_.empty()) {
    sink_(std::move(input));
    return;
  }
  feed(0, std::move(input));
  pop_ready();
}

void CodecChain::finish() {
  // Upstream stages finish first, so every byte reaches stage s before its finish().
  for (std::size_t s = 0; s < codecs_.size(); ++s) {
    while (!pending_[s].empty()) pop(s);
    std::vector<stream::ChunkCodec::Job> jobs;
    codecs_[s]->finish(jobs);
    submit(s, jobs);
    while (!pending_[s].empty()) pop(s);
  }
}

void CodecChain::feed(std::size_t stage, Buffer input) {
  std::vector<stream::ChunkCodec::Job> jobs;
  codecs_[stage]->feed(std::move(input), jobs);
  submit(stage, jobs);
}

void CodecChain::submit(std::size_t stage, std::vector<stream::ChunkCodec::Job>& jobs) {
  for (auto& job : jobs) {
    // The bound: wait for the oldest job of this stage before queueing another one.
    while (pending_[stage].size() >= max_in_flight_) pop(stage);
    pending_[stage].push_back(pool_.run([job = std::move(job)]() mutable { return job(); }));
  }
  jobs.clear();
}

void CodecChain::pop(std::size_t stage) {
  Buffer out = pending_[stage].front().get();  // rethrows the job's DataError
  pending_[stage].pop_front();
  if (stage + 1 == codecs_.size()) {
    sink_(std::move(out));
  } else if (!out.empty()) {
    feed(stage + 1, std::move(out));
  }
}

void CodecChain::pop_ready() {
  for (std::size_t s = 0; s < codecs_.size(); ++s) {
    while (!pending_[s].empty() && pending_[s].front().ready()) pop(s);
  }
}

}  // namespace crew::tool
