// Message's port members live here, next to MessagePort's definition, so that message.hpp and
// message.cpp never need the complete MessagePort type.
#include <memory>

#include <crew/message.hpp>
#include <crew/port.hpp>

namespace crew::inline v0 {
namespace {
void destroy_port(MessagePort* p) noexcept {
  std::default_delete<MessagePort>()(p);
}
}  // namespace

Message::Message(MessagePort&& port)
    : value_(std::in_place_type<detail::PortHandle>,
             std::make_unique<MessagePort>(std::move(port)).release(),
             detail::PortDeleter{&destroy_port}) {}

MessagePort& Message::as_port() {
  return *port_handle();
}
const MessagePort& Message::as_port() const {
  return *port_handle();
}

MessagePort Message::take_port() {
  MessagePort out(std::move(*port_handle()));
  *this = Message();
  return out;
}

}  // namespace crew::inline v0
