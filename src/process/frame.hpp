// The wire protocol between a ProcessPool and its workers: one SOCK_SEQPACKET datagram per frame,
// a fixed header, then the msgpack payload inline, or in a sealed memfd passed with SCM_RIGHTS
// when it is too big for one datagram. Extra descriptors (memfds of Buffers) ride along.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <crew/process/detail/wire.hpp>

namespace crew::inline v0::detail {

enum class FrameType : std::uint8_t {
  ready = 1,     // worker -> parent, id = pid
  request = 2,   // parent -> worker, payload [name, args]
  result = 3,    // worker -> parent, payload = the value
  error = 4,     // worker -> parent, payload [kind, type, message]
  shutdown = 5,  // parent -> worker
  wake = 6,      // parent -> worker, on the socket only: look at the ring again
};

enum class ErrorKind : std::uint8_t {
  remote = 1,
  bad_arguments = 2,
  out_of_memory = 3,
  unknown_task = 4,
};

inline constexpr std::uint32_t kFrameMagic = 0x31575243;  // "CRW1"
inline constexpr std::size_t kFrameHeader = 24;
/// Largest payload sent inline; bigger ones go through a memfd.
inline constexpr std::size_t kInlinePayloadMax = 60 * 1024;
/// Largest payload accepted at all (and most descriptors per frame).
inline constexpr std::uint64_t kPayloadMax = std::uint64_t{4} << 30;
inline constexpr std::size_t kMaxFds = 64;

/// A malformed frame: the peer is broken or not a crew worker.
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thread safety: a value; one thread at a time.
struct Frame {
  FrameType type{};
  std::uint64_t id = 0;
  std::vector<std::byte> payload;
  FdList fds;  // Buffer memfds (the payload memfd, if any, is already consumed)
};

/// Writes a frame header for an inline payload without descriptors (a frame in the ring).
void put_frame_header(std::byte (&header)[kFrameHeader], FrameType type, std::uint64_t id,
                      std::uint64_t payload_size) noexcept;

/// Parses one received datagram and the descriptors that came with it (taken over: closed on
/// error). Throws ProtocolError naming what is wrong. Never trusts a length it has not checked.
Frame decode_frame(std::span<const std::byte> datagram, FdList received);

enum class SendStatus { sent, gone, full };
/// Sends one frame; returns `gone` when the peer is gone (EPIPE/ECONNRESET) and, on a
/// non-blocking socket, `full` when the socket buffer has no room for it (nothing was sent).
/// `fds` stay owned by the caller. Throws std::system_error on other failures.
SendStatus send_frame(int socket, FrameType type, std::uint64_t id,
                      std::span<const std::byte> payload, const FdList& fds);

enum class RecvStatus { frame, would_block, closed };
/// Receives one datagram (non-blocking when `blocking` is false) and decodes it into `out`.
RecvStatus recv_frame(int socket, Frame& out, bool blocking);

/// Parses an error payload [kind, type, message]; throws ProtocolError if malformed.
struct ErrorReply {
  ErrorKind kind{};
  std::string type;
  std::string message;
};
ErrorReply parse_error(std::span<const std::byte> payload);

/// Unpacks a msgpack payload into `zone` (which owns what the object points to) with limits
/// that keep a hostile peer from exhausting memory; the payload must hold exactly one value.
msgpack::object unpack_payload(std::span<const std::byte> payload, msgpack::zone& zone);

}  // namespace crew::inline v0::detail
