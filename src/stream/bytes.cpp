// Byte sources and sinks over files and descriptors, and the byte stages lines(), uppercase()
// and sha256().
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/stream/bytes.hpp>

#include "common/crypto_error.hpp"

namespace crew {
inline namespace v0 {
namespace stream {
namespace {

[[noreturn]] void throw_os(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

void validate_read(const ReadOptions& options, const char* who) {
  if (options.chunk == 0) {
    throw std::invalid_argument(fmt::format("{}: chunk (0) must be >= 1", who));
  }
  detail::validate_marks({options.high_water_mark, options.high_water_bytes}, who);
}

// Reads one chunk from `fd`; false at end of file. With `poll_stop`, waits in 50 ms slices so a
// stop request is noticed on a descriptor that stays silent.
bool read_chunk(int fd, std::size_t chunk, std::vector<Buffer>& out, const std::stop_token& stop,
                bool poll_stop, const std::string& what) {
  if (poll_stop) {
    for (;;) {
      if (stop.stop_requested()) return true;
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, 50);
      if (r > 0) break;
      if (r < 0 && errno != EINTR) throw_os(errno, what);
    }
  }
  Buffer b = Buffer::uninitialized(chunk);
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fd, b.data(), chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_os(errno, what);
    }
    got = static_cast<std::size_t>(n);
    break;
  }
  if (got == 0) return false;
  if (got < chunk) {
    // Keep memory honest: a short read gets a buffer of its own size.
    Buffer exact = Buffer::uninitialized(got);
    std::memcpy(exact.data(), b.data(), got);
    b = std::move(exact);
  }
  out.push_back(std::move(b));
  return true;
}

class FileSource final : public detail::Source<Buffer> {
 public:
  FileSource(std::filesystem::path path, std::size_t chunk)
      : path_(std::move(path)), chunk_(chunk) {}
  ~FileSource() override {
    if (fd_ >= 0) ::close(fd_);
  }
  bool pull(std::vector<Buffer>& out, std::size_t /*max*/, const std::stop_token& stop) override {
    if (fd_ < 0) {
      fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) throw_os(errno, fmt::format("read_file: cannot open '{}'", path_.string()));
    }
    return read_chunk(fd_, chunk_, out, stop, false,
                      fmt::format("read_file: cannot read '{}'", path_.string()));
  }

 private:
  std::filesystem::path path_;
  std::size_t chunk_;
  int fd_ = -1;
};

class FdSource final : public detail::Source<Buffer> {
 public:
  FdSource(int fd, std::size_t chunk) : fd_(fd), chunk_(chunk) {}
  bool pull(std::vector<Buffer>& out, std::size_t /*max*/, const std::stop_token& stop) override {
    return read_chunk(fd_, chunk_, out, stop, true, fmt::format("read_fd: cannot read fd {}", fd_));
  }

 private:
  int fd_;
  std::size_t chunk_;
};

void write_all(int fd, const std::byte* data, std::size_t size, const char* what_fmt,
               const std::string& target) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_os(errno, fmt::format(fmt::runtime(what_fmt), target));
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

class FileSink final : public detail::SinkNode<Buffer> {
 public:
  FileSink(std::filesystem::path path, WriteFileOptions options, detail::Slot& slot)
      : SinkNode(slot), path_(std::move(path)), options_(options) {}
  // Not committed: the run failed or was cancelled; leave nothing behind.
  ~FileSink() override {
    if (fd_ >= 0) ::close(fd_);
    if (!temp_.empty()) ::unlink(temp_.c_str());
  }
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    try {
      open();
      for (Buffer& b : batch) {
        write_all(fd_, b.data(), b.size(), "write_file: cannot write '{}'", temp_);
        position_ += b.size();
      }
    } catch (...) {
      fail(position_);
    }
    end();
  }
  void finish() override {
    try {
      open();
      if (options_.sync && ::fsync(fd_) != 0) {
        throw_os(errno, fmt::format("write_file: cannot sync '{}'", temp_));
      }
      const int fd = fd_;
      fd_ = -1;
      if (::close(fd) != 0) throw_os(errno, fmt::format("write_file: cannot close '{}'", temp_));
      if (::rename(temp_.c_str(), path_.c_str()) != 0) {
        throw_os(errno,
                 fmt::format("write_file: cannot rename '{}' to '{}'", temp_, path_.string()));
      }
      temp_.clear();
    } catch (...) {
      fail(position_);
    }
  }

 private:
  void open() {
    if (fd_ >= 0) return;
    std::filesystem::path dir = path_.parent_path();
    if (dir.empty()) dir = ".";
    std::string pattern =
        fmt::format("{}/.{}.crew-XXXXXX", dir.string(), path_.filename().string());
    fd_ = ::mkstemp(pattern.data());
    if (fd_ < 0) {
      throw_os(errno, fmt::format("write_file: cannot create a temporary file for '{}' in '{}'",
                                  path_.string(), dir.string()));
    }
    temp_ = pattern;
    ::fchmod(fd_, 0666 & ~current_umask());
  }
  static mode_t current_umask() {
    const mode_t m = ::umask(0);
    ::umask(m);
    return m;
  }

  std::filesystem::path path_;
  WriteFileOptions options_;
  std::string temp_;
  int fd_ = -1;
};

class FdSink final : public detail::SinkNode<Buffer> {
 public:
  FdSink(int fd, detail::Slot& slot) : SinkNode(slot), fd_(fd) {}
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    try {
      for (Buffer& b : batch) {
        write_all(fd_, b.data(), b.size(), "write_fd: cannot write fd {}", std::to_string(fd_));
        position_ += b.size();
      }
    } catch (...) {
      fail(position_);
    }
    end();
  }
  void finish() override {}

 private:
  int fd_;
};

class LinesNode final : public detail::Node<Buffer, std::string> {
 public:
  using Node::Node;
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    for (Buffer& b : batch) {
      std::string_view text = b.view();
      std::size_t from = 0;
      for (;;) {
        const std::size_t nl = text.find('\n', from);
        if (nl == std::string_view::npos) break;
        if (partial_.empty()) {
          emit_line(std::string(text.substr(from, nl - from)));
        } else {
          partial_.append(text.substr(from, nl - from));
          emit_line(std::move(partial_));
          partial_.clear();
        }
        from = nl + 1;
      }
      partial_.append(text.substr(from));
      position_ += b.size();
    }
    end();
  }
  void finish() override {
    if (!partial_.empty()) {
      start_ = detail::ticks();
      emit_line(std::move(partial_));
      partial_.clear();
      slot_.busy_ticks += detail::ticks() - start_;
    }
    end_of_input();
  }

 private:
  void emit_line(std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    emit(std::move(line));
  }
  std::string partial_;
};

class UppercaseNode final : public detail::Node<Buffer, Buffer> {
 public:
  using Node::Node;
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    for (Buffer& b : batch) {
      auto* p = reinterpret_cast<unsigned char*>(b.data());
      for (std::size_t i = 0, n = b.size(); i < n; ++i) {
        if (p[i] >= 'a' && p[i] <= 'z') p[i] = static_cast<unsigned char>(p[i] - ('a' - 'A'));
      }
      emit(std::move(b));
    }
    end();
  }
  void finish() override { end_of_input(); }
};

class Sha256Node final : public detail::Node<Buffer, Buffer> {
 public:
  Sha256Node(std::function<void(const std::string&)> on_digest,
             std::unique_ptr<detail::Inlet<Buffer>> next, detail::Slot& slot,
             const detail::Context& ctx)
      : Node(std::move(next), slot, ctx), on_digest_(std::move(on_digest)), md_(EVP_MD_CTX_new()) {
    if (!md_ || EVP_DigestInit_ex(md_.get(), EVP_sha256(), nullptr) != 1) {
      crew::detail::throw_crypto_error("sha256: OpenSSL EVP_DigestInit_ex");
    }
  }
  void push(std::vector<Buffer>& batch) override {
    begin(batch);
    for (Buffer& b : batch) {
      if (EVP_DigestUpdate(md_.get(), b.data(), b.size()) != 1) {
        try {
          crew::detail::throw_crypto_error("sha256: OpenSSL EVP_DigestUpdate");
        } catch (...) {
          fail(position_);
        }
      }
      position_ += b.size();
      emit(std::move(b));
    }
    end();
  }
  void finish() override {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    try {
      if (EVP_DigestFinal_ex(md_.get(), digest, &n) != 1) {
        crew::detail::throw_crypto_error("sha256: OpenSSL EVP_DigestFinal_ex");
      }
      std::string hex;
      hex.reserve(2 * n);
      for (unsigned int i = 0; i < n; ++i) hex += fmt::format("{:02x}", digest[i]);
      slot_.report = hex;
      if (on_digest_) on_digest_(hex);
    } catch (...) {
      fail(position_);
    }
    end_of_input();
  }

 private:
  struct Free {
    void operator()(EVP_MD_CTX* c) const noexcept { EVP_MD_CTX_free(c); }
  };
  std::function<void(const std::string&)> on_digest_;
  std::unique_ptr<EVP_MD_CTX, Free> md_;
};

}  // namespace

Flow<Buffer> read_file(std::filesystem::path path, ReadOptions options) {
  validate_read(options, "crew::stream::read_file");
  return Flow<Buffer>(std::make_unique<FileSource>(std::move(path), options.chunk), "read_file",
                      {options.high_water_mark, options.high_water_bytes});
}

Flow<Buffer> read_fd(int fd, ReadOptions options) {
  validate_read(options, "crew::stream::read_fd");
  if (fd < 0)
    throw std::invalid_argument(fmt::format("crew::stream::read_fd: fd ({}) must be >= 0", fd));
  return Flow<Buffer>(std::make_unique<FdSource>(fd, options.chunk), "read_fd",
                      {options.high_water_mark, options.high_water_bytes});
}

FixedSink<Buffer> write_file(std::filesystem::path path, WriteFileOptions options) {
  if (path.empty() || !path.has_filename()) {
    throw std::invalid_argument(
        fmt::format("crew::stream::write_file: path ('{}') must name a file", path.string()));
  }
  FixedSink<Buffer> s;
  s.name = "write_file";
  s.factory = [path = std::move(path), options](detail::Slot& slot, const detail::Context&) {
    return std::make_unique<FileSink>(path, options, slot);
  };
  return s;
}

FixedSink<Buffer> write_fd(int fd) {
  if (fd < 0) {
    throw std::invalid_argument(fmt::format("crew::stream::write_fd: fd ({}) must be >= 0", fd));
  }
  FixedSink<Buffer> s;
  s.name = "write_fd";
  s.factory = [fd](detail::Slot& slot, const detail::Context&) {
    return std::make_unique<FdSink>(fd, slot);
  };
  return s;
}

FixedStage<Buffer, std::string> lines() {
  FixedStage<Buffer, std::string> s;
  s.name = "lines";
  s.factory = [](std::unique_ptr<detail::Inlet<std::string>> next, detail::Slot& slot,
                 const detail::Context& ctx) {
    return std::make_unique<LinesNode>(std::move(next), slot, ctx);
  };
  return s;
}

FixedStage<Buffer, Buffer> uppercase() {
  FixedStage<Buffer, Buffer> s;
  s.name = "uppercase";
  s.factory = [](std::unique_ptr<detail::Inlet<Buffer>> next, detail::Slot& slot,
                 const detail::Context& ctx) {
    return std::make_unique<UppercaseNode>(std::move(next), slot, ctx);
  };
  return s;
}

FixedStage<Buffer, Buffer> sha256(std::function<void(const std::string&)> on_digest) {
  FixedStage<Buffer, Buffer> s;
  s.name = "sha256";
  s.factory = [on_digest = std::move(on_digest)](std::unique_ptr<detail::Inlet<Buffer>> next,
                                                 detail::Slot& slot, const detail::Context& ctx) {
    return std::make_unique<Sha256Node>(on_digest, std::move(next), slot, ctx);
  };
  return s;
}

}  // namespace stream
}  // namespace v0
}  // namespace crew
