// crew::Buffer — move-only bytes that are transferred, never copied, like a transferred
// ArrayBuffer in Node.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

namespace crew {
inline namespace v0 {

/// A block of bytes with a single owner. Moving a Buffer (which is what posting it in a message
/// does) hands over the same memory: the receiver sees the same address, and the source is left
/// *detached* (`size() == 0`, `detached() == true`), like a transferred ArrayBuffer.
///
///     crew::Buffer b(1 << 20);                 // 1 MiB, zero-filled
///     std::memcpy(b.data(), src, b.size());
///     port.post(std::move(b));                 // b.detached() is now true
///
/// Thread safety: a Buffer is a value: use one object from one thread at a time. Moving it to
/// another thread through a crew queue or port publishes its contents.
class Buffer {
 public:
  /// An empty (not detached) buffer.
  Buffer() noexcept = default;
  /// `size` zero-filled bytes.
  explicit Buffer(std::size_t size);
  /// `size` bytes left uninitialised (for buffers about to be overwritten).
  static Buffer uninitialized(std::size_t size);
  /// A new buffer holding a copy of `bytes`.
  static Buffer copy_of(std::span<const std::byte> bytes);
  static Buffer copy_of(std::string_view text);

  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() = default;

  [[nodiscard]] std::byte* data() noexcept { return bytes_.get(); }
  [[nodiscard]] const std::byte* data() const noexcept { return bytes_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// True once the contents were moved to another Buffer.
  [[nodiscard]] bool detached() const noexcept { return detached_; }
  [[nodiscard]] std::span<std::byte> span() noexcept { return {bytes_.get(), size_}; }
  [[nodiscard]] std::span<const std::byte> span() const noexcept { return {bytes_.get(), size_}; }
  /// The bytes as text (no copy).
  [[nodiscard]] std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(bytes_.get()), size_};
  }

 private:
  std::unique_ptr<std::byte[]> bytes_;
  std::size_t size_ = 0;
  bool detached_ = false;
};

}  // namespace v0
}  // namespace crew
