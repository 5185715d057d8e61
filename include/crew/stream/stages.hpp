// crew::stream sources, stages and sinks for typed items: from(), map, filter, flat_map, batch,
// tap, parallel_map, to, collect, count.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <crew/future.hpp>
#include <crew/message.hpp>
#include <crew/pool.hpp>
#include <crew/port.hpp>
#include <crew/stream/flow.hpp>

namespace crew {
inline namespace v0 {
namespace stream {

namespace detail {

template <class R>
class RangeSource final : public Source<std::ranges::range_value_t<R>> {
 public:
  using T = std::ranges::range_value_t<R>;
  explicit RangeSource(R range) : range_(std::move(range)) {}
  bool pull(std::vector<T>& out, std::size_t max, const std::stop_token& /*stop*/) override {
    if (!started_) {
      it_.emplace(std::ranges::begin(range_));
      started_ = true;
    }
    auto& it = *it_;
    const auto last = std::ranges::end(range_);
    for (std::size_t n = 0; n < max && it != last; ++n, ++it) {
      if constexpr (std::ranges::view<R> ||
                    !std::is_lvalue_reference_v<std::ranges::range_reference_t<R>>) {
        out.push_back(T(*it));  // a view's elements belong to someone else: copy them
      } else {
        out.push_back(std::move(*it));  // the flow owns this container and reads it once
      }
    }
    return it != last;
  }

 private:
  R range_;
  std::optional<std::ranges::iterator_t<R>> it_;
  bool started_ = false;
};

template <class G, class T>
class GeneratorSource final : public Source<T> {
 public:
  explicit GeneratorSource(G generator) : generator_(std::move(generator)) {}
  bool pull(std::vector<T>& out, std::size_t max, const std::stop_token& /*stop*/) override {
    for (std::size_t n = 0; n < max; ++n) {
      std::optional<T> item = generator_();
      if (!item) return false;
      out.push_back(std::move(*item));
    }
    return true;
  }

 private:
  G generator_;
};

class PortSource final : public Source<Message> {
 public:
  explicit PortSource(MessagePort port) : port_(std::move(port)) {}
  bool pull(std::vector<Message>& out, std::size_t max, const std::stop_token& stop) override;

 private:
  MessagePort port_;
};

template <class T>
struct IsOptional : std::false_type {};
template <class T>
struct IsOptional<std::optional<T>> : std::true_type {};

}  // namespace detail

/// A flow over the elements of a range, in order. The range is stored in the flow (moved, or
/// copied from an lvalue) and its elements are moved out as they flow, so move-only items
/// (crew::Buffer) work. A view (`std::views::all(v)`, a `std::span`) is iterated without
/// copying the container, its elements copied; the container must then outlive the run.
///
///     auto p = crew::stream::from(std::views::iota(0, 1000)) | crew::stream::count();
template <std::ranges::input_range R>
requires(!std::same_as<std::remove_cvref_t<R>, MessagePort>) auto from(R&& range,
                                                                       FlowOptions marks = {}) {
  using Stored = std::remove_cvref_t<R>;
  using T = std::ranges::range_value_t<Stored>;
  return Flow<T>(std::make_unique<detail::RangeSource<Stored>>(Stored(std::forward<R>(range))),
                 "from", marks);
}

/// A flow of what `generator()` returns until it returns an empty optional.
///
///     int i = 0;
///     auto flow = crew::stream::from([&]() -> std::optional<int> {
///       if (i == 10) return std::nullopt;
///       return i++;
///     });
template <class G>
requires std::invocable<G&> && detail::IsOptional<std::invoke_result_t<G&>>::value auto from(
    G generator, FlowOptions marks = {}) {
  using T = typename std::invoke_result_t<G&>::value_type;
  return Flow<T>(std::make_unique<detail::GeneratorSource<G, T>>(std::move(generator)), "from",
                 marks);
}

/// A flow of the crew::Message items arriving at `port`, until the channel is closed and
/// drained.
Flow<Message> from(MessagePort port, FlowOptions marks = {});

// ------------------------------------------------------------------------------------------------
// Stage descriptors. Each is a small value returned by a function below; the stage itself is
// built when the pipeline runs.

namespace detail {

// The node map, filter, flat_map and tap share: Step::apply(fn, x, emit) does one item's work and
// hands what it makes to `emit`. The stage's position moves past an item once its work is done,
// so an exception fails the stage at the item that threw.
template <class T, class Out, class Fn, class Step>
class EachNode final : public Node<T, Out> {
 public:
  EachNode(Fn fn, std::unique_ptr<Inlet<Out>> next, Slot& slot, const Context& ctx)
      : Node<T, Out>(std::move(next), slot, ctx), fn_(std::move(fn)) {}
  void push(std::vector<T>& batch) override {
    this->begin(batch);
    std::uint64_t at = this->position_;
    try {
      for (T& x : batch) {
        const std::uint64_t w = this->weight(x);
        Step::apply(fn_, x, [this](Out&& y) { this->emit(std::move(y)); });
        at += w;
      }
    } catch (...) {
      this->fail(at);
    }
    this->position_ = at;
    this->end();
  }
  void finish() override { this->end_of_input(); }

 private:
  Fn fn_;
};

// One item's work in each of those stages.
struct MapStep {
  template <class Fn, class T, class Emit>
  static void apply(Fn& fn, T& x, Emit&& emit) {
    emit(std::invoke(fn, std::move(x)));
  }
};

struct FilterStep {
  template <class Pred, class T, class Emit>
  static void apply(Pred& pred, T& x, Emit&& emit) {
    if (std::invoke(pred, std::as_const(x))) emit(std::move(x));
  }
};

struct FlatMapStep {
  template <class Fn, class T, class Emit>
  static void apply(Fn& fn, T& x, Emit&& emit) {
    auto r = std::invoke(fn, std::move(x));
    for (auto&& y : r) emit(std::ranges::range_value_t<decltype(r)>(std::move(y)));
  }
};

struct TapStep {
  template <class Fn, class T, class Emit>
  static void apply(Fn& fn, T& x, Emit&& emit) {
    std::invoke(fn, std::as_const(x));
    emit(std::move(x));
  }
};

}  // namespace detail

/// Returned by map(fn): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class Fn>
struct MapStage : detail::Named<MapStage<Fn>> {
  Fn fn;
  template <class T>
  using output = std::decay_t<std::invoke_result_t<Fn&, T&&>>;

  template <class T>
  using Node = detail::EachNode<T, output<T>, Fn, detail::MapStep>;

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<output<T>>> next,
                                         detail::Slot& slot, const detail::Context& ctx) && {
    static_assert(!std::is_void_v<output<T>>, "crew::stream::map(fn): fn must return a value");
    return std::make_unique<Node<T>>(std::move(fn), std::move(next), slot, ctx);
  }
};

/// Each item `x` becomes `fn(std::move(x))`.
template <class Fn>
MapStage<std::decay_t<Fn>> map(Fn&& fn) {
  MapStage<std::decay_t<Fn>> s{{"map"}, std::forward<Fn>(fn)};
  return s;
}

/// Returned by filter(pred): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class Pred>
struct FilterStage : detail::Named<FilterStage<Pred>> {
  Pred pred;
  template <class T>
  using output = T;

  template <class T>
  using Node = detail::EachNode<T, output<T>, Pred, detail::FilterStep>;

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<T>> next, detail::Slot& slot,
                                         const detail::Context& ctx) && {
    return std::make_unique<Node<T>>(std::move(pred), std::move(next), slot, ctx);
  }
};

/// Keeps the items for which `pred(item)` is true.
template <class Pred>
FilterStage<std::decay_t<Pred>> filter(Pred&& pred) {
  FilterStage<std::decay_t<Pred>> s{{"filter"}, std::forward<Pred>(pred)};
  return s;
}

/// Returned by flat_map(fn): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class Fn>
struct FlatMapStage : detail::Named<FlatMapStage<Fn>> {
  Fn fn;
  template <class T>
  using range = std::decay_t<std::invoke_result_t<Fn&, T&&>>;
  template <class T>
  using output = std::ranges::range_value_t<range<T>>;

  template <class T>
  using Node = detail::EachNode<T, output<T>, Fn, detail::FlatMapStep>;

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<output<T>>> next,
                                         detail::Slot& slot, const detail::Context& ctx) && {
    return std::make_unique<Node<T>>(std::move(fn), std::move(next), slot, ctx);
  }
};

/// Each item becomes the elements of the range `fn(std::move(item))` returns (zero or more),
/// handed on in mark-sized batches however many there are.
template <class Fn>
FlatMapStage<std::decay_t<Fn>> flat_map(Fn&& fn) {
  FlatMapStage<std::decay_t<Fn>> s{{"flat_map"}, std::forward<Fn>(fn)};
  return s;
}

/// Returned by tap(fn): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class Fn>
struct TapStage : detail::Named<TapStage<Fn>> {
  Fn fn;
  template <class T>
  using output = T;

  template <class T>
  using Node = detail::EachNode<T, output<T>, Fn, detail::TapStep>;

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<T>> next, detail::Slot& slot,
                                         const detail::Context& ctx) && {
    return std::make_unique<Node<T>>(std::move(fn), std::move(next), slot, ctx);
  }
};

/// Calls `fn(item)` (a const reference) for each item and passes the item on unchanged.
template <class Fn>
TapStage<std::decay_t<Fn>> tap(Fn&& fn) {
  TapStage<std::decay_t<Fn>> s{{"tap"}, std::forward<Fn>(fn)};
  return s;
}

/// Returned by batch(n): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
struct BatchStage : detail::Named<BatchStage> {
  std::size_t size = 0;
  template <class T>
  using output = std::vector<T>;

  template <class T>
  class Node final : public detail::Node<T, std::vector<T>> {
   public:
    Node(std::size_t n, std::unique_ptr<detail::Inlet<std::vector<T>>> next, detail::Slot& slot,
         const detail::Context& ctx)
        : detail::Node<T, std::vector<T>>(std::move(next), slot, ctx), n_(n) {
      current_.reserve(n_);
    }
    void push(std::vector<T>& batch) override {
      this->begin(batch);
      for (T& x : batch) {
        current_.push_back(std::move(x));
        if (current_.size() == n_) {
          this->emit(std::move(current_));
          current_ = {};
          current_.reserve(n_);
        }
      }
      this->position_ += batch.size();
      this->end();
    }
    void finish() override {
      if (!current_.empty()) {
        this->start_ = detail::ticks();
        this->emit(std::move(current_));
        this->slot_.busy_ticks += detail::ticks() - this->start_;
      }
      this->end_of_input();
    }

   private:
    std::size_t n_;
    std::vector<T> current_;
  };

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<std::vector<T>>> next,
                                         detail::Slot& slot, const detail::Context& ctx) && {
    return std::make_unique<Node<T>>(size, std::move(next), slot, ctx);
  }
};

/// Groups items into vectors of `n` (the last one may be shorter). The stage holds up to `n - 1`
/// items while it fills a group. Throws std::invalid_argument when `n` is 0.
BatchStage batch(std::size_t n);

/// Options of parallel_map().
struct ParallelOptions {
  /// Deliver results in input order (a slow item holds back the ones after it); false delivers
  /// each as soon as it is done.
  bool ordered = true;
  /// Most items on the pool at once (running, queued, done and waiting to be handed on, or
  /// gathered into a group not yet submitted). Default: twice the pool's thread count times
  /// `grain`, at least 2. 0 is an error, and so is a value below `grain`.
  std::optional<std::size_t> max_in_flight{};
  /// Items per pool task. Each task costs about 0.2–0.4 µs; for a cheap `fn` give each task
  /// many items (64, say) so that cost is shared. A group is submitted once full, or at the end
  /// of the input. Must be >= 1.
  std::size_t grain = 1;
};

namespace detail {
void validate_parallel(const ParallelOptions& options, const char* who);
std::size_t default_in_flight(const ThreadPool& pool) noexcept;

// Results of unordered tasks, in completion order.
template <class U>
class Completions {
 public:
  // Notifies under the lock: once the consumer can see the last result it may destroy this
  // object, so the producer must be done with it by the time the lock is released.
  void add(std::uint64_t index, Future<U> done) {
    std::lock_guard lock(mutex_);
    ready_.emplace_back(index, std::move(done));
    cv_.notify_one();
  }
  std::pair<std::uint64_t, Future<U>> take() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !ready_.empty(); });
    auto out = std::move(ready_.front());
    ready_.pop_front();
    return out;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::pair<std::uint64_t, Future<U>>> ready_;
};
}  // namespace detail

/// Returned by parallel_map(pool, fn, options).
///
/// Thread safety: a value describing a stage; at run time `fn` is called concurrently on pool
/// threads, and the results are collected on the pipeline thread.
template <class Fn>
struct ParallelMapStage : detail::Named<ParallelMapStage<Fn>> {
  ThreadPool* pool = nullptr;
  Fn fn;
  ParallelOptions options;
  template <class T>
  using output = std::decay_t<std::invoke_result_t<const Fn&, T&&>>;

  template <class T>
  class Node final : public detail::Node<T, output<T>> {
    using U = output<T>;
    // What one task returns: the results of its group up to the first failure, and the failure.
    struct Group {
      std::vector<U> values;
      std::exception_ptr error;
      std::size_t size = 0;  // items submitted in the group
    };

   public:
    Node(ThreadPool& pool, Fn fn, ParallelOptions options, std::unique_ptr<detail::Inlet<U>> next,
         detail::Slot& slot, const detail::Context& ctx)
        : detail::Node<T, U>(std::move(next), slot, ctx),
          pool_(pool),
          fn_(std::move(fn)),
          ordered_(options.ordered),
          grain_(options.grain),
          max_(options.max_in_flight ? *options.max_in_flight
                                     : detail::default_in_flight(pool) * options.grain) {
      pending_.reserve(grain_);
    }
    // Tasks reference fn_ and the completion list: wait for every one of them.
    ~Node() override {
      for (auto& entry : in_order_) entry.second.wait();
      for (; outstanding_ > 0; --outstanding_) (void)done_.take();
    }
    void push(std::vector<T>& batch) override {
      this->begin(batch);
      for (T& x : batch) {
        while (items_in_flight_ + pending_.size() >= max_) deliver_one();
        pending_.push_back(std::move(x));
        if (pending_.size() == grain_) submit();
      }
      this->end();
    }
    void finish() override {
      this->start_ = detail::ticks();
      if (!pending_.empty()) submit();
      while (groups_in_flight() > 0) deliver_one();
      this->slot_.busy_ticks += detail::ticks() - this->start_;
      this->end_of_input();
    }

   private:
    [[nodiscard]] std::size_t groups_in_flight() const noexcept {
      return ordered_ ? in_order_.size() : outstanding_;
    }
    void submit() {
      const std::uint64_t first = this->position_;
      const std::size_t n = pending_.size();
      this->position_ += n;
      items_in_flight_ += n;
      const Fn* fn = &fn_;
      Future<Group> f = pool_.run([fn, items = std::move(pending_)]() mutable {
        Group g;
        g.size = items.size();
        g.values.reserve(items.size());
        // The catch block ends inside capture(), before the result is published.
        g.error = crew::detail::capture([&] {
          for (T& item : items) g.values.push_back(std::invoke(*fn, std::move(item)));
        });
        return g;
      });
      pending_ = {};
      pending_.reserve(grain_);
      if (ordered_) {
        in_order_.emplace_back(first, std::move(f));
      } else {
        ++outstanding_;
        detail::Completions<Group>* done = &done_;
        (void)f.then(
            [done, first](Future<Group> settled) { done->add(first, std::move(settled)); });
      }
      if (items_in_flight_ > this->slot_.peak_in_flight) {
        this->slot_.peak_in_flight = items_in_flight_;
      }
    }
    // Waits for the next group (the oldest one when ordered) and emits its results; with nothing
    // on the pool, submits the group being gathered first.
    void deliver_one() {
      if (groups_in_flight() == 0) {
        submit();
        return;
      }
      std::pair<std::uint64_t, Future<Group>> next;
      if (ordered_) {
        next = std::move(in_order_.front());
        in_order_.pop_front();
      } else {
        next = done_.take();
        --outstanding_;
      }
      Group g;
      try {
        g = next.second.get();
      } catch (...) {
        this->fail(next.first);  // the pool refused or dropped the task
      }
      items_in_flight_ -= g.size;
      for (U& v : g.values) this->emit(std::move(v));
      if (g.error) {
        const std::uint64_t at = next.first + g.values.size();
        try {
          std::rethrow_exception(g.error);
        } catch (...) {
          this->fail(at);
        }
      }
    }

    ThreadPool& pool_;
    Fn fn_;
    bool ordered_;
    std::size_t grain_;
    std::size_t max_;
    std::vector<T> pending_;
    std::size_t items_in_flight_ = 0;
    std::deque<std::pair<std::uint64_t, Future<Group>>> in_order_;
    detail::Completions<Group> done_;
    std::size_t outstanding_ = 0;
  };

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(std::unique_ptr<detail::Inlet<output<T>>> next,
                                         detail::Slot& slot, const detail::Context& ctx) && {
    static_assert(!std::is_void_v<output<T>>,
                  "crew::stream::parallel_map(fn): fn must return a value");
    return std::make_unique<Node<T>>(*pool, std::move(fn), options, std::move(next), slot, ctx);
  }
};

/// Each item `x` becomes `fn(std::move(x))`, computed on `pool` with up to
/// `options.max_in_flight` items at once; in input order unless `.ordered = false`. `fn` is
/// called concurrently from several pool threads, `options.grain` items per task. The pool must
/// outlive the run. When `fn` throws, the stage fails at the failing item's index and nothing
/// after that item is handed on. Throws
/// std::invalid_argument when max_in_flight or grain is 0, or max_in_flight < grain.
///
///     crew::ThreadPool pool;
///     auto p = from(files) | parallel_map(pool, checksum, {.max_in_flight = 8}) | collect();
template <class Fn>
ParallelMapStage<std::decay_t<Fn>> parallel_map(ThreadPool& pool, Fn&& fn,
                                                ParallelOptions options = {}) {
  detail::validate_parallel(options, "crew::stream::parallel_map");
  ParallelMapStage<std::decay_t<Fn>> s{{"parallel_map"}, &pool, std::forward<Fn>(fn), options};
  return s;
}

// ------------------------------------------------------------------------------------------------
// Sinks.

/// Returned by to(fn): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
template <class Fn>
struct ToSink : detail::Named<ToSink<Fn>> {
  Fn fn;
  static constexpr bool kIsSink = true;
  template <class T>
  using result = void;

  template <class T>
  class Node final : public detail::SinkNode<T> {
   public:
    Node(Fn fn, detail::Slot& slot) : detail::SinkNode<T>(slot), fn_(std::move(fn)) {}
    void push(std::vector<T>& batch) override {
      this->begin(batch);
      std::uint64_t at = this->position_;
      try {
        for (T& x : batch) {
          const std::uint64_t w = weight(x);
          std::invoke(fn_, std::move(x));
          at += w;
        }
      } catch (...) {
        this->fail(at);
      }
      this->position_ = at;
      this->end();
    }
    void finish() override {}

   private:
    static std::uint64_t weight(const T& x) noexcept {
      if constexpr (detail::kIsBytes<T>) {
        return x.size();
      } else {
        (void)x;
        return 1;
      }
    }
    Fn fn_;
  };

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(detail::Slot& slot, const detail::Context& /*ctx*/,
                                         detail::ResultBox<detail::NoResult>& /*box*/) && {
    return std::make_unique<Node<T>>(std::move(fn), slot);
  }
};

/// Ends the pipeline with `fn(std::move(item))` for each item.
template <class Fn>
ToSink<std::decay_t<Fn>> to(Fn&& fn) {
  ToSink<std::decay_t<Fn>> s{{"to"}, std::forward<Fn>(fn)};
  return s;
}

/// Returned by collect(): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
struct CollectSink : detail::Named<CollectSink> {
  static constexpr bool kIsSink = true;
  template <class T>
  using result = std::vector<T>;

  template <class T>
  class Node final : public detail::SinkNode<T> {
   public:
    Node(detail::Slot& slot, detail::ResultBox<std::vector<T>>& box)
        : detail::SinkNode<T>(slot), box_(box) {}
    void push(std::vector<T>& batch) override {
      this->begin(batch);
      items_.insert(items_.end(), std::make_move_iterator(batch.begin()),
                    std::make_move_iterator(batch.end()));
      this->end();
    }
    void finish() override { box_.value.emplace(std::move(items_)); }

   private:
    detail::ResultBox<std::vector<T>>& box_;
    std::vector<T> items_;
  };

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(detail::Slot& slot, const detail::Context& /*ctx*/,
                                         detail::ResultBox<std::vector<T>>& box) && {
    return std::make_unique<Node<T>>(slot, box);
  }
};

/// Ends the pipeline by collecting every item into a std::vector, returned by
/// `Pipeline::take()`. (It holds everything: the one sink whose memory is not bounded.)
inline CollectSink collect() {
  CollectSink s{{"collect"}};
  return s;
}

/// Returned by count(): the descriptor of that stage, built when the pipeline runs.
///
/// Thread safety: a value describing a stage; the stage it builds runs on the pipeline thread.
struct CountSink : detail::Named<CountSink> {
  static constexpr bool kIsSink = true;
  template <class T>
  using result = std::uint64_t;

  template <class T>
  class Node final : public detail::SinkNode<T> {
   public:
    Node(detail::Slot& slot, detail::ResultBox<std::uint64_t>& box)
        : detail::SinkNode<T>(slot), box_(box) {}
    void push(std::vector<T>& batch) override {
      this->begin(batch);
      n_ += batch.size();
      this->end();
    }
    void finish() override { box_.value.emplace(n_); }

   private:
    detail::ResultBox<std::uint64_t>& box_;
    std::uint64_t n_ = 0;
  };

  template <class T>
  std::unique_ptr<detail::Inlet<T>> make(detail::Slot& slot, const detail::Context& /*ctx*/,
                                         detail::ResultBox<std::uint64_t>& box) && {
    return std::make_unique<Node<T>>(slot, box);
  }
};

/// Ends the pipeline by counting the items; the count is returned by `Pipeline::take()`.
inline CountSink count() {
  CountSink s{{"count"}};
  return s;
}

}  // namespace stream
}  // namespace v0
}  // namespace crew
