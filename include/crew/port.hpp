// crew::MessagePort and crew::MessageChannel — Node's MessageChannel: two entangled ports; what
// one posts, the other receives. Ports can travel inside messages.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include <crew/message.hpp>

namespace crew {
inline namespace v0 {

struct PortOptions {
  /// Most messages waiting at each end; 0 means unbounded (as in Node). With a bound, post()
  /// returns false and post_wait() blocks while the receiving end is full.
  std::size_t high_water_mark = 0;
};

namespace detail {
struct PortPair;
}

/// One end of a MessageChannel. Messages posted on one end arrive at the other, in order.
/// Closing either end closes both: further posts return false, messages already sent can still
/// be received, and blocked receivers wake. Destroying a port closes it.
///
///     crew::MessageChannel ch;
///     ch.port1.post(crew::Message("ping"));
///     auto m = ch.port2.receive();             // "ping"
///     worker_port.post(std::move(ch.port2));    // hand one end to someone else
///
/// Thread safety: any member may be called from any thread; one port may be used by several
/// threads at once. A post happens-before the receive (or callback) that delivers it.
class MessagePort {
 public:
  /// A port connected to nothing: post() returns false and receive() returns empty at once.
  MessagePort() noexcept = default;
  MessagePort(MessagePort&&) noexcept = default;
  MessagePort& operator=(MessagePort&& other) noexcept;
  MessagePort(const MessagePort&) = delete;
  MessagePort& operator=(const MessagePort&) = delete;
  ~MessagePort();

  /// Sends `message` to the other end. False, leaving `message` untouched, when the channel is
  /// closed or the other end is at its high-water mark. Throws crew::BadArguments when the message
  /// holds a detached Buffer (one already moved elsewhere).
  bool post(Message&& message);
  /// As post(), but waits while the other end is full; false once the channel is closed.
  bool post_wait(Message&& message);

  /// The next message; waits for one. Empty once the channel is closed and drained.
  std::optional<Message> receive();
  /// As receive(), giving up (empty) after `timeout`.
  template <class Rep, class Period>
  std::optional<Message> receive_for(std::chrono::duration<Rep, Period> timeout) {
    return receive_until(std::chrono::steady_clock::now() +
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  }
  /// The next message if one is waiting; never blocks (Node's receiveMessageOnPort).
  std::optional<Message> try_receive();

  /// Closes both ends. Idempotent.
  void close();
  /// True once either end was closed (or for a port connected to nothing).
  [[nodiscard]] bool closed() const;
  /// Messages waiting at this end.
  [[nodiscard]] std::size_t pending() const;

  /// Push-style delivery: `callback(message)` runs through `executor.post(...)` — an EventLoop,
  /// a ThreadPool, anything with post() — for every message, one at a time and in order, never
  /// on the posting thread. Messages already waiting are delivered too. The executor must outlive
  /// the port. Replaces any previous callback; receive() then competes with it for messages.
  template <class Executor>
  void on_message(std::function<void(Message)> callback, Executor& executor) {
    set_delivery(std::move(callback),
                 [&executor](std::function<void()> drain) { executor.post(std::move(drain)); });
  }
  /// Explicit inline delivery: `callback` runs on the posting thread, inside post().
  void on_message_inline(std::function<void(Message)> callback);
  /// Stops push-style delivery.
  void clear_on_message();

 private:
  friend class MessageChannel;
  MessagePort(std::shared_ptr<detail::PortPair> pair, int side) noexcept
      : pair_(std::move(pair)), side_(side) {}
  std::optional<Message> receive_until(std::chrono::steady_clock::time_point deadline);
  friend class Worker;
  // `on_closed` runs through the same delivery, once, after the last message of a closed channel.
  void set_delivery(std::function<void(Message)> callback,
                    std::function<void(std::function<void()>)> schedule,
                    std::function<void()> on_closed = {});

  std::shared_ptr<detail::PortPair> pair_;
  int side_ = 0;
};

/// Two entangled ports (Node's `new MessageChannel()`).
class MessageChannel {
 public:
  explicit MessageChannel(PortOptions options = {});
  MessagePort port1;
  MessagePort port2;
};

}  // namespace v0
}  // namespace crew
