#include <cerrno>
#include <cstring>
#include <system_error>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/detail/buffer_access.hpp>
#include <crew/process/detail/wire.hpp>

namespace crew::inline v0::detail {
namespace {

thread_local FdList* t_in = nullptr;
thread_local FdList* t_out = nullptr;

constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;

int dup_cloexec(int fd) {
  const int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) throw std::system_error(errno, std::generic_category(), "crew: dup of a buffer fd");
  return d;
}

bool write_sealed(int fd) noexcept {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  return seals >= 0 && (seals & F_SEAL_WRITE) != 0;
}

// The receiver trusts the size only because the sender sealed it: a peer that could shrink the
// file afterwards would turn our reads into SIGBUS.
int checked_fd(FdList& fds, std::uint32_t index, std::uint64_t size) {
  if (index >= fds.fds.size() || fds.fds[index] < 0) throw msgpack::type_error();
  const int fd = fds.fds[index];
  const int seals = ::fcntl(fd, F_GET_SEALS);
  struct stat st {};
  if (seals < 0 || (seals & kSizeSeals) != kSizeSeals || ::fstat(fd, &st) != 0 ||
      static_cast<std::uint64_t>(st.st_size) < size) {
    throw msgpack::type_error();
  }
  fds.fds[index] = -1;
  return fd;
}

}  // namespace

FdList& FdList::operator=(FdList&& o) noexcept {
  if (this != &o) {
    close_all();
    fds = std::move(o.fds);
    copy_buffers = o.copy_buffers;
    o.fds.clear();
  }
  return *this;
}

void FdList::close_all() noexcept {
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  fds.clear();
}

WireScope::WireScope(FdList* in, FdList* out) noexcept : previous_in_(t_in), previous_out_(t_out) {
  t_in = in;
  t_out = out;
}
WireScope::~WireScope() {
  t_in = previous_in_;
  t_out = previous_out_;
}
FdList* WireScope::in() noexcept {
  return t_in;
}
FdList* WireScope::out() noexcept {
  return t_out;
}

std::uint32_t attach_buffer(FdList& fds, const Buffer& b) {
  int fd = BufferAccess::fd(b);
  // A Buffer mapped copy-on-write from a write-sealed memfd (see take_buffer) holds bytes its
  // file does not: it is copied like a heap Buffer.
  if (fd >= 0 && !fds.copy_buffers && !write_sealed(fd)) {
    // Sealing the size does not stop either side writing; the Buffer is moved, so nobody does.
    ::fcntl(fd, F_ADD_SEALS, kSizeSeals);
    fd = dup_cloexec(fd);
  } else {
    fd = ::memfd_create("crew-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "crew: memfd_create");
    std::size_t done = 0;
    while (done < b.size()) {
      const ssize_t n = ::write(fd, b.data() + done, b.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        throw std::system_error(err, std::generic_category(), "crew: copying a buffer to memfd");
      }
      done += static_cast<std::size_t>(n);
    }
    ::fcntl(fd, F_ADD_SEALS, kSizeSeals | (fds.copy_buffers ? F_SEAL_WRITE : 0));
  }
  fds.fds.push_back(fd);
  return static_cast<std::uint32_t>(fds.fds.size() - 1);
}

std::uint32_t attach_shared(FdList& fds, const SharedBuffer& b) {
  if (b.fd() < 0) throw msgpack::type_error();
  fds.fds.push_back(dup_cloexec(b.fd()));
  return static_cast<std::uint32_t>(fds.fds.size() - 1);
}

Buffer take_buffer(FdList& fds, std::uint32_t index, std::uint64_t size) {
  const int fd = checked_fd(fds, index, size);
  if (size == 0) {
    ::close(fd);
    return Buffer();
  }
  // A write-sealed memfd may be delivered again (a call with retries): this Buffer's writes stay
  // its own.
  const int sharing = write_sealed(fd) ? MAP_PRIVATE : MAP_SHARED;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, sharing, fd, 0);
  if (p == MAP_FAILED) {
    ::close(fd);
    throw msgpack::type_error();
  }
  return BufferAccess::adopt_mapping(static_cast<std::byte*>(p), size, fd);
}

SharedBuffer take_shared(FdList& fds, std::uint32_t index, std::uint64_t size) {
  const int fd = checked_fd(fds, index, size);
  SharedBuffer b;
  try {
    b = SharedBuffer::attach(fd);  // duplicates the descriptor
  } catch (const std::exception&) {
    ::close(fd);
    throw msgpack::type_error();
  }
  ::close(fd);
  if (b.size() != size) throw msgpack::type_error();
  return b;
}

void encode_ref(char (&body)[12], std::uint32_t index, std::uint64_t size) noexcept {
  std::memcpy(body, &index, 4);
  std::memcpy(body + 4, &size, 8);
}

bool decode_ref(const msgpack::object& o, std::int8_t type, std::uint32_t& index,
                std::uint64_t& size) noexcept {
  if (o.type != msgpack::type::EXT || o.via.ext.type() != type || o.via.ext.size != 12) {
    return false;
  }
  std::memcpy(&index, o.via.ext.data(), 4);
  std::memcpy(&size, o.via.ext.data() + 4, 8);
  return true;
}

}  // namespace crew::inline v0::detail
