#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <system_error>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/shared_buffer.hpp>

namespace crew::inline v0 {
namespace detail {

struct SharedBlock {
  std::byte* ptr = nullptr;
  std::size_t size = 0;
  int fd = -1;  // memfd of a process-shared block
  SharedBlock() = default;
  SharedBlock(const SharedBlock&) = delete;
  SharedBlock& operator=(const SharedBlock&) = delete;
  ~SharedBlock() {
    if (fd >= 0) {
      if (ptr != nullptr) ::munmap(ptr, size);
      ::close(fd);
    } else {
      std::free(ptr);
    }
  }
};

void throw_shared_span(std::size_t size, std::size_t element, std::size_t align) {
  throw std::invalid_argument(fmt::format(
      "crew::SharedBuffer::span: {} bytes do not form whole elements of {} bytes aligned to {}; "
      "create the buffer with a multiple of the element size",
      size, element, align));
}

namespace {
[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

void map_block(SharedBlock& b) {
  if (b.size == 0) return;
  void* p = ::mmap(nullptr, b.size, PROT_READ | PROT_WRITE, MAP_SHARED, b.fd, 0);
  if (p == MAP_FAILED) throw_errno("crew::SharedBuffer: mmap of the shared block failed");
  b.ptr = static_cast<std::byte*>(p);
}
}  // namespace
}  // namespace detail

SharedBuffer SharedBuffer::create(std::size_t bytes, SharedBufferOptions options) {
  auto block = std::make_shared<detail::SharedBlock>();
  block->size = bytes;
  if (!options.across_processes) {
    if (bytes != 0) {
      // Cache-line aligned, so that 64-bit atomics and futex words are always aligned.
      const std::size_t rounded = (bytes + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, rounded);
      if (p == nullptr) throw std::bad_alloc();
      std::memset(p, 0, rounded);
      block->ptr = static_cast<std::byte*>(p);
    }
    return SharedBuffer(std::move(block));
  }
  block->fd = ::memfd_create("crew-shared-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (block->fd < 0) detail::throw_errno("crew::SharedBuffer: memfd_create failed");
  if (::ftruncate(block->fd, static_cast<off_t>(bytes)) != 0) {
    detail::throw_errno("crew::SharedBuffer: sizing the memfd failed");
  }
  // Sealed size: no process can shrink the block under another's mapping (which would SIGBUS).
  if (::fcntl(block->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    detail::throw_errno("crew::SharedBuffer: sealing the memfd failed");
  }
  detail::map_block(*block);
  return SharedBuffer(std::move(block));
}

SharedBuffer SharedBuffer::attach(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    throw std::invalid_argument(fmt::format(
        "crew::SharedBuffer::attach: fd {} is not the fd() of a process-shared SharedBuffer "
        "(a sealed memfd); pass the fd the creating process handed over",
        fd));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) detail::throw_errno("crew::SharedBuffer::attach: fstat failed");
  auto block = std::make_shared<detail::SharedBlock>();
  block->fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (block->fd < 0) detail::throw_errno("crew::SharedBuffer::attach: dup failed");
  block->size = static_cast<std::size_t>(st.st_size);
  detail::map_block(*block);
  return SharedBuffer(std::move(block));
}

std::byte* SharedBuffer::data() const noexcept {
  return block_ ? block_->ptr : nullptr;
}
std::size_t SharedBuffer::size() const noexcept {
  return block_ ? block_->size : 0;
}
bool SharedBuffer::across_processes() const noexcept {
  return block_ && block_->fd >= 0;
}
int SharedBuffer::fd() const noexcept {
  return block_ ? block_->fd : -1;
}

}  // namespace crew::inline v0
