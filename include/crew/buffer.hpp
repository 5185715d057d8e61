// crew::Buffer — move-only bytes that are transferred, never copied, like a transferred
// ArrayBuffer in Node.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <utility>

namespace crew {
inline namespace v0 {
namespace detail {
struct BufferAccess;
}

/// A block of bytes with a single owner. Moving a Buffer (which is what posting it in a message
/// does) hands over the same memory: the receiver sees the same address, and the source is left
/// *detached* (`size() == 0`, `detached() == true`), like a transferred ArrayBuffer.
///
///     crew::Buffer b(1 << 20);                 // 1 MiB, zero-filled
///     std::memcpy(b.data(), src, b.size());
///     port.post(std::move(b));                 // b.detached() is now true
///
/// Buffers of `kProcessShareable` bytes or more live in an anonymous memory file (memfd) instead
/// of the heap, so that a ProcessPool can hand them to a worker process without copying (the
/// file descriptor crosses, the pages stay put). Such a buffer holds one file descriptor.
///
/// Thread safety: a Buffer is a value: use one object from one thread at a time. Moving it to
/// another thread through a crew queue or port publishes its contents.
class Buffer {
 public:
  /// Size from which a new Buffer is backed by a memfd (8 MiB).
  static constexpr std::size_t kProcessShareable = std::size_t{8} << 20;

  /// An empty (not detached) buffer.
  Buffer() noexcept = default;
  /// `size` zero-filled bytes.
  explicit Buffer(std::size_t size);
  /// `size` bytes left uninitialised (for buffers about to be overwritten).
  static Buffer uninitialized(std::size_t size);
  /// A new buffer holding a copy of `bytes`.
  static Buffer copy_of(std::span<const std::byte> bytes);
  static Buffer copy_of(std::string_view text);

  Buffer(Buffer&& other) noexcept
      : bytes_(std::exchange(other.bytes_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        fd_(std::exchange(other.fd_, -1)),
        detached_(std::exchange(other.detached_, true)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      release();
      bytes_ = std::exchange(other.bytes_, nullptr);
      size_ = std::exchange(other.size_, 0);
      fd_ = std::exchange(other.fd_, -1);
      detached_ = std::exchange(other.detached_, true);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }

  [[nodiscard]] std::byte* data() noexcept { return bytes_; }
  [[nodiscard]] const std::byte* data() const noexcept { return bytes_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// True once the contents were moved to another Buffer.
  [[nodiscard]] bool detached() const noexcept { return detached_; }
  [[nodiscard]] std::span<std::byte> span() noexcept { return {bytes_, size_}; }
  [[nodiscard]] std::span<const std::byte> span() const noexcept { return {bytes_, size_}; }
  /// The bytes as text (no copy).
  [[nodiscard]] std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(bytes_), size_};
  }

 private:
  friend struct detail::BufferAccess;
  void release() noexcept {
    if (bytes_ != nullptr) free_storage();
  }
  void free_storage() noexcept;

  std::byte* bytes_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;  // the memfd behind a mapped buffer; -1 for heap memory
  bool detached_ = false;
};

}  // namespace v0
}  // namespace crew
