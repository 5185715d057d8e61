// crew::Channel<T> — a typed, closable FIFO between threads, optionally bounded.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

#include <crew/detail/inbox.hpp>

namespace crew {
inline namespace v0 {

struct ChannelOptions {
  /// Most items waiting at once; 0 means unbounded (as Node's ports are). A bound keeps a fast
  /// producer from exhausting memory: post() then returns false and post_wait() blocks.
  std::size_t high_water_mark = 0;
};

/// A queue of `T` (any movable type) shared by every copy of the handle: any thread may post, any
/// thread may receive; each item is received once, in the order posted by each sender.
///
///     crew::Channel<Job> jobs({.high_water_mark = 1024});
///     std::jthread worker([jobs] { while (auto job = jobs.receive()) run(*job); });
///     jobs.post(Job{...});
///     jobs.close();   // the worker drains what is left, then receive() returns empty
///
/// Thread safety: all members may be called concurrently from any thread. A post happens-before
/// the receive that returns the item.
template <class T>
class Channel {
 public:
  explicit Channel(ChannelOptions options = {})
      : inbox_(std::make_shared<detail::Inbox<T>>(options.high_water_mark)) {}

  /// Queues `item`; false (item left untouched) when the channel is closed or full.
  bool post(T&& item) { return inbox_->push(item, false) == detail::Inbox<T>::Push::ok; }
  bool post(const T& item) {
    T copy(item);
    return post(std::move(copy));
  }
  /// Queues `item`, waiting while the channel is full; false (item untouched) once it is closed.
  bool post_wait(T&& item) { return inbox_->push(item, true) == detail::Inbox<T>::Push::ok; }

  /// The next item; waits for one. Empty once the channel is closed and drained.
  std::optional<T> receive() { return inbox_->pop(std::nullopt); }
  /// As receive(), giving up (empty) after `timeout`.
  template <class Rep, class Period>
  std::optional<T> receive_for(std::chrono::duration<Rep, Period> timeout) {
    return inbox_->pop(std::chrono::steady_clock::now() +
                       std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  }
  /// The next item if one is waiting; never blocks.
  std::optional<T> try_receive() { return inbox_->try_pop(); }

  /// Further posts fail; items already queued can still be received; blocked callers wake.
  void close() { inbox_->close(); }
  [[nodiscard]] bool closed() const { return inbox_->closed(); }
  /// Items waiting now.
  [[nodiscard]] std::size_t size() const { return inbox_->size(); }

 private:
  std::shared_ptr<detail::Inbox<T>> inbox_;
};

}  // namespace v0
}  // namespace crew
