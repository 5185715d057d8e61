// crew::BroadcastChannel — Node's BroadcastChannel: every live channel object with the same name
// receives each message posted on any of the others, once.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <crew/message.hpp>
#include <crew/port.hpp>

namespace crew {
inline namespace v0 {

namespace detail {
struct BroadcastEntry;
}

/// A subscription to a process-wide named channel. post() delivers a copy of the message to every
/// *other* live BroadcastChannel of the same name, in any thread; each receives it once, and
/// messages from one poster arrive in the order posted.
///
///     crew::BroadcastChannel news("news");        // in any number of threads
///     news.post(crew::Message("hello, everyone"));
///     while (auto m = other.receive()) ...
///
/// Messages are cloned for each subscriber, so they cannot carry a Buffer or a MessagePort (which
/// are moved, never copied): post() throws crew::BadArguments for those. A SharedBuffer is fine.
///
/// Thread safety: every member may be called from any thread.
class BroadcastChannel {
 public:
  /// Subscribes to `name`. Throws std::invalid_argument for an empty name.
  explicit BroadcastChannel(std::string name, PortOptions options = {});
  BroadcastChannel(const BroadcastChannel&) = delete;
  BroadcastChannel& operator=(const BroadcastChannel&) = delete;
  BroadcastChannel(BroadcastChannel&&) = delete;
  BroadcastChannel& operator=(BroadcastChannel&&) = delete;
  /// Unsubscribes (close()).
  ~BroadcastChannel();

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  /// Sends a copy to every other subscriber of the name; returns how many accepted it (a
  /// subscriber at its high-water mark misses it). Throws crew::BadArguments when the message
  /// holds a Buffer or a MessagePort, std::logic_error after close().
  std::size_t post(const Message& message);

  /// The next message; waits for one. Empty once closed and drained.
  std::optional<Message> receive() { return inbox_.receive(); }
  template <class Rep, class Period>
  std::optional<Message> receive_for(std::chrono::duration<Rep, Period> timeout) {
    return inbox_.receive_for(timeout);
  }
  std::optional<Message> try_receive() { return inbox_.try_receive(); }
  /// Push-style delivery through `executor` (see MessagePort::on_message).
  template <class Executor>
  void on_message(std::function<void(Message)> callback, Executor& executor) {
    inbox_.on_message(std::move(callback), executor);
  }

  /// Leaves the channel: no further messages arrive; those already here can still be received.
  void close();

 private:
  std::string name_;
  MessagePort inbox_;
  std::shared_ptr<detail::BroadcastEntry> entry_;
};

}  // namespace v0
}  // namespace crew
