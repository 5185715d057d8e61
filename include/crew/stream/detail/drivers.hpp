// What runs a pipeline: its Source (pulled on the pipeline thread) or AsyncSource (reading on an
// executor), the Driver that feeds the first stage, and the Builders that make the chain of stages
// when the pipeline starts. Internal to crew::stream; <crew/stream/flow.hpp> is the API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <crew/future.hpp>
#include <crew/stream/detail/nodes.hpp>

namespace crew {
inline namespace v0 {
namespace stream {
namespace detail {

/// Where a pipeline's items come from.
///
/// Thread safety: pull() runs on the pipeline thread only.
template <class T>
class Source {
 public:
  Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  virtual ~Source() = default;
  /// Appends up to `max` items (a byte source: one chunk) to `out`, waiting for them if it must.
  /// Returns false once the source is exhausted (items appended by that call still count). A
  /// source that can block for long should return (maybe with nothing) when `stop` fires.
  virtual bool pull(std::vector<T>& out, std::size_t max, const std::stop_token& stop) = 0;
};

/// Where a pipeline's items come from when they arrive on an executor (a socket): a pipeline from
/// an AsyncSource runs there, one read at a time, with no thread of its own; its stages run in the
/// reads' completions.
///
/// Thread safety: read() is called again only after the previous read completed; cancel() and
/// post() may be called from any thread.
template <class T>
class AsyncSource {
 public:
  /// `more` is false once the source is exhausted; an error ends the run.
  using Delivery = std::function<void(std::exception_ptr error, bool more)>;

  AsyncSource() = default;
  AsyncSource(const AsyncSource&) = delete;
  AsyncSource& operator=(const AsyncSource&) = delete;
  virtual ~AsyncSource() = default;
  /// Starts a read that appends what arrives (a byte source: one chunk) to `out` and then calls
  /// `done` on the executor, never inside read() itself.
  virtual void read(std::vector<T>& out, Delivery done) = 0;
  /// Makes a pending read complete soon (with `more` true and maybe nothing appended).
  virtual void cancel() noexcept = 0;
  /// Runs `fn` on the executor, in a handler of its own.
  virtual void post(std::function<void()> fn) = 0;
};

/// What a Builder makes: the first stage's feeder, which runs the whole pipeline.
class Driver {
 public:
  Driver() = default;
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;
  virtual ~Driver() = default;
};

// Runs a whole pipeline on the calling thread: pulls from the source and pushes into the first
// stage until the source is exhausted, the stop token fires, or a stage throws.
class PulledDriver : public Driver {
 public:
  virtual void run() = 0;
};

// Runs a whole pipeline from an AsyncSource's completions. start() calls `done` once, on the
// source's executor, with the error that ended the run or null.
class DrivenDriver : public Driver {
 public:
  using Done = std::function<void(std::exception_ptr)>;
  virtual void start(Done done) = 0;
  virtual void cancel() noexcept = 0;
  virtual void post(std::function<void()> fn) = 0;
};

// Counts a batch the source produced into its slot and its position.
template <class T>
void count_source_batch(Slot& slot, const std::vector<T>& batch, std::uint64_t& position) {
  std::size_t held = batch.size();
  if constexpr (kHasBytes<T>) {
    std::size_t bytes = 0;
    for (const T& x : batch) bytes += x.size();
    slot.bytes_out += bytes;
    if constexpr (kIsBytes<T>) {
      held = bytes;
      position += bytes;
    } else {
      position += batch.size();
    }
  } else {
    position += batch.size();
  }
  if (held > slot.peak_buffered) slot.peak_buffered = held;
  slot.items_out += batch.size();
}

template <class T>
class SourceDriver final : public PulledDriver {
 public:
  SourceDriver(std::unique_ptr<Source<T>> source, std::unique_ptr<Inlet<T>> next, Context& ctx)
      : source_(std::move(source)), next_(std::move(next)), ctx_(ctx), slot_(ctx.slot(0)) {
    slot_.counts_bytes = kIsBytes<T>;
    slot_.mark = kIsBytes<T> ? ctx.marks().high_water_bytes : ctx.marks().high_water_mark;
  }
  void run() override {
    std::vector<T> batch;
    // A byte source delivers a chunk per pull; the mark bounds it through the chunk size.
    const std::size_t max = kIsBytes<T> ? 1 : slot_.mark;
    batch.reserve(max);
    std::uint64_t position = 0;
    const std::stop_token& stop = ctx_.stop();
    for (;;) {
      if (stop.stop_requested()) throw_cancelled(slot_, position);
      const std::uint64_t start = ticks();
      bool more = true;
      try {
        more = source_->pull(batch, max, stop);
      } catch (...) {
        rethrow_as_stage_error(slot_, position);
      }
      slot_.busy_ticks += ticks() - start;
      if (!batch.empty()) {
        count_source_batch(slot_, batch, position);
        next_->push(batch);
        batch.clear();
        wait_ready();
      }
      if (!more) break;
    }
    if (stop.stop_requested()) throw_cancelled(slot_, position);
    next_->finish();
    wait_ready();
  }

 private:
  // Waits until the stages have room (an asynchronous sink finished its writes); rethrows its
  // error. Synchronous sinks answer inside when_ready(), so this costs a lock and no wait.
  void wait_ready() {
    std::unique_lock lock(ready_.mutex);
    ready_.done = false;
    ready_.error = nullptr;
    lock.unlock();
    next_->when_ready([r = &ready_](std::exception_ptr e) {
      // Notified under the lock: the waiter cannot return (and the driver go) before it is done.
      std::lock_guard guard(r->mutex);
      r->error = std::move(e);
      r->done = true;
      r->cv.notify_one();
    });
    lock.lock();
    ready_.cv.wait(lock, [this] { return ready_.done; });
    if (ready_.error) std::rethrow_exception(std::exchange(ready_.error, nullptr));
  }

  std::unique_ptr<Source<T>> source_;
  std::unique_ptr<Inlet<T>> next_;
  Context& ctx_;
  Slot& slot_;
  struct {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::exception_ptr error;
  } ready_;
};

template <class T>
class AsyncSourceDriver final : public DrivenDriver {
 public:
  AsyncSourceDriver(std::unique_ptr<AsyncSource<T>> source, std::unique_ptr<Inlet<T>> next,
                    Context& ctx)
      : source_(std::move(source)), next_(std::move(next)), ctx_(ctx), slot_(ctx.slot(0)) {
    slot_.counts_bytes = kIsBytes<T>;
    slot_.mark = kIsBytes<T> ? ctx.marks().high_water_bytes : ctx.marks().high_water_mark;
  }
  void start(Done done) override {
    done_ = std::move(done);
    source_->post([this] { read_next(); });
  }
  void cancel() noexcept override { source_->cancel(); }
  void post(std::function<void()> fn) override { source_->post(std::move(fn)); }

 private:
  void read_next() {
    if (ctx_.stop().stop_requested()) return end_cancelled();
    source_->read(batch_, [this](std::exception_ptr error, bool more) { on_read(error, more); });
  }
  void on_read(std::exception_ptr error, bool more) {
    if (error) {
      try {
        try {
          std::rethrow_exception(error);
        } catch (...) {
          rethrow_as_stage_error(slot_, position_);
        }
      } catch (...) {
        return done_(std::current_exception());
      }
    }
    if (ctx_.stop().stop_requested()) return end_cancelled();
    const std::uint64_t start = ticks();
    try {
      if (!batch_.empty()) {
        count_source_batch(slot_, batch_, position_);
        next_->push(batch_);
        batch_.clear();
      }
      if (!more) next_->finish();
    } catch (...) {
      return done_(std::current_exception());
    }
    slot_.busy_ticks += ticks() - start;
    if (!more) return next_->when_ready([this](std::exception_ptr e) { done_(std::move(e)); });
    next_->when_ready([this](std::exception_ptr e) {
      if (e) return done_(std::move(e));
      read_next();
    });
  }
  void end_cancelled() {
    try {
      throw_cancelled(slot_, position_);
    } catch (...) {
      done_(std::current_exception());
    }
  }

  std::unique_ptr<AsyncSource<T>> source_;
  std::unique_ptr<Inlet<T>> next_;
  Context& ctx_;
  Slot& slot_;
  Done done_;
  std::vector<T> batch_;
  std::uint64_t position_ = 0;
};

// Builds the chain of stages backwards, from the inlet that will receive a flow's items up to
// its source. Owned by a Flow or Pipeline until the pipeline runs.
template <class T>
class Builder {
 public:
  Builder() = default;
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;
  virtual ~Builder() = default;
  virtual std::unique_ptr<Driver> build(std::unique_ptr<Inlet<T>> tail, Context& ctx) = 0;
};

template <class T>
class SourceBuilder final : public Builder<T> {
 public:
  explicit SourceBuilder(std::unique_ptr<Source<T>> source) : source_(std::move(source)) {}
  std::unique_ptr<Driver> build(std::unique_ptr<Inlet<T>> tail, Context& ctx) override {
    return std::make_unique<SourceDriver<T>>(std::move(source_), std::move(tail), ctx);
  }

 private:
  std::unique_ptr<Source<T>> source_;
};

template <class T>
class AsyncSourceBuilder final : public Builder<T> {
 public:
  explicit AsyncSourceBuilder(std::unique_ptr<AsyncSource<T>> source)
      : source_(std::move(source)) {}
  std::unique_ptr<Driver> build(std::unique_ptr<Inlet<T>> tail, Context& ctx) override {
    return std::make_unique<AsyncSourceDriver<T>>(std::move(source_), std::move(tail), ctx);
  }

 private:
  std::unique_ptr<AsyncSource<T>> source_;
};

/// A stage descriptor S turns a flow of T into a flow of `S::template output<T>`.
template <class S, class T>
concept StageFor = requires {
  typename S::template output<T>;
}
&&!requires {
  S::kIsSink;
};
/// A sink descriptor K ends a flow of T with a result of type `K::template result<T>`.
template <class K, class T>
concept SinkFor = requires {
  typename K::template result<T>;
}
&&requires {
  K::kIsSink;
};

template <class T, class S>
class StageBuilder final : public Builder<typename S::template output<T>> {
 public:
  using Out = typename S::template output<T>;
  StageBuilder(std::unique_ptr<Builder<T>> prev, S stage, std::size_t index)
      : prev_(std::move(prev)), stage_(std::move(stage)), index_(index) {}
  std::unique_ptr<Driver> build(std::unique_ptr<Inlet<Out>> tail, Context& ctx) override {
    std::unique_ptr<Inlet<T>> inlet =
        std::move(stage_).template make<T>(std::move(tail), ctx.slot(index_), ctx);
    return prev_->build(std::move(inlet), ctx);
  }

 private:
  std::unique_ptr<Builder<T>> prev_;
  S stage_;
  std::size_t index_;
};

/// Where a sink leaves its result (the collected vector, the count) for Pipeline::take().
/// Thread safety: written by the pipeline thread before the run's Future settles.
template <class R>
struct ResultBox {
  std::optional<R> value;
};
// Sinks without a result (to(), write_file(), ...) use this.
struct NoResult {};
template <class R>
using BoxType = std::conditional_t<std::is_void_v<R>, NoResult, R>;

class PipelineBuilder {
 public:
  PipelineBuilder() = default;
  PipelineBuilder(const PipelineBuilder&) = delete;
  PipelineBuilder& operator=(const PipelineBuilder&) = delete;
  virtual ~PipelineBuilder() = default;
  virtual std::unique_ptr<Driver> build(Context& ctx) = 0;
};

template <class T, class K, class R>
class SinkBuilder final : public PipelineBuilder {
 public:
  SinkBuilder(std::unique_ptr<Builder<T>> prev, K sink, std::size_t index, ResultBox<R>* box)
      : prev_(std::move(prev)), sink_(std::move(sink)), index_(index), box_(box) {}
  std::unique_ptr<Driver> build(Context& ctx) override {
    std::unique_ptr<Inlet<T>> inlet =
        std::move(sink_).template make<T>(ctx.slot(index_), ctx, *box_);
    return prev_->build(std::move(inlet), ctx);
  }

 private:
  std::unique_ptr<Builder<T>> prev_;
  K sink_;
  std::size_t index_;
  ResultBox<R>* box_;
};

// Starts the pipeline thread; it builds the stages, runs them, destroys them (removing a
// temporary file, waiting for parallel tasks) and only then settles the returned Future.
Future<Summary> start_run(std::unique_ptr<PipelineBuilder> builder, std::vector<std::string> names,
                          FlowOptions marks, std::stop_token stop, std::jthread& thread);

// Starts a pipeline whose source is an AsyncSource: builds the stages here, then runs them on
// the source's executor with no thread of its own. The run keeps `keep` (the sink's result box)
// alive and sets `finished` just before the Future settles, after the stages are torn down.
Future<Summary> start_driven(std::unique_ptr<PipelineBuilder> builder,
                             std::vector<std::string> names, FlowOptions marks,
                             std::stop_token stop, std::shared_ptr<void> keep,
                             std::shared_ptr<std::atomic<bool>> finished);

}  // namespace detail
}  // namespace stream
}  // namespace v0
}  // namespace crew
