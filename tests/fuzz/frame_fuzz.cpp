// libFuzzer target: the parent-side decoder of frames a worker process sends, and the reader of
// the reply ring a worker shares with its pool. Whatever bytes arrive, decoding either yields a
// frame or throws ProtocolError, and the ring reader either yields entries or says the ring is
// broken; reading a payload as a reply either succeeds or throws. Nothing else may happen (crash,
// leak, UB, unbounded allocation, reading outside the ring).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/process/detail/wire.hpp>

#include "frame.hpp"
#include "ring.hpp"

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

void decode_and_read(std::span<const std::byte> bytes) {
  try {
    auto frame = crew::detail::decode_frame(bytes, crew::detail::FdList{});
    read_reply(frame);
  } catch (const crew::detail::ProtocolError&) {
  }
}

// The input after its first byte: the ring's write position (8 bytes), then the ring's first
// bytes as a worker wrote them.
void read_ring(const std::uint8_t* data, std::size_t size) {
  using namespace crew::detail;
  static Ring ring;
  std::uint64_t head = 0;
  std::memcpy(&head, data, std::min<std::size_t>(size, 8));
  const std::size_t n = size > 8 ? std::min(size - 8, kRingBytes) : 0;
  std::memset(ring.data, 0, kRingBytes);
  if (n > 0) std::memcpy(ring.data, data + 8, n);
  ring.tail.store(0);
  ring.head.store(head);
  RingReader reader(&ring);
  std::vector<std::byte> entry;
  std::string error;
  for (int i = 0; i < 4096; ++i) {
    RingEntry kind{};
    if (reader.pop(kind, entry, error) != RingReader::Status::entry) return;
    if (kind == RingEntry::frame) decode_and_read(entry);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && data[0] == 'R') {
    read_ring(data + 1, size - 1);
    return 0;
  }
  try {
    auto frame = crew::detail::decode_frame(
        std::span(reinterpret_cast<const std::byte*>(data), size), crew::detail::FdList{});
    read_reply(frame);
  } catch (const crew::detail::ProtocolError&) {
  }
  return 0;
}
