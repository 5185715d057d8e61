#include <atomic>

#include <crew/detail/inbox.hpp>
#include <crew/errors.hpp>
#include <crew/port.hpp>

namespace crew::inline v0 {
namespace detail {

// Serialises push-style delivery: at most one drain is scheduled at a time, so callbacks run one
// after another and in order even on a multi-threaded executor.
struct Delivery {
  std::function<void(Message)> callback;
  std::function<void(std::function<void()>)> schedule;  // empty: inline delivery
  std::function<void()> on_closed;  // once, after the last message, when the channel closed
  std::weak_ptr<PortPair> pair;
  int side = 0;
  std::atomic<bool> scheduled{false};
  std::atomic<bool> closed_fired{false};
};

struct PortPair {
  explicit PortPair(std::size_t high_water_mark)
      : inbox{Inbox<Message>(high_water_mark), Inbox<Message>(high_water_mark)} {}
  Inbox<Message> inbox[2];  // inbox[s] holds what side s receives
};

namespace {
void drain(const std::shared_ptr<Delivery>& d);

void request_drain(const std::shared_ptr<Delivery>& d) {
  if (d->scheduled.exchange(true, std::memory_order_acq_rel)) return;  // one already pending
  if (d->schedule) {
    try {
      d->schedule([d] { drain(d); });
    } catch (...) {
      d->scheduled.store(false, std::memory_order_release);
      throw;
    }
  } else {
    drain(d);
  }
}

void drain(const std::shared_ptr<Delivery>& d) {
  auto pair = d->pair.lock();
  if (!pair) return;
  Inbox<Message>& inbox = pair->inbox[d->side];
  struct Rearm {
    const std::shared_ptr<Delivery>& d;
    Inbox<Message>& inbox;
    ~Rearm() {
      d->scheduled.store(false, std::memory_order_release);
      // A message that arrived after our last pop found the flag set and scheduled nothing.
      if (inbox.size() != 0) {
        try {
          request_drain(d);
        } catch (...) {  // the executor refused (closed): the messages stay receivable
        }
      }
    }
  } rearm{d, inbox};
  while (auto m = inbox.try_pop()) d->callback(std::move(*m));
  if (d->on_closed && inbox.closed() && inbox.size() == 0 &&
      !d->closed_fired.exchange(true, std::memory_order_acq_rel)) {
    d->on_closed();
  }
}
}  // namespace
}  // namespace detail

MessageChannel::MessageChannel(PortOptions options) {
  auto pair = std::make_shared<detail::PortPair>(options.high_water_mark);
  port1 = MessagePort(pair, 0);
  port2 = MessagePort(std::move(pair), 1);
}

MessagePort& MessagePort::operator=(MessagePort&& other) noexcept {
  if (this != &other) {
    clear_on_message();
    close();
    pair_ = std::move(other.pair_);
    side_ = other.side_;
  }
  return *this;
}

// This end's own delivery goes first: its executor may already be gone, and nothing is left to
// deliver to. The other end's delivery still learns of the close.
MessagePort::~MessagePort() {
  clear_on_message();
  close();
}

namespace {
void check_postable(const Message& m) {
  if (m.contains_detached_buffer()) {
    throw BadArguments(
        "crew::MessagePort::post: the message holds a detached Buffer (its bytes were already "
        "moved to another message or port); post the Buffer that now owns them");
  }
}
}  // namespace

bool MessagePort::post(Message&& message) {
  if (!pair_) return false;
  check_postable(message);
  return pair_->inbox[1 - side_].push(message, false) == detail::Inbox<Message>::Push::ok;
}

bool MessagePort::post_wait(Message&& message) {
  if (!pair_) return false;
  check_postable(message);
  return pair_->inbox[1 - side_].push(message, true) == detail::Inbox<Message>::Push::ok;
}

std::optional<Message> MessagePort::receive() {
  if (!pair_) return std::nullopt;
  return pair_->inbox[side_].pop(std::nullopt);
}

std::optional<Message> MessagePort::receive_until(std::chrono::steady_clock::time_point deadline) {
  if (!pair_) return std::nullopt;
  return pair_->inbox[side_].pop(deadline);
}

std::optional<Message> MessagePort::try_receive() {
  if (!pair_) return std::nullopt;
  return pair_->inbox[side_].try_pop();
}

void MessagePort::close() {
  if (!pair_) return;
  pair_->inbox[0].close();
  pair_->inbox[1].close();
}

bool MessagePort::closed() const {
  return !pair_ || pair_->inbox[side_].closed();
}

std::size_t MessagePort::pending() const {
  return pair_ ? pair_->inbox[side_].size() : 0;
}

void MessagePort::set_delivery(std::function<void(Message)> callback,
                               std::function<void(std::function<void()>)> schedule,
                               std::function<void()> on_closed) {
  if (!pair_) return;
  auto d = std::make_shared<detail::Delivery>();
  d->callback = std::move(callback);
  d->schedule = std::move(schedule);
  d->on_closed = std::move(on_closed);
  d->pair = pair_;
  d->side = side_;
  pair_->inbox[side_].set_listener([d] {
    try {
      detail::request_drain(d);
    } catch (...) {  // the executor refused (closed): the message stays receivable
    }
  });
}

void MessagePort::on_message_inline(std::function<void(Message)> callback) {
  set_delivery(std::move(callback), {});
}

void MessagePort::clear_on_message() {
  if (pair_) pair_->inbox[side_].set_listener({});
}

}  // namespace crew::inline v0
