// libFuzzer target: the parent-side decoder of frames a worker process sends. Whatever bytes
// arrive, decoding either yields a frame or throws ProtocolError; reading the payload as a reply
// either succeeds or throws. Nothing else may happen (crash, leak, UB, unbounded allocation).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/process/detail/wire.hpp>

#include "frame.hpp"

namespace {

void read_reply(crew::detail::Frame& f) {
  using crew::detail::FrameType;
  switch (f.type) {
    case FrameType::error:
      (void)crew::detail::parse_error(f.payload);
      break;
    case FrameType::result:
    case FrameType::request: {
      msgpack::zone zone;
      const msgpack::object o = crew::detail::unpack_payload(f.payload, zone);
      crew::detail::WireScope scope(&f.fds, nullptr);
      // The shapes a parent converts results into.
      try {
        (void)o.as<std::vector<std::string>>();
      } catch (const msgpack::type_error&) {
      }
      try {
        (void)o.as<crew::Buffer>();
      } catch (const msgpack::type_error&) {
      }
      try {
        (void)o.as<long>();
      } catch (const msgpack::type_error&) {
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto frame = crew::detail::decode_frame(
        std::span(reinterpret_cast<const std::byte*>(data), size), crew::detail::FdList{});
    read_reply(frame);
  } catch (const crew::detail::ProtocolError&) {
  }
  return 0;
}
