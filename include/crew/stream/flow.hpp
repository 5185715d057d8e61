// crew::stream::Flow and Pipeline — typed pipelines: a source, stages composed with `|`, a sink.
// The stages themselves are in <crew/stream/stages.hpp> and <crew/stream/bytes.hpp>.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <crew/buffer.hpp>
#include <crew/future.hpp>
#include <crew/stream/error.hpp>
#include <crew/stream/summary.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

/// High-water marks of a pipeline's stage boundaries. A stage hands its output on as soon as
/// it holds this much, and holds no more: so a slow sink pauses the source, and the memory in
/// flight is at most the sum of the marks (plus the in-flight items of parallel stages).
struct FlowOptions {
  /// Items per boundary, for streams of anything but crew::Buffer (Node's objectMode default).
  std::size_t high_water_mark = 16;
  /// Bytes per boundary, for streams of crew::Buffer chunks (Node's default for byte streams).
  std::size_t high_water_bytes = 64 * 1024;
};

namespace detail {

/// A cheap timestamp: the TSC on x86, steady_clock nanoseconds elsewhere. Converted to
/// nanoseconds once, when the Summary is made.
inline std::uint64_t ticks() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

template <class T>
inline constexpr bool kIsBytes = std::is_same_v<T, Buffer>;

// Bytes in an item, for the counters: Buffer and std::string items have a size, others none.
template <class T>
std::uint64_t byte_size(const T& value) noexcept {
  if constexpr (std::is_same_v<T, Buffer> || std::is_same_v<T, std::string>) {
    return value.size();
  } else {
    (void)value;
    return 0;
  }
}
template <class T>
inline constexpr bool kHasBytes = std::is_same_v<T, Buffer> || std::is_same_v<T, std::string>;

// One stage's counters; written by the pipeline thread only, read after it finished.
struct Slot {
  std::string name;
  std::size_t index = 0;
  std::uint64_t items_in = 0, items_out = 0, bytes_in = 0, bytes_out = 0, busy_ticks = 0;
  std::size_t peak_buffered = 0, peak_in_flight = 0, mark = 0;
  bool counts_bytes = false;
  std::string report;
};

// What every stage of one run shares: its counters, the marks and the stop token.
class Context {
 public:
  Context(const std::vector<std::string>& names, FlowOptions marks, std::stop_token stop);
  Slot& slot(std::size_t i) { return slots_.at(i); }
  [[nodiscard]] const FlowOptions& marks() const noexcept { return marks_; }
  [[nodiscard]] const std::stop_token& stop() const noexcept { return stop_; }
  [[nodiscard]] Summary summary(std::chrono::nanoseconds elapsed, double ns_per_tick) const;

 private:
  std::vector<Slot> slots_;
  FlowOptions marks_;
  std::stop_token stop_;
};

// Call inside a catch block: rethrows a StageError or crew::Cancelled as it is, and wraps any
// other exception in a StageError naming `slot` and `position`.
[[noreturn]] void rethrow_as_stage_error(const Slot& slot, std::uint64_t position);
[[noreturn]] void throw_cancelled(const Slot& source, std::uint64_t position);

/// The receiving side of a stage boundary. A stage's push() consumes a batch (the caller
/// clears it afterwards); finish() is the end of input.
///
/// Thread safety: called by the pipeline thread only.
template <class T>
class Inlet {
 public:
  Inlet() = default;
  Inlet(const Inlet&) = delete;
  Inlet& operator=(const Inlet&) = delete;
  virtual ~Inlet() = default;
  virtual void push(std::vector<T>& batch) = 0;
  virtual void finish() = 0;
};

/// Base of a stage from In to Out: counts its input, keeps its time, and collects its output up
/// to the boundary's mark before handing it on (emit()).
///
/// Thread safety: used by the pipeline thread only.
template <class In, class Out>
class Node : public Inlet<In> {
 public:
  Node(std::unique_ptr<Inlet<Out>> next, Slot& slot, const Context& ctx)
      : slot_(slot), next_(std::move(next)) {
    slot_.counts_bytes = kIsBytes<Out>;
    mark_ = kIsBytes<Out> ? ctx.marks().high_water_bytes : ctx.marks().high_water_mark;
    slot_.mark = mark_;
    if constexpr (!kIsBytes<Out>) out_.reserve(mark_);
  }

 protected:
  // Starts the clock and counts `batch` in.
  void begin(const std::vector<In>& batch) {
    start_ = ticks();
    slot_.items_in += batch.size();
    if constexpr (kHasBytes<In>) {
      for (const In& x : batch) slot_.bytes_in += x.size();
    }
  }
  // The weight of an input item in the stage's position: its size in a byte stream, else 1.
  static std::uint64_t weight(const In& x) noexcept {
    if constexpr (kIsBytes<In>) {
      return x.size();
    } else {
      (void)x;
      return 1;
    }
  }
  void emit(Out&& value) {
    if constexpr (kIsBytes<Out>) {
      const std::size_t n = value.size();
      if (!out_.empty() && out_bytes_ + n > mark_) hand_on(true);
      out_bytes_ += n;
      out_.push_back(std::move(value));
      if (out_bytes_ >= mark_) hand_on(true);
    } else {
      out_.push_back(std::move(value));
      if (out_.size() >= mark_) hand_on(true);
    }
  }
  // Stops the clock and hands on what is held; the end of a push().
  void end() {
    slot_.busy_ticks += ticks() - start_;
    if (!out_.empty()) hand_on(false);
  }
  // End of input: hands on what is held, then finishes downstream. The clock must be stopped.
  void end_of_input() {
    if (!out_.empty()) hand_on(false);
    next_->finish();
  }
  // Inside a catch block: rethrows as a StageError at `position`.
  [[noreturn]] void fail(std::uint64_t position) { rethrow_as_stage_error(slot_, position); }
  [[nodiscard]] std::size_t held() const noexcept {
    return kIsBytes<Out> ? out_bytes_ : out_.size();
  }

  Slot& slot_;
  std::uint64_t position_ = 0;  // items (bytes) of input consumed before the current batch
  std::uint64_t start_ = 0;

 private:
  void hand_on(bool running) {
    if (running) slot_.busy_ticks += ticks() - start_;
    const std::size_t held_now = held();
    if (held_now > slot_.peak_buffered) slot_.peak_buffered = held_now;
    slot_.items_out += out_.size();
    if constexpr (kIsBytes<Out>) {
      slot_.bytes_out += out_bytes_;
    } else if constexpr (kHasBytes<Out>) {
      for (const Out& x : out_) slot_.bytes_out += x.size();
    }
    next_->push(out_);
    out_.clear();
    out_bytes_ = 0;
    if (running) start_ = ticks();
  }

  std::unique_ptr<Inlet<Out>> next_;
  std::vector<Out> out_;
  std::size_t out_bytes_ = 0;
  std::size_t mark_ = 0;
};

/// Base of a sink: counts its input and keeps its time.
///
/// Thread safety: used by the pipeline thread only.
template <class In>
class SinkNode : public Inlet<In> {
 public:
  explicit SinkNode(Slot& slot) : slot_(slot) {}

 protected:
  void begin(const std::vector<In>& batch) {
    start_ = ticks();
    slot_.items_in += batch.size();
    if constexpr (kHasBytes<In>) {
      for (const In& x : batch) slot_.bytes_in += x.size();
    }
  }
  void end() { slot_.busy_ticks += ticks() - start_; }
  [[noreturn]] void fail(std::uint64_t position) { rethrow_as_stage_error(slot_, position); }

  Slot& slot_;
  std::uint64_t position_ = 0;
  std::uint64_t start_ = 0;
};

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

// Runs a whole pipeline: pulls from the source and pushes into the first stage until the source
// is exhausted, the stop token fires, or a stage throws.
class Driver {
 public:
  Driver() = default;
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;
  virtual ~Driver() = default;
  virtual void run() = 0;
};

template <class T>
class SourceDriver final : public Driver {
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
        std::size_t held = batch.size();
        if constexpr (kHasBytes<T>) {
          std::size_t bytes = 0;
          for (const T& x : batch) bytes += x.size();
          slot_.bytes_out += bytes;
          if constexpr (kIsBytes<T>) {
            held = bytes;
            position += bytes;
          } else {
            position += batch.size();
          }
        } else {
          position += batch.size();
        }
        if (held > slot_.peak_buffered) slot_.peak_buffered = held;
        slot_.items_out += batch.size();
        next_->push(batch);
        batch.clear();
      }
      if (!more) break;
    }
    if (stop.stop_requested()) throw_cancelled(slot_, position);
    next_->finish();
  }

 private:
  std::unique_ptr<Source<T>> source_;
  std::unique_ptr<Inlet<T>> next_;
  Context& ctx_;
  Slot& slot_;
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

/// Gives stage descriptors a `.named("parse")` that renames the stage in the Summary and in
/// StageError messages.
///
/// Thread safety: a value.
template <class D>
struct Named {
  std::string name;
  D&& named(std::string new_name) && {
    name = std::move(new_name);
    return static_cast<D&&>(*this);
  }
  D& named(std::string new_name) & {
    name = std::move(new_name);
    return static_cast<D&>(*this);
  }
};

void validate_marks(const FlowOptions& marks, const char* who);

}  // namespace detail

template <class R>
class Pipeline;

/// A source with zero or more stages attached: a flow of items of type `T`, not yet running.
/// Attach a stage with `flow | stage` (another Flow) and a sink with `flow | sink` (a Pipeline).
/// Made by `from()`, `read_file()`, `read_fd()`, `net::Connection::readable()`.
///
///     auto flow = crew::stream::from(std::vector{1, 2, 3}) | crew::stream::map(square);
///     auto pipeline = std::move(flow) | crew::stream::collect();
///
/// Thread safety: a value under construction; use it from one thread. Move-only.
template <class T>
class Flow {
 public:
  using value_type = T;

  /// A flow from a Source implementation (for new kinds of source).
  Flow(std::unique_ptr<detail::Source<T>> source, std::string name, FlowOptions marks = {})
      : builder_(std::make_unique<detail::SourceBuilder<T>>(std::move(source))), marks_(marks) {
    detail::validate_marks(marks_, "crew::stream::Flow");
    names_.push_back(std::move(name));
  }
  Flow(Flow&&) noexcept = default;
  Flow& operator=(Flow&&) noexcept = default;

  /// The stage names so far, source first.
  [[nodiscard]] const std::vector<std::string>& stage_names() const noexcept { return names_; }
  [[nodiscard]] const FlowOptions& marks() const noexcept { return marks_; }

  // Internal (used by operator|).
  template <class S>
  auto attach(S stage) && {
    using Out = typename S::template output<T>;
    const std::size_t index = names_.size();
    names_.push_back(stage.name);
    return Flow<Out>(
        std::make_unique<detail::StageBuilder<T, S>>(std::move(builder_), std::move(stage), index),
        std::move(names_), marks_);
  }
  template <class K>
  auto finish(K sink) && {
    using R = typename K::template result<T>;
    const std::size_t index = names_.size();
    names_.push_back(sink.name);
    return Pipeline<R>(std::move(builder_), std::move(sink), index, std::move(names_), marks_);
  }
  Flow(std::unique_ptr<detail::Builder<T>> builder, std::vector<std::string> names,
       FlowOptions marks)
      : builder_(std::move(builder)), names_(std::move(names)), marks_(marks) {}

 private:
  std::unique_ptr<detail::Builder<T>> builder_;
  std::vector<std::string> names_;
  FlowOptions marks_;
};

/// A complete pipeline — source, stages, sink — ready to run once. `R` is the sink's result type:
/// `std::vector<T>` for collect(), `std::uint64_t` for count(), void for to(), write_file(), ...
///
///     auto p = from(lines) | filter(non_empty) | count();   // in crew::stream
///     Summary s = p.run().get();    // rethrows crew::StageError, crew::Cancelled
///     std::uint64_t n = p.take();   // the sink's result
///
/// The stages run on one thread the pipeline starts (named `crew-stream`), one batch at a time;
/// parallel stages hand items to their ThreadPool. The Future settles only after every stage has
/// been torn down (a failed write_file has removed its temporary file, parallel tasks have
/// returned). The destructor waits for a running pipeline.
///
/// Thread safety: use one Pipeline object from one thread; the stages' own callables run on the
/// pipeline thread (parallel stages: on pool threads). The sink's writes happen-before the
/// Future becomes ready.
template <class R>
class Pipeline {
 public:
  using result_type = R;

  template <class T, class K>
  Pipeline(std::unique_ptr<detail::Builder<T>> prev, K sink, std::size_t index,
           std::vector<std::string> names, FlowOptions marks)
      : box_(std::make_unique<detail::ResultBox<detail::BoxType<R>>>()),
        names_(std::move(names)),
        marks_(marks) {
    builder_ = std::make_unique<detail::SinkBuilder<T, K, detail::BoxType<R>>>(
        std::move(prev), std::move(sink), index, box_.get());
  }
  Pipeline(Pipeline&&) noexcept = default;
  /// Waits for a running pipeline first.
  Pipeline& operator=(Pipeline&& other) noexcept {
    if (this != &other) {
      if (thread_.joinable()) thread_.join();
      builder_ = std::move(other.builder_);
      box_ = std::move(other.box_);
      names_ = std::move(other.names_);
      marks_ = other.marks_;
      thread_ = std::move(other.thread_);
    }
    return *this;
  }
  /// Waits for a running pipeline (the stop token passed to run() is the way to cut it short).
  ~Pipeline() = default;

  /// Starts the pipeline on its own thread. The Future resolves to the Summary, or rejects with
  /// crew::StageError (a stage threw; the source was stopped) or crew::Cancelled. Throws
  /// std::logic_error when called a second time: a pipeline runs once.
  Future<Summary> run() { return run(std::stop_token{}); }
  /// As run(); when `stop` fires the source stops before its next pull (within one chunk or
  /// batch) and the Future rejects with crew::Cancelled.
  Future<Summary> run(std::stop_token stop) {
    if (!builder_) {
      throw std::logic_error(
          "crew::stream::Pipeline::run: this pipeline already ran; it runs once");
    }
    return detail::start_run(std::move(builder_), names_, marks_, std::move(stop), thread_);
  }

  /// Moves the sink's result out (the vector of collect(), the count of count()). Call after
  /// run()'s Future resolved; throws std::logic_error when there is no result (not run, failed,
  /// or already taken).
  template <class U = R>
  requires(!std::is_void_v<U>) U take() {
    if (thread_.joinable()) thread_.join();
    if (!box_ || !box_->value) {
      throw std::logic_error(
          "crew::stream::Pipeline::take: no result (run() not finished successfully, or already "
          "taken)");
    }
    U out = std::move(*box_->value);
    box_->value.reset();
    return out;
  }

  /// The stage names, source first.
  [[nodiscard]] const std::vector<std::string>& stage_names() const noexcept { return names_; }

 private:
  std::unique_ptr<detail::PipelineBuilder> builder_;
  std::unique_ptr<detail::ResultBox<detail::BoxType<R>>> box_;
  std::vector<std::string> names_;
  FlowOptions marks_;
  std::jthread thread_;  // declared last: joined before the result box is destroyed
};

/// Attaches a stage: `flow | map(fn)`.
template <class T, class S>
requires detail::StageFor<S, T>
auto operator|(Flow<T>&& flow, S stage) {
  return std::move(flow).attach(std::move(stage));
}

/// Attaches a sink, completing the pipeline: `flow | collect()`.
template <class T, class K>
requires detail::SinkFor<K, T>
auto operator|(Flow<T>&& flow, K sink) {
  return std::move(flow).finish(std::move(sink));
}

/// A stage fixed to one input and one output type, built by a factory (byte stages, codecs).
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class In, class Out>
struct FixedStage : detail::Named<FixedStage<In, Out>> {
  using Factory = std::function<std::unique_ptr<detail::Inlet<In>>(
      std::unique_ptr<detail::Inlet<Out>>, detail::Slot&, const detail::Context&)>;
  Factory factory;

  template <class T>
  using output = std::enable_if_t<std::is_same_v<T, In>, Out>;
  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<Out>> next,
                                         detail::Slot& slot, const detail::Context& ctx) && {
    return factory(std::move(next), slot, ctx);
  }
};

/// A sink fixed to one input type with no result (write_file, write_fd, a socket).
///
/// Thread safety: a value describing a sink; the sink it builds runs on the pipeline thread.
template <class In>
struct FixedSink : detail::Named<FixedSink<In>> {
  using Factory =
      std::function<std::unique_ptr<detail::Inlet<In>>(detail::Slot&, const detail::Context&)>;
  Factory factory;
  static constexpr bool kIsSink = true;

  template <class T>
  using result = std::enable_if_t<std::is_same_v<T, In>, void>;
  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(detail::Slot& slot, const detail::Context& ctx,
                                         detail::ResultBox<detail::NoResult>& /*box*/) && {
    return factory(slot, ctx);
  }
};

}  // namespace stream
}  // namespace v0
}  // namespace crew
