// One end of the channel between a ProcessPool and a worker: the socket and two shared rings.
// Small frames without descriptors cross in a ring (no system call); the others go on the socket
// and leave a marker in the ring, so frames arrive in the order they were sent either way. The
// socket also carries wake frames (pool -> worker) for a worker asleep in it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "frame.hpp"
#include "ring.hpp"

namespace crew::inline v0::detail {

/// Thread safety: one thread at a time.
class Channel {
 public:
  /// `blocking`: whether reading the socket may wait (the worker's side); on the pool's side a
  /// frame a marker points to must already be there.
  Channel(int sock, Ring* out, Ring* in, bool blocking) noexcept
      : sock_(sock), blocking_(blocking), out_(out), in_(in) {}

  /// Sends a frame. `full`: no room in the ring or the socket for it now; nothing was sent.
  SendStatus put(FrameType type, std::uint64_t id, std::span<const std::byte> payload,
                 const FdList& fds);

  /// The next frame, if any: `would_block` when the ring is empty, `closed` when the socket
  /// closed under a marker. Throws ProtocolError when the ring or the socket breaks the protocol.
  RecvStatus get(Frame& out);

  /// Whether a frame may be waiting.
  [[nodiscard]] bool has_input() const noexcept { return !in_.empty(); }

  /// Waits in the socket once (worker side, asleep): a wake frame or a frame sent ahead of its
  /// marker returns `would_block` (look at the ring again); `closed` when the pool is gone.
  RecvStatus wait_socket();

  /// Sends a wake frame (pool side); false when the worker is gone.
  bool wake();

 private:
  RecvStatus socket_frame(Frame& out);

  int sock_;
  bool blocking_;
  RingWriter out_;
  RingReader in_;
  std::deque<Frame> ahead_;  // socket frames received before the ring showed their marker
  std::vector<std::byte> entry_;
};

}  // namespace crew::inline v0::detail
