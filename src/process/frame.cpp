#include "frame.hpp"

#include <cerrno>
#include <cstring>
#include <memory>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace crew::inline v0::detail {
namespace {

void put_u32(std::byte* p, std::uint32_t v) {
  std::memcpy(p, &v, 4);
}
void put_u64(std::byte* p, std::uint64_t v) {
  std::memcpy(p, &v, 8);
}
std::uint32_t get_u32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
std::uint64_t get_u64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

constexpr std::uint8_t kFlagPayloadInMemfd = 1;

// Reads a sealed payload memfd fully into memory (the caller checked its size).
std::vector<std::byte> read_payload_fd(int fd, std::uint64_t length) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    throw ProtocolError("payload descriptor is not a sealed memfd");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != length) {
    throw ProtocolError(fmt::format("payload memfd holds {} bytes, the header says {}",
                                    static_cast<long long>(st.st_size), length));
  }
  std::vector<std::byte> out(length);
  std::size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, out.data() + done, length - done, static_cast<off_t>(done));
    if (n <= 0) throw ProtocolError("payload memfd could not be read");
    done += static_cast<std::size_t>(n);
  }
  return out;
}

int make_payload_fd(std::span<const std::byte> payload) {
  const int fd = ::memfd_create("crew-frame", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "crew: memfd_create");
  std::size_t done = 0;
  while (done < payload.size()) {
    const ssize_t n = ::write(fd, payload.data() + done, payload.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw std::system_error(err, std::generic_category(), "crew: writing a payload memfd");
    }
    done += static_cast<std::size_t>(n);
  }
  ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
  return fd;
}

}  // namespace

Frame decode_frame(std::span<const std::byte> datagram, FdList received) {
  if (datagram.size() < kFrameHeader) {
    throw ProtocolError(fmt::format("frame of {} bytes is shorter than its {}-byte header",
                                    datagram.size(), kFrameHeader));
  }
  const std::byte* h = datagram.data();
  if (get_u32(h) != kFrameMagic) throw ProtocolError("frame does not start with crew's magic");
  const auto type = static_cast<std::uint8_t>(h[4]);
  const auto flags = static_cast<std::uint8_t>(h[5]);
  const auto nfds = static_cast<std::uint8_t>(h[6]);
  if (type < 1 || type > 6) throw ProtocolError(fmt::format("unknown frame type {}", type));
  if ((flags & ~kFlagPayloadInMemfd) != 0 || h[7] != std::byte{0}) {
    throw ProtocolError("frame has unknown flags set");
  }
  if (nfds != received.fds.size()) {
    throw ProtocolError(
        fmt::format("frame announces {} descriptors but {} arrived", nfds, received.fds.size()));
  }
  Frame f;
  f.type = static_cast<FrameType>(type);
  f.id = get_u64(h + 8);
  const std::uint64_t length = get_u64(h + 16);
  if (length > kPayloadMax) throw ProtocolError(fmt::format("payload of {} bytes", length));
  if ((flags & kFlagPayloadInMemfd) != 0) {
    if (received.fds.empty()) throw ProtocolError("memfd payload without a descriptor");
    if (datagram.size() != kFrameHeader) throw ProtocolError("memfd payload with inline bytes");
    f.payload = read_payload_fd(received.fds.front(), length);
    ::close(received.fds.front());
    received.fds.erase(received.fds.begin());
  } else {
    if (length != datagram.size() - kFrameHeader) {
      throw ProtocolError(fmt::format("header says {} payload bytes, datagram holds {}", length,
                                      datagram.size() - kFrameHeader));
    }
    f.payload.assign(datagram.begin() + kFrameHeader, datagram.end());
  }
  f.fds = std::move(received);
  return f;
}

void put_frame_header(std::byte (&header)[kFrameHeader], FrameType type, std::uint64_t id,
                      std::uint64_t payload_size) noexcept {
  std::memset(header, 0, kFrameHeader);
  put_u32(header, kFrameMagic);
  header[4] = static_cast<std::byte>(type);
  put_u64(header + 8, id);
  put_u64(header + 16, payload_size);
}

SendStatus send_frame(int socket, FrameType type, std::uint64_t id,
                      std::span<const std::byte> payload, const FdList& fds) {
  std::byte header[kFrameHeader]{};
  const bool big = payload.size() > kInlinePayloadMax;
  FdList payload_fd;
  if (big) payload_fd.fds.push_back(make_payload_fd(payload));
  std::vector<int> all = payload_fd.fds;
  all.insert(all.end(), fds.fds.begin(), fds.fds.end());
  if (all.size() > kMaxFds) {
    throw std::invalid_argument(fmt::format(
        "crew::ProcessPool: a message carries {} large buffers; at most {} may cross at once",
        all.size(), kMaxFds));
  }
  put_u32(header, kFrameMagic);
  header[4] = static_cast<std::byte>(type);
  header[5] = static_cast<std::byte>(big ? kFlagPayloadInMemfd : 0);
  header[6] = static_cast<std::byte>(all.size());
  put_u64(header + 8, id);
  put_u64(header + 16, payload.size());

  iovec iov[2];
  iov[0] = {header, kFrameHeader};
  iov[1] = {const_cast<std::byte*>(payload.data()), big ? 0 : payload.size()};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = big || payload.empty() ? 1 : 2;
  std::vector<char> control;
  if (!all.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * all.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * all.size());
    std::memcpy(CMSG_DATA(c), all.data(), sizeof(int) * all.size());
  }
  for (;;) {
    if (::sendmsg(socket, &msg, MSG_NOSIGNAL) >= 0) return SendStatus::sent;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) return SendStatus::gone;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return SendStatus::full;
    throw std::system_error(errno, std::generic_category(), "crew: sending a frame");
  }
}

RecvStatus recv_frame(int socket, Frame& out, bool blocking) {
  // A datagram is at most header + inline payload; anything longer arrives truncated (MSG_TRUNC)
  // and is rejected.
  // One receive buffer per thread, never cleared: only the bytes received are read.
  constexpr std::size_t kDatagramMax = kFrameHeader + kInlinePayloadMax + 1;
  thread_local const std::unique_ptr<std::byte[]> buffer(new std::byte[kDatagramMax]);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{buffer.get(), kDatagramMax};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  for (;;) {
    n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | (blocking ? 0 : MSG_DONTWAIT));
    if (n >= 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RecvStatus::would_block;
    // The peer closed with requests of ours unread. The error is reported once, ahead of
    // whatever the peer sent before it died: read on, up to the end of the stream.
    if (errno == ECONNRESET) continue;
    throw std::system_error(errno, std::generic_category(), "crew: receiving a frame");
  }
  FdList fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.fds.push_back(fd);
      }
    }
  }
  if (n == 0 && fds.fds.empty()) return RecvStatus::closed;
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    throw ProtocolError("frame larger than a datagram may be (or too many descriptors)");
  }
  out = decode_frame(std::span(buffer.get(), static_cast<std::size_t>(n)), std::move(fds));
  return RecvStatus::frame;
}

msgpack::object unpack_payload(std::span<const std::byte> payload, msgpack::zone& zone) {
  // Containers and strings can be no longer than the payload itself; depth is bounded so that a
  // nested-array bomb cannot overflow the stack.
  const std::size_t n = payload.size();
  const msgpack::unpack_limit limit(n, n, n, n, n, 64);
  std::size_t offset = 0;
  bool referenced = false;
  msgpack::object o;
  try {
    o = msgpack::unpack(zone, reinterpret_cast<const char*>(payload.data()), n, offset, referenced,
                        nullptr, nullptr, limit);
  } catch (const std::exception& e) {
    throw ProtocolError(fmt::format("payload is not valid msgpack: {}", e.what()));
  }
  if (offset != n) {
    throw ProtocolError(fmt::format("payload has {} bytes after its value", n - offset));
  }
  return o;
}

ErrorReply parse_error(std::span<const std::byte> payload) {
  msgpack::zone zone;
  const msgpack::object o = unpack_payload(payload, zone);
  if (o.type != msgpack::type::ARRAY || o.via.array.size != 3) {
    throw ProtocolError("error payload is not [kind, type, message]");
  }
  ErrorReply r;
  try {
    const auto kind = o.via.array.ptr[0].as<int>();
    if (kind < 1 || kind > 4) throw ProtocolError(fmt::format("unknown error kind {}", kind));
    r.kind = static_cast<ErrorKind>(kind);
    r.type = o.via.array.ptr[1].as<std::string>();
    r.message = o.via.array.ptr[2].as<std::string>();
  } catch (const msgpack::type_error&) {
    throw ProtocolError("error payload fields have the wrong types");
  }
  return r;
}

}  // namespace crew::inline v0::detail
