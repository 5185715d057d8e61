#include <cstring>
#include <utility>

#include <crew/buffer.hpp>

namespace crew::inline v0 {

Buffer::Buffer(std::size_t size)
    : bytes_(size == 0 ? nullptr : new std::byte[size]()), size_(size) {}

Buffer Buffer::uninitialized(std::size_t size) {
  Buffer b;
  if (size != 0) b.bytes_.reset(new std::byte[size]);
  b.size_ = size;
  return b;
}

Buffer Buffer::copy_of(std::span<const std::byte> bytes) {
  Buffer b = uninitialized(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
  return b;
}

Buffer Buffer::copy_of(std::string_view text) {
  return copy_of(std::as_bytes(std::span(text)));
}

Buffer::Buffer(Buffer&& other) noexcept
    : bytes_(std::move(other.bytes_)),
      size_(std::exchange(other.size_, 0)),
      detached_(std::exchange(other.detached_, true)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    bytes_ = std::move(other.bytes_);
    size_ = std::exchange(other.size_, 0);
    detached_ = std::exchange(other.detached_, true);
  }
  return *this;
}

}  // namespace crew::inline v0
