#include "channel.hpp"

#include <utility>

namespace crew::inline v0::detail {

SendStatus Channel::put(FrameType type, std::uint64_t id, std::span<const std::byte> payload,
                        const FdList& fds) {
  if (fds.fds.empty() && kFrameHeader + payload.size() <= kRingEntryMax) {
    std::byte header[kFrameHeader];
    put_frame_header(header, type, id, payload.size());
    return out_.push(RingEntry::frame, header, payload) ? SendStatus::sent : SendStatus::full;
  }
  // The marker is written after the frame is on the socket, so a reader that meets the marker
  // finds the frame; room for it is made sure of first.
  if (!out_.has_room(0)) return SendStatus::full;
  const SendStatus st = send_frame(sock_, type, id, payload, fds);
  if (st == SendStatus::sent) out_.push(RingEntry::socket, {});
  return st;
}

RecvStatus Channel::get(Frame& out) {
  RingEntry kind{};
  std::string error;
  switch (in_.pop(kind, entry_, error)) {
    case RingReader::Status::empty:
      return RecvStatus::would_block;
    case RingReader::Status::broken:
      throw ProtocolError(error);
    case RingReader::Status::entry:
      break;
  }
  if (kind == RingEntry::socket) return socket_frame(out);
  out = decode_frame(entry_, FdList{});
  if (out.type == FrameType::wake) throw ProtocolError("a wake frame in the ring");
  return RecvStatus::frame;
}

RecvStatus Channel::socket_frame(Frame& out) {
  if (!ahead_.empty()) {
    out = std::move(ahead_.front());
    ahead_.pop_front();
    return RecvStatus::frame;
  }
  for (;;) {
    const RecvStatus st = recv_frame(sock_, out, blocking_);
    if (st == RecvStatus::would_block) {
      throw ProtocolError("the ring points to a frame on the socket that is not there");
    }
    if (st == RecvStatus::closed || out.type != FrameType::wake) return st;
  }
}

RecvStatus Channel::wait_socket() {
  Frame f;
  const RecvStatus st = recv_frame(sock_, f, true);
  if (st == RecvStatus::frame && f.type != FrameType::wake) ahead_.push_back(std::move(f));
  return st == RecvStatus::closed ? st : RecvStatus::would_block;
}

bool Channel::wake() {
  return send_frame(sock_, FrameType::wake, 0, {}, FdList{}) != SendStatus::gone;
}

}  // namespace crew::inline v0::detail
