// The skeleton every stream stage is built on: the per-stage counters (Slot), what one run's
// stages share (Context), the receiving side of a stage boundary (Inlet) and the bases of a stage
// (Node) and of a sink (SinkNode). Internal to crew::stream; <crew/stream/flow.hpp> is the API.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <crew/buffer.hpp>
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
/// Thread safety: called by the pipeline thread only (a pipeline run on an executor: by the
/// handler running it at the time).
template <class T>
class Inlet {
 public:
  /// Called once with the first error of an asynchronous sink, or null.
  using Ready = std::function<void(std::exception_ptr)>;

  Inlet() = default;
  Inlet(const Inlet&) = delete;
  Inlet& operator=(const Inlet&) = delete;
  virtual ~Inlet() = default;
  virtual void push(std::vector<T>& batch) = 0;
  virtual void finish() = 0;
  /// Calls `ready` once this stage and those after it have room again: once everything pushed so
  /// far (and after finish(), the end of input) is done with. Stages and sinks that finish their
  /// work inside push() are ready at once; a socket sink when its writes have completed, on its
  /// executor. The driver asks before it reads more, which is the backpressure of a pipeline
  /// whose sink writes asynchronously.
  virtual void when_ready(Ready ready) { ready(nullptr); }
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
  // A stage has handed on all it will before its push() returns: its room is downstream's.
  void when_ready(typename Inlet<In>::Ready ready) override { next_->when_ready(std::move(ready)); }

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
}  // namespace detail
}  // namespace stream
}  // namespace v0
}  // namespace crew
