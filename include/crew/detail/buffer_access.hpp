// Internal access to crew::Buffer's storage, for the process layer (memfd transfer).
#pragma once

#include <cstddef>

#include <crew/buffer.hpp>

namespace crew::inline v0::detail {

/// Thread safety: as Buffer (a value).
struct BufferAccess {
  /// The memfd behind `b`, or -1 when `b` lives on the heap. Owned by `b`.
  static int fd(const Buffer& b) noexcept;
  /// A Buffer owning the shared mapping [data, data + size) of `fd` (both released with it).
  static Buffer adopt_mapping(std::byte* data, std::size_t size, int fd) noexcept;
  /// `size` bytes: a memfd mapping from Buffer::kProcessShareable up, else the heap.
  static Buffer allocate(std::size_t size, bool zeroed);
};

}  // namespace crew::inline v0::detail
