// How crew::Buffer and crew::SharedBuffer travel inside msgpack-encoded task arguments and
// results: small Buffers inline as msgpack `bin`, large ones (and every SharedBuffer) as a
// sealed memfd passed beside the message with SCM_RIGHTS; the msgpack value then holds only the
// descriptor's index and the size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <msgpack.hpp>

#include <crew/buffer.hpp>
#include <crew/shared_buffer.hpp>

namespace crew::inline v0::detail {

/// Buffers below this many bytes are copied into the message; from here up they cross as memfds.
inline constexpr std::size_t kInlineBufferMax = 64 * 1024;
inline constexpr std::int8_t kExtBuffer = 1;        // body: u32 fd index, u64 size (big-endian)
inline constexpr std::int8_t kExtSharedBuffer = 2;  // body: u32 fd index, u64 size

/// Owned file descriptors that accompany one message; closes whatever nobody took.
/// Thread safety: a value; one thread at a time.
struct FdList {
  std::vector<int> fds;
  /// Set before packing a message that may be delivered more than once (a call with retries):
  /// every Buffer is then attached as a copy sealed against writes, which receivers map
  /// copy-on-write, so no delivery sees what another one wrote.
  bool copy_buffers = false;
  FdList() = default;
  FdList(FdList&& o) noexcept : fds(std::move(o.fds)), copy_buffers(o.copy_buffers) {
    o.fds.clear();
  }
  FdList& operator=(FdList&& o) noexcept;
  FdList(const FdList&) = delete;
  FdList& operator=(const FdList&) = delete;
  ~FdList() { close_all(); }
  void close_all() noexcept;
};

/// While alive, Buffers converted on this thread take their memfds from `in`, and Buffers packed
/// attach theirs to `out` (either may be null). Without a scope (plain msgpack use), Buffers are
/// packed inline and memfd references do not convert.
/// Thread safety: thread-local; nests.
class WireScope {
 public:
  WireScope(FdList* in, FdList* out) noexcept;
  ~WireScope();
  WireScope(const WireScope&) = delete;
  WireScope& operator=(const WireScope&) = delete;

  static FdList* in() noexcept;
  static FdList* out() noexcept;

 private:
  FdList* previous_in_;
  FdList* previous_out_;
};

/// Pack side: the index of a sealed memfd holding `b`'s bytes (its own memfd, duplicated, when
/// it has one: no copy; else a new memfd with a copy).
std::uint32_t attach_buffer(FdList& fds, const Buffer& b);
std::uint32_t attach_shared(FdList& fds, const SharedBuffer& b);
/// Convert side: maps descriptor `index` (checking its seals and size); throws
/// msgpack::type_error when the reference is not valid.
Buffer take_buffer(FdList& fds, std::uint32_t index, std::uint64_t size);
SharedBuffer take_shared(FdList& fds, std::uint32_t index, std::uint64_t size);

void encode_ref(char (&body)[12], std::uint32_t index, std::uint64_t size) noexcept;
bool decode_ref(const msgpack::object& o, std::int8_t type, std::uint32_t& index,
                std::uint64_t& size) noexcept;

}  // namespace crew::inline v0::detail

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {

  template <>
  struct pack<crew::Buffer> {
    template <class Stream>
    packer<Stream>& operator()(packer<Stream>& o, const crew::Buffer& v) const {
      crew::detail::FdList* fds = crew::detail::WireScope::out();
      if (fds != nullptr && v.size() >= crew::detail::kInlineBufferMax) {
        char body[12];
        crew::detail::encode_ref(body, crew::detail::attach_buffer(*fds, v), v.size());
        o.pack_ext(sizeof body, crew::detail::kExtBuffer);
        o.pack_ext_body(body, sizeof body);
        return o;
      }
      o.pack_bin(static_cast<std::uint32_t>(v.size()));
      o.pack_bin_body(reinterpret_cast<const char*>(v.data()),
                      static_cast<std::uint32_t>(v.size()));
      return o;
    }
  };

  template <>
  struct convert<crew::Buffer> {
    const msgpack::object& operator()(const msgpack::object& o, crew::Buffer& v) const {
      std::uint32_t index = 0;
      std::uint64_t size = 0;
      if (o.type == msgpack::type::BIN) {
        v = crew::Buffer::copy_of(std::string_view(o.via.bin.ptr, o.via.bin.size));
      } else if (o.type == msgpack::type::STR) {
        v = crew::Buffer::copy_of(std::string_view(o.via.str.ptr, o.via.str.size));
      } else if (crew::detail::decode_ref(o, crew::detail::kExtBuffer, index, size) &&
                 crew::detail::WireScope::in() != nullptr) {
        v = crew::detail::take_buffer(*crew::detail::WireScope::in(), index, size);
      } else {
        throw msgpack::type_error();
      }
      return o;
    }
  };

  template <>
  struct pack<crew::SharedBuffer> {
    template <class Stream>
    packer<Stream>& operator()(packer<Stream>& o, const crew::SharedBuffer& v) const {
      crew::detail::FdList* fds = crew::detail::WireScope::out();
      if (fds == nullptr) throw msgpack::type_error();  // only meaningful between processes
      char body[12];
      crew::detail::encode_ref(body, crew::detail::attach_shared(*fds, v), v.size());
      o.pack_ext(sizeof body, crew::detail::kExtSharedBuffer);
      o.pack_ext_body(body, sizeof body);
      return o;
    }
  };

  template <>
  struct convert<crew::SharedBuffer> {
    const msgpack::object& operator()(const msgpack::object& o, crew::SharedBuffer& v) const {
      std::uint32_t index = 0;
      std::uint64_t size = 0;
      if (!crew::detail::decode_ref(o, crew::detail::kExtSharedBuffer, index, size) ||
          crew::detail::WireScope::in() == nullptr) {
        throw msgpack::type_error();
      }
      v = crew::detail::take_shared(*crew::detail::WireScope::in(), index, size);
      return o;
    }
  };

  }  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS)
}  // namespace msgpack
