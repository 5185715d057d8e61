// crew::SharedBuffer — memory that several threads, or several processes, see at once (Node's
// SharedArrayBuffer). Pair it with crew::atomics for synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>

namespace crew {
inline namespace v0 {

struct SharedBufferOptions {
  /// Back the block with a sealed memfd (Linux) so that another process can map it: a child
  /// created with fork() inherits it; any process can attach() to its fd().
  bool across_processes = false;
};

namespace detail {
struct SharedBlock;
[[noreturn]] void throw_shared_span(std::size_t size, std::size_t element, std::size_t align);
}  // namespace detail

/// A block of zero-initialised bytes shared by every copy of the handle: copies (and copies
/// posted in messages) refer to the same memory, which lives until the last handle is gone.
///
///     auto shared = crew::SharedBuffer::create(1024);
///     std::span<std::int32_t> cells = shared.span<std::int32_t>();   // 256 cells
///     crew::atomics::add(shared, 0, std::int32_t{1});
///
/// Thread safety: the handle is copyable and may be copied and destroyed from any thread. The
/// bytes themselves are plain memory: access them concurrently only through crew::atomics (or
/// your own synchronisation).
class SharedBuffer {
 public:
  /// A null handle (size 0, no memory).
  SharedBuffer() noexcept = default;
  /// Allocates `bytes` zero-filled bytes, page- or cache-line-aligned. Throws std::system_error
  /// when the memfd or mapping cannot be created.
  static SharedBuffer create(std::size_t bytes, SharedBufferOptions options = {});
  /// Maps the block behind `fd`, an fd() of a process-shared SharedBuffer received from another
  /// process (the fd is duplicated; the caller keeps its own). Throws std::invalid_argument when
  /// `fd` is not such a block, std::system_error when mapping fails.
  static SharedBuffer attach(int fd);

  [[nodiscard]] std::byte* data() const noexcept;
  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] bool across_processes() const noexcept;
  /// The memfd backing a process-shared buffer (owned by the buffer; -1 otherwise).
  [[nodiscard]] int fd() const noexcept;
  explicit operator bool() const noexcept { return static_cast<bool>(block_); }

  /// The bytes as elements of T. Throws std::invalid_argument when the size is not a multiple of
  /// sizeof(T) or the block is not aligned for T.
  template <class T>
  [[nodiscard]] std::span<T> span() const {
    if (size() % sizeof(T) != 0 || reinterpret_cast<std::uintptr_t>(data()) % alignof(T) != 0) {
      detail::throw_shared_span(size(), sizeof(T), alignof(T));
    }
    return {reinterpret_cast<T*>(data()), size() / sizeof(T)};
  }

  friend bool operator==(const SharedBuffer& a, const SharedBuffer& b) noexcept {
    return a.block_ == b.block_;
  }

 private:
  explicit SharedBuffer(std::shared_ptr<detail::SharedBlock> block) noexcept
      : block_(std::move(block)) {}
  std::shared_ptr<detail::SharedBlock> block_;
};

}  // namespace v0
}  // namespace crew
