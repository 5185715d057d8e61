// crew::stream::Flow and Pipeline — typed pipelines: a source, stages composed with `|`, a sink.
// The stages themselves are in <crew/stream/stages.hpp> and <crew/stream/bytes.hpp>; the
// machinery under them in <crew/stream/detail/nodes.hpp> (the stage skeleton) and
// <crew/stream/detail/drivers.hpp> (sources and what runs a pipeline).
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/future.hpp>
#include <crew/stream/detail/drivers.hpp>
#include <crew/stream/detail/nodes.hpp>
#include <crew/stream/error.hpp>
#include <crew/stream/summary.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

namespace detail {

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
  /// A flow from an AsyncSource implementation (a socket): its pipeline runs on the source's
  /// executor instead of a thread of its own.
  Flow(std::unique_ptr<detail::AsyncSource<T>> source, std::string name, FlowOptions marks = {})
      : builder_(std::make_unique<detail::AsyncSourceBuilder<T>>(std::move(source))),
        marks_(marks),
        driven_(true) {
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
        std::move(names_), marks_, driven_);
  }
  template <class K>
  auto finish(K sink) && {
    using R = typename K::template result<T>;
    const std::size_t index = names_.size();
    names_.push_back(sink.name);
    return Pipeline<R>(std::move(builder_), std::move(sink), index, std::move(names_), marks_,
                       driven_);
  }
  Flow(std::unique_ptr<detail::Builder<T>> builder, std::vector<std::string> names,
       FlowOptions marks, bool driven)
      : builder_(std::move(builder)), names_(std::move(names)), marks_(marks), driven_(driven) {}

 private:
  std::unique_ptr<detail::Builder<T>> builder_;
  std::vector<std::string> names_;
  FlowOptions marks_;
  bool driven_ = false;  // the source is an AsyncSource
};

/// A complete pipeline — source, stages, sink — ready to run once. `R` is the sink's result type:
/// `std::vector<T>` for collect(), `std::uint64_t` for count(), void for to(), write_file(), ...
///
///     auto p = from(lines) | filter(non_empty) | count();   // in crew::stream
///     Summary s = p.run().get();    // rethrows crew::StageError, crew::Cancelled
///     std::uint64_t n = p.take();   // the sink's result
///
/// The stages run on one thread the pipeline starts (named `crew-stream`), one batch at a time;
/// parallel stages hand items to their ThreadPool. A pipeline whose source is a socket
/// (`net::Connection::readable()`) starts no thread: its stages run on the socket's executor,
/// in the completions of its reads, and a read waits until the stages and the sink have room.
/// The Future settles only after every stage has been torn down (a failed write_file has
/// removed its temporary file, parallel tasks have returned). The destructor waits for a
/// running pipeline; one running on an executor keeps what it needs and is not waited for.
///
/// Thread safety: use one Pipeline object from one thread; the stages' own callables run on the
/// pipeline thread or the executor (parallel stages: on pool threads). The sink's writes
/// happen-before the Future becomes ready.
template <class R>
class Pipeline {
 public:
  using result_type = R;

  template <class T, class K>
  Pipeline(std::unique_ptr<detail::Builder<T>> prev, K sink, std::size_t index,
           std::vector<std::string> names, FlowOptions marks, bool driven)
      : box_(std::make_shared<detail::ResultBox<detail::BoxType<R>>>()),
        names_(std::move(names)),
        marks_(marks),
        driven_(driven) {
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
      driven_ = other.driven_;
      finished_ = std::move(other.finished_);
      thread_ = std::move(other.thread_);
    }
    return *this;
  }
  /// Waits for a running pipeline (the stop token passed to run() is the way to cut it short).
  ~Pipeline() = default;

  /// Starts the pipeline on its own thread (or its source's executor). The Future resolves to the
  /// Summary, or rejects with crew::StageError (a stage threw; the source was stopped) or
  /// crew::Cancelled. Throws std::logic_error when called a second time: a pipeline runs once.
  Future<Summary> run() { return run(std::stop_token{}); }
  /// As run(); when `stop` fires the source stops before its next pull (within one chunk or
  /// batch) and the Future rejects with crew::Cancelled.
  Future<Summary> run(std::stop_token stop) {
    if (!builder_) {
      throw std::logic_error(
          "crew::stream::Pipeline::run: this pipeline already ran; it runs once");
    }
    if (driven_) {
      finished_ = std::make_shared<std::atomic<bool>>(false);
      return detail::start_driven(std::move(builder_), names_, marks_, std::move(stop), box_,
                                  finished_);
    }
    return detail::start_run(std::move(builder_), names_, marks_, std::move(stop), thread_);
  }

  /// Moves the sink's result out (the vector of collect(), the count of count()). Call after
  /// run()'s Future resolved; throws std::logic_error when there is no result (not run, failed,
  /// or already taken).
  template <class U = R>
  requires(!std::is_void_v<U>) U take() {
    if (thread_.joinable()) thread_.join();
    if (finished_ && !finished_->load(std::memory_order_acquire)) {
      throw std::logic_error(
          "crew::stream::Pipeline::take: the pipeline is still running; wait for run()'s Future");
    }
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
  // Shared with a run on an executor, which outlives this object when it is dropped early.
  std::shared_ptr<detail::ResultBox<detail::BoxType<R>>> box_;
  std::vector<std::string> names_;
  FlowOptions marks_;
  bool driven_ = false;
  std::shared_ptr<std::atomic<bool>> finished_;  // a run on an executor: set once it is over
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
