// gzip and gunzip ChunkCodecs: independent members compressed in parallel with libdeflate, each
// tagged with its size in an FEXTRA subfield ('C','W'); any other gzip inflates as a zlib stream.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <libdeflate.h>
#include <zlib.h>

#include <crew/stream/codec.hpp>

namespace crew::inline v0::stream {
namespace {

constexpr std::byte kId1{0x1f};
constexpr std::byte kId2{0x8b};
constexpr unsigned kFlagHcrc = 0x02;
constexpr unsigned kFlagExtra = 0x04;
constexpr unsigned kFlagName = 0x08;
constexpr unsigned kFlagComment = 0x10;
// Header of a crew member: 10 fixed bytes, XLEN (2), subfield SI1 SI2 LEN(2) = 'C' 'W' 4,
// member size (4).
constexpr std::size_t kCrewHeader = 20;
constexpr std::size_t kTrailer = 8;
// Bounds of a member make_gzip_codec() can write: blocks are at most 64 MiB, and deflate expands
// incompressible data by a few bytes per 64 KiB. A larger size field is not ours (the member is
// then streamed); a larger ISIZE is corrupt. Both keep what one job may allocate bounded.
constexpr std::uint64_t kMaxCrewIsize = std::uint64_t{64} << 20;
constexpr std::uint64_t kMaxCrewMember = kMaxCrewIsize + (std::uint64_t{1} << 20);
// A foreign header longer than this (FNAME or FCOMMENT without its terminator) is refused rather
// than buffered without bound.
constexpr std::size_t kMaxHeader = std::size_t{1} << 20;
constexpr std::size_t kInflateOut = std::size_t{256} << 10;

std::uint32_t load_le32(const std::byte* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}
std::uint16_t load_le16(const std::byte* p) {
  return static_cast<std::uint16_t>(unsigned(p[0]) | unsigned(p[1]) << 8);
}
void store_le32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (8 * i));
}

// libdeflate (de)compressors are not thread-safe and cost a few hundred KiB to set up: keep one
// per pool thread (and per level).
libdeflate_compressor* thread_compressor(int level) {
  struct Deleter {
    void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
  };
  thread_local std::unique_ptr<libdeflate_compressor, Deleter> cache[13];
  auto& slot = cache[level];
  if (!slot) {
    slot.reset(libdeflate_alloc_compressor(level));
    if (!slot) throw std::bad_alloc();
  }
  return slot.get();
}

libdeflate_decompressor* thread_decompressor() {
  struct Deleter {
    void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
  };
  thread_local std::unique_ptr<libdeflate_decompressor, Deleter> cache;
  if (!cache) {
    cache.reset(libdeflate_alloc_decompressor());
    if (!cache) throw std::bad_alloc();
  }
  return cache.get();
}

// Compression scratch, reused by the thread: fresh pages for every member cost page faults.
std::vector<std::byte>& thread_scratch(std::size_t size) {
  thread_local std::vector<std::byte> scratch;
  if (scratch.size() < size) scratch.resize(size);
  return scratch;
}

Buffer compress_member(const Buffer& input, int level) {
  libdeflate_compressor* c = thread_compressor(level);
  std::size_t bound = libdeflate_deflate_compress_bound(c, input.size());
  auto& out = thread_scratch(kCrewHeader + bound + kTrailer);
  std::byte* h = out.data();
  h[0] = kId1;
  h[1] = kId2;
  h[2] = std::byte{8};  // CM = deflate
  h[3] = std::byte{kFlagExtra};
  store_le32(h + 4, 0);  // MTIME unknown
  h[8] = std::byte{0};   // XFL
  h[9] = std::byte{3};   // OS = Unix
  h[10] = std::byte{8};  // XLEN = 8
  h[11] = std::byte{0};
  h[12] = std::byte{'C'};
  h[13] = std::byte{'W'};
  h[14] = std::byte{4};  // subfield LEN = 4
  h[15] = std::byte{0};
  std::size_t n =
      libdeflate_deflate_compress(c, input.data(), input.size(), h + kCrewHeader, bound);
  if (n == 0) throw std::logic_error("gzip: libdeflate output exceeded its own bound");
  std::size_t total = kCrewHeader + n + kTrailer;
  store_le32(h + 16, static_cast<std::uint32_t>(total));
  store_le32(h + kCrewHeader + n, libdeflate_crc32(0, input.data(), input.size()));
  store_le32(h + kCrewHeader + n + 4, static_cast<std::uint32_t>(input.size()));
  return Buffer::copy_of(std::span<const std::byte>(h, total));
}

class GzipCodec final : public ChunkCodec {
 public:
  explicit GzipCodec(GzipOptions options) : options_(options) {
    if (options_.level < 0 || options_.level > 12) {
      throw std::invalid_argument(fmt::format("gzip: level ({}) must be in 0..12", options_.level));
    }
    if (options_.block < (std::size_t{64} << 10) || options_.block > (std::size_t{64} << 20)) {
      throw std::invalid_argument(
          fmt::format("gzip: block ({}) must be in 64 KiB..64 MiB", options_.block));
    }
  }

  void feed(Buffer input, std::vector<Job>& out) override {
    std::span<const std::byte> rest = input.span();
    // A whole block arriving on a block boundary is handed over without a copy.
    if (used_ == 0 && input.size() == options_.block) {
      emit(std::move(input), out);
      return;
    }
    while (!rest.empty()) {
      if (!pending_.data()) pending_ = Buffer::uninitialized(options_.block);
      std::size_t n = std::min(rest.size(), options_.block - used_);
      std::memcpy(pending_.data() + used_, rest.data(), n);
      used_ += n;
      rest = rest.subspan(n);
      if (used_ == options_.block) {
        used_ = 0;
        emit(std::move(pending_), out);
        pending_ = Buffer();
      }
    }
  }

  void finish(std::vector<Job>& out) override {
    if (used_ > 0 || members_ == 0) {
      // Also for empty input: a gzip file holds at least one member.
      emit(Buffer::copy_of(std::span<const std::byte>(pending_.data(), used_)), out);
      pending_ = Buffer();
      used_ = 0;
    }
  }

  std::string_view name() const override { return "gzip"; }

 private:
  void emit(Buffer block, std::vector<Job>& out) {
    ++members_;
    out.emplace_back([block = std::move(block), level = options_.level]() {
      return compress_member(block, level);
    });
  }

  GzipOptions options_;
  Buffer pending_;
  std::size_t used_ = 0;
  std::uint64_t members_ = 0;
};

// ---------------------------------------------------------------------------------------------
// gunzip

struct Header {
  std::size_t length = 0;                  // bytes up to the deflate data
  std::optional<std::uint32_t> crew_size;  // total member size from the 'C','W' subfield
};

enum class Parse { incomplete, ok };

[[noreturn]] void corrupt(const std::string& what, std::uint64_t offset) {
  throw DataError(fmt::format("gunzip: {} at byte {}", what, offset), offset);
}

// Parses a member header at the start of `in` (which starts at input offset `at`).
Parse parse_header(std::span<const std::byte> in, std::uint64_t at, Header& h) {
  if (in.size() < 10) {
    if (in.size() >= 1 && in[0] != kId1) corrupt("not a gzip member (bad magic)", at);
    if (in.size() >= 2 && in[1] != kId2) corrupt("not a gzip member (bad magic)", at);
    return Parse::incomplete;
  }
  if (in[0] != kId1 || in[1] != kId2) corrupt("not a gzip member (bad magic)", at);
  if (in[2] != std::byte{8}) corrupt("unknown compression method", at + 2);
  unsigned flags = unsigned(in[3]);
  if (flags & 0xe0) corrupt("reserved header flags set", at + 3);
  std::size_t pos = 10;
  h.crew_size.reset();
  if (flags & kFlagExtra) {
    if (in.size() < pos + 2) return Parse::incomplete;
    std::size_t xlen = load_le16(&in[pos]);
    pos += 2;
    if (in.size() < pos + xlen) return Parse::incomplete;
    // Subfields: SI1 SI2 LEN(2) data. A malformed list is skipped, not fatal, as gzip does.
    std::size_t s = pos;
    while (s + 4 <= pos + xlen) {
      std::size_t len = load_le16(&in[s + 2]);
      if (s + 4 + len > pos + xlen) break;
      if (in[s] == std::byte{'C'} && in[s + 1] == std::byte{'W'} && len == 4) {
        h.crew_size = load_le32(&in[s + 4]);
      }
      s += 4 + len;
    }
    pos += xlen;
  }
  for (unsigned flag : {kFlagName, kFlagComment}) {
    if (!(flags & flag)) continue;
    auto end = std::find(in.begin() + static_cast<std::ptrdiff_t>(pos), in.end(), std::byte{0});
    if (end == in.end()) {
      if (in.size() > kMaxHeader) corrupt("gzip header too long", at + in.size());
      return Parse::incomplete;
    }
    pos = static_cast<std::size_t>(end - in.begin()) + 1;
  }
  if (flags & kFlagHcrc) {
    if (in.size() < pos + 2) return Parse::incomplete;
    std::uint32_t crc = libdeflate_crc32(0, in.data(), pos);
    if ((crc & 0xffff) != load_le16(&in[pos])) corrupt("header CRC16 mismatch", at + pos);
    pos += 2;
  }
  h.length = pos;
  return Parse::ok;
}

// Inflates one member written by make_gzip_codec(): `member` is the whole member.
Buffer inflate_member(const Buffer& member, std::size_t header, std::uint64_t at) {
  const std::byte* trailer = member.data() + member.size() - kTrailer;
  std::uint32_t crc = load_le32(trailer);
  std::uint32_t isize = load_le32(trailer + 4);
  Buffer out = Buffer::uninitialized(isize);
  std::size_t in_used = 0;
  std::size_t out_used = 0;
  auto r = libdeflate_deflate_decompress_ex(thread_decompressor(), member.data() + header,
                                            member.size() - header - kTrailer, out.data(),
                                            out.size(), &in_used, &out_used);
  if (r != LIBDEFLATE_SUCCESS || out_used != isize ||
      in_used != member.size() - header - kTrailer) {
    corrupt(r == LIBDEFLATE_SUCCESS ? "ISIZE or member size mismatch in member"
                                    : "invalid deflate data in member",
            at);
  }
  if (libdeflate_crc32(0, out.data(), out.size()) != crc) corrupt("CRC32 mismatch in member", at);
  return out;
}

class GunzipCodec final : public ChunkCodec {
 public:
  GunzipCodec() {
    std::memset(&z_, 0, sizeof z_);
    if (inflateInit2(&z_, -MAX_WBITS) != Z_OK) throw std::bad_alloc();
  }
  ~GunzipCodec() override { inflateEnd(&z_); }
  GunzipCodec(const GunzipCodec&) = delete;
  GunzipCodec& operator=(const GunzipCodec&) = delete;

  void feed(Buffer input, std::vector<Job>& out) override {
    if (input.empty()) return;
    if (buf_.empty()) {
      std::size_t used = process(input.span(), out);
      buf_.assign(input.data() + used, input.data() + input.size());
    } else {
      buf_.insert(buf_.end(), input.data(), input.data() + input.size());
      std::size_t used = process(buf_, out);
      buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(used));
    }
    flush_output(out);
  }

  void finish(std::vector<Job>& out) override {
    // process() consumes everything that can be consumed; what is left is a partial member.
    if (state_ == State::padding) {
      flush_output(out);
      return;
    }
    if (state_ != State::member_start || !buf_.empty() || members_ == 0) {
      std::uint64_t end = base_ + buf_.size();
      if (end == 0) corrupt("empty input, not gzip", 0);
      corrupt(
          fmt::format("truncated input (the member starting at byte {} is incomplete)", member_at_),
          end);
    }
    flush_output(out);
  }

  std::string_view name() const override { return "gunzip"; }

 private:
  enum class State { member_start, stream, trailer, padding };

  // Consumes what it can of `in` (which starts at input offset base_) and returns the count;
  // advances base_ by the same amount.
  std::size_t process(std::span<const std::byte> in, std::vector<Job>& out) {
    std::size_t pos = 0;
    while (pos < in.size()) {
      auto rest = in.subspan(pos);
      std::uint64_t at = base_ + pos;
      if (state_ == State::padding) {
        // Zero bytes after the last member are ignored, as gzip does; anything else is not.
        auto nz =
            std::find_if(rest.begin(), rest.end(), [](std::byte b) { return b != std::byte{0}; });
        if (nz != rest.end()) corrupt("data after zero padding", at + (nz - rest.begin()));
        pos = in.size();
        break;
      }
      if (state_ == State::member_start) {
        if (members_ > 0 && rest[0] == std::byte{0}) {
          state_ = State::padding;
          continue;
        }
        Header h;
        if (parse_header(rest, at, h) == Parse::incomplete) break;
        member_at_ = at;
        if (h.crew_size && *h.crew_size >= h.length + kTrailer && *h.crew_size <= kMaxCrewMember) {
          std::size_t size = *h.crew_size;
          if (rest.size() < size) break;
          flush_output(out);
          std::uint32_t isize = load_le32(&rest[size - 4]);
          if (isize > kMaxCrewIsize) corrupt("implausible ISIZE in member", at);
          out.emplace_back([member = Buffer::copy_of(rest.first(size)), header = h.length, at]() {
            return inflate_member(member, header, at);
          });
          ++members_;
          pos += size;
          continue;
        }
        pos += h.length;
        crc_ = 0;
        isize_ = 0;
        inflateReset(&z_);
        state_ = State::stream;
        continue;
      }
      if (state_ == State::stream) {
        pos += inflate_some(rest, at);
        continue;
      }
      // State::trailer
      if (rest.size() < kTrailer) break;
      if (load_le32(rest.data()) != crc_) corrupt("CRC32 mismatch in member", at);
      if (load_le32(rest.data() + 4) != isize_) corrupt("ISIZE mismatch in member", at + 4);
      pos += kTrailer;
      ++members_;
      state_ = State::member_start;
    }
    base_ += pos;
    return pos;
  }

  // Streams `in` through zlib's raw inflate into out_; returns the bytes consumed.
  std::size_t inflate_some(std::span<const std::byte> in, std::uint64_t at) {
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    z_.avail_in = static_cast<uInt>(std::min<std::size_t>(in.size(), 1u << 30));
    uInt offered = z_.avail_in;
    int r = Z_OK;
    while (z_.avail_in > 0 && r != Z_STREAM_END) {
      if (!out_.data()) {
        out_ = Buffer::uninitialized(kInflateOut);
        out_used_ = 0;
      }
      z_.next_out = reinterpret_cast<Bytef*>(out_.data() + out_used_);
      z_.avail_out = static_cast<uInt>(out_.size() - out_used_);
      uInt before = z_.avail_out;
      r = inflate(&z_, Z_NO_FLUSH);
      std::size_t produced = before - z_.avail_out;
      crc_ = libdeflate_crc32(crc_, out_.data() + out_used_, produced);
      isize_ += static_cast<std::uint32_t>(produced);
      out_used_ += produced;
      if (out_used_ == out_.size()) full_.push_back(std::move(out_));
      if (r == Z_DATA_ERROR || r == Z_NEED_DICT || r == Z_MEM_ERROR || r == Z_STREAM_ERROR) {
        std::uint64_t where = at + (offered - z_.avail_in);
        corrupt(fmt::format("invalid deflate data ({}) in the member that starts at byte {}",
                            z_.msg ? z_.msg : "error", member_at_),
                where);
      }
      if (r == Z_BUF_ERROR && z_.avail_out != 0) break;  // needs more input
    }
    if (r == Z_STREAM_END) state_ = State::trailer;
    return offered - z_.avail_in;
  }

  // Hands inflated bytes out as ready-made jobs (they only return their buffer).
  void flush_output(std::vector<Job>& out) {
    for (auto& b : full_) out.emplace_back([b = std::move(b)]() mutable { return std::move(b); });
    full_.clear();
    if (out_.data() && out_used_ > 0) {
      out.emplace_back([b = Buffer::copy_of(std::span<const std::byte>(
                            out_.data(), out_used_))]() mutable { return std::move(b); });
      out_used_ = 0;
    }
  }

  State state_ = State::member_start;
  std::vector<std::byte> buf_;  // unconsumed input (a partial header, member or trailer)
  std::uint64_t base_ = 0;      // input offset of buf_[0]
  std::uint64_t member_at_ = 0;
  std::uint64_t members_ = 0;
  z_stream z_;
  std::uint32_t crc_ = 0;
  std::uint32_t isize_ = 0;
  Buffer out_;
  std::size_t out_used_ = 0;
  std::vector<Buffer> full_;
};

}  // namespace

std::unique_ptr<ChunkCodec> make_gzip_codec(GzipOptions options) {
  return std::make_unique<GzipCodec>(options);
}

std::unique_ptr<ChunkCodec> make_gunzip_codec() {
  return std::make_unique<GunzipCodec>();
}

}  // namespace crew::inline v0::stream
