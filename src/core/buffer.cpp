#include <cerrno>
#include <cstring>
#include <new>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/buffer.hpp>
#include <crew/detail/buffer_access.hpp>

namespace crew::inline v0 {
namespace detail {

int BufferAccess::fd(const Buffer& b) noexcept {
  return b.fd_;
}

Buffer BufferAccess::adopt_mapping(std::byte* data, std::size_t size, int fd) noexcept {
  Buffer b;
  b.bytes_ = data;
  b.size_ = size;
  b.fd_ = fd;
  return b;
}

Buffer BufferAccess::allocate(std::size_t size, bool zeroed) {
  Buffer b;
  if (size == 0) return b;
  if (size >= Buffer::kProcessShareable) {
    // A fresh memfd reads as zeros, so `zeroed` costs nothing here. When no memfd can be had
    // (descriptor limit, no memfd support) the heap still serves the allocation.
    const int fd = ::memfd_create("crew-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd >= 0) {
      if (::ftruncate(fd, static_cast<off_t>(size)) == 0) {
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) return adopt_mapping(static_cast<std::byte*>(p), size, fd);
      }
      ::close(fd);
    }
  }
  b.bytes_ = zeroed ? new std::byte[size]() : new std::byte[size];
  b.size_ = size;
  return b;
}

}  // namespace detail

Buffer::Buffer(std::size_t size) : Buffer(detail::BufferAccess::allocate(size, true)) {}

Buffer Buffer::uninitialized(std::size_t size) {
  return detail::BufferAccess::allocate(size, false);
}

Buffer Buffer::copy_of(std::span<const std::byte> bytes) {
  Buffer b = uninitialized(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
  return b;
}

Buffer Buffer::copy_of(std::string_view text) {
  return copy_of(std::as_bytes(std::span(text)));
}

void Buffer::free_storage() noexcept {
  if (fd_ >= 0) {
    ::munmap(bytes_, size_);
    ::close(fd_);
    fd_ = -1;
  } else {
    delete[] bytes_;
  }
  bytes_ = nullptr;
}

}  // namespace crew::inline v0
