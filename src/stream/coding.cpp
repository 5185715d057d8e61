// Codec stages: a ChunkCodec's jobs run on a pool, their outputs handed on in order.
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <crew/stream/coding.hpp>
#include <crew/stream/stages.hpp>

namespace crew {
inline namespace v0 {
namespace stream {
namespace {

class CodecNode final : public detail::Node<Buffer, Buffer> {
 public:
  CodecNode(std::unique_ptr<ChunkCodec> codec, ThreadPool& pool, std::size_t max_in_flight,
            std::unique_ptr<detail::Inlet<Buffer>> next, detail::Slot& slot,
            const detail::Context& ctx)
      : Node(std::move(next), slot, ctx),
        codec_(std::move(codec)),
        pool_(pool),
        max_(max_in_flight) {}
  // Jobs own what they need, but the caller must see a quiet pool once the run settled.
  ~CodecNode() override {
    for (auto& entry : in_flight_) entry.second.wait();
  }
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    for (Buffer& b : batch) {
      const std::uint64_t at = position_;
      position_ += b.size();
      try {
        codec_->feed(std::move(b), jobs_);
      } catch (...) {
        fail(at);
      }
      submit_jobs(at);
    }
    end();
  }
  void finish() override {
    start_ = detail::ticks();
    try {
      codec_->finish(jobs_);
    } catch (...) {
      fail(position_);
    }
    submit_jobs(position_);
    while (!in_flight_.empty()) deliver_one();
    slot_.busy_ticks += detail::ticks() - start_;
    end_of_input();
  }

 private:
  void submit_jobs(std::uint64_t at) {
    for (ChunkCodec::Job& job : jobs_) {
      while (in_flight_.size() >= max_) deliver_one();
      in_flight_.emplace_back(at, pool_.run([j = std::move(job)]() mutable { return j(); }));
      if (in_flight_.size() > slot_.peak_in_flight) slot_.peak_in_flight = in_flight_.size();
    }
    jobs_.clear();
  }
  void deliver_one() {
    auto [at, future] = std::move(in_flight_.front());
    in_flight_.pop_front();
    std::optional<Buffer> out;
    try {
      out.emplace(future.get());
    } catch (const DataError& e) {
      fail(e.offset());
    } catch (...) {
      fail(at);
    }
    if (!out->empty()) emit(std::move(*out));
  }

  std::unique_ptr<ChunkCodec> codec_;
  ThreadPool& pool_;
  std::size_t max_;
  std::vector<ChunkCodec::Job> jobs_;
  std::deque<std::pair<std::uint64_t, Future<Buffer>>> in_flight_;
};

}  // namespace

ThreadPool& default_codec_pool() {
  static ThreadPool pool({.name = "crew-codec"});
  return pool;
}

FixedStage<Buffer, Buffer> codec_stage(std::function<std::unique_ptr<ChunkCodec>()> make_codec,
                                       std::string name, CodecStageOptions options) {
  if (!make_codec) {
    throw std::invalid_argument("crew::stream::codec_stage: make_codec must not be empty");
  }
  detail::validate_parallel({.ordered = true, .max_in_flight = options.max_in_flight},
                            fmt::format("crew::stream::{}", name).c_str());
  FixedStage<Buffer, Buffer> s;
  s.name = std::move(name);
  s.factory = [make_codec = std::move(make_codec), options](
                  std::unique_ptr<detail::Inlet<Buffer>> next, detail::Slot& slot,
                  const detail::Context& ctx) -> std::unique_ptr<detail::Inlet<Buffer>> {
    ThreadPool& pool = options.pool ? *options.pool : default_codec_pool();
    const std::size_t max =
        options.max_in_flight ? *options.max_in_flight : detail::default_in_flight(pool);
    return std::make_unique<CodecNode>(make_codec(), pool, max, std::move(next), slot, ctx);
  };
  return s;
}

FixedStage<Buffer, Buffer> gzip(GzipOptions codec, CodecStageOptions options) {
  (void)make_gzip_codec(codec);  // validates the options at the call
  return codec_stage([codec] { return make_gzip_codec(codec); }, "gzip", options);
}

FixedStage<Buffer, Buffer> gunzip(CodecStageOptions options) {
  return codec_stage([] { return make_gunzip_codec(); }, "gunzip", options);
}

FixedStage<Buffer, Buffer> encrypt(const Key& key, EncryptOptions codec,
                                   CodecStageOptions options) {
  (void)make_encrypt_codec(key, codec);
  return codec_stage([key, codec] { return make_encrypt_codec(key, codec); }, "encrypt", options);
}

FixedStage<Buffer, Buffer> decrypt(const Key& key, CodecStageOptions options) {
  return codec_stage([key] { return make_decrypt_codec(key); }, "decrypt", options);
}

}  // namespace stream
}  // namespace v0
}  // namespace crew
