// AES-256-GCM encrypt/decrypt ChunkCodecs (OpenSSL EVP): fixed-size authenticated chunks, each
// bound to its index and a final-chunk flag, encrypted and verified in parallel.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <crew/stream/codec.hpp>

#include "common/crypto_error.hpp"

namespace crew::inline v0::stream {
namespace {

constexpr char kMagic[8] = {'C', 'R', 'E', 'W', 'A', 'E', 'A', 'D'};
constexpr std::uint8_t kVersion = 1;
constexpr std::size_t kHeader = 28;
constexpr std::size_t kNonce = 12;
constexpr std::size_t kTag = 16;
constexpr std::size_t kMinChunk = std::size_t{1} << 10;
constexpr std::size_t kMaxChunk = std::size_t{64} << 20;

using Header = std::array<std::byte, kHeader>;

void store_le(std::byte* p, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = std::byte(v >> (8 * i));
}
std::uint32_t load_le32(const std::byte* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}

// One cipher context per pool thread, re-keyed for every chunk (the key schedule costs far less
// than a chunk).
EVP_CIPHER_CTX* thread_ctx() {
  struct Deleter {
    void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
  };
  thread_local std::unique_ptr<EVP_CIPHER_CTX, Deleter> ctx(EVP_CIPHER_CTX_new());
  if (!ctx) throw std::bad_alloc();
  return ctx.get();
}

// Everything a chunk job needs; shared by the jobs of one stream.
struct Params {
  Key key;
  Header header;
};

void chunk_nonce_aad(const Params& p, std::uint64_t index, bool final, unsigned char* nonce,
                     unsigned char* aad) {
  std::memcpy(nonce, p.header.data() + kHeader - kNonce, kNonce);
  for (int i = 0; i < 8; ++i) nonce[4 + i] ^= static_cast<unsigned char>(index >> (8 * i));
  std::memcpy(aad, p.header.data(), kHeader);
  store_le(reinterpret_cast<std::byte*>(aad + kHeader), index, 8);
  aad[kHeader + 8] = final ? 1 : 0;
}

void check(int ok, const char* what) {
  if (ok != 1) crew::detail::throw_crypto_error(fmt::format("OpenSSL EVP_{}", what));
}

Buffer seal(const Params& p, const Buffer& plain, std::uint64_t index, bool final) {
  unsigned char nonce[kNonce];
  unsigned char aad[kHeader + 9];
  chunk_nonce_aad(p, index, final, nonce, aad);
  EVP_CIPHER_CTX* ctx = thread_ctx();
  const auto* key = reinterpret_cast<const unsigned char*>(p.key.bytes.data());
  check(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key, nonce), "EncryptInit");
  int len = 0;
  check(EVP_EncryptUpdate(ctx, nullptr, &len, aad, sizeof aad), "EncryptUpdate(aad)");
  Buffer out = Buffer::uninitialized(plain.size() + kTag);
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int total = 0;
  if (!plain.empty()) {
    check(EVP_EncryptUpdate(ctx, o, &len, reinterpret_cast<const unsigned char*>(plain.data()),
                            static_cast<int>(plain.size())),
          "EncryptUpdate");
    total = len;
  }
  check(EVP_EncryptFinal_ex(ctx, o + total, &len), "EncryptFinal");
  check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTag, o + plain.size()), "GET_TAG");
  return out;
}

Buffer open_chunk(const Params& p, const Buffer& sealed, std::uint64_t index, bool final,
                  std::uint64_t at) {
  unsigned char nonce[kNonce];
  unsigned char aad[kHeader + 9];
  chunk_nonce_aad(p, index, final, nonce, aad);
  EVP_CIPHER_CTX* ctx = thread_ctx();
  const auto* key = reinterpret_cast<const unsigned char*>(p.key.bytes.data());
  check(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key, nonce), "DecryptInit");
  int len = 0;
  check(EVP_DecryptUpdate(ctx, nullptr, &len, aad, sizeof aad), "DecryptUpdate(aad)");
  std::size_t n = sealed.size() - kTag;
  Buffer out = Buffer::uninitialized(n);
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  const auto* in = reinterpret_cast<const unsigned char*>(sealed.data());
  int total = 0;
  if (n > 0) {
    check(EVP_DecryptUpdate(ctx, o, &len, in, static_cast<int>(n)), "DecryptUpdate");
    total = len;
  }
  check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTag, const_cast<unsigned char*>(in + n)),
        "SET_TAG");
  if (EVP_DecryptFinal_ex(ctx, o + total, &len) != 1) {
    // `out` is dropped here: plaintext of a chunk that failed authentication never leaves.
    throw DataError(fmt::format("decrypt: authentication failed for chunk {} at byte {} (wrong "
                                "key, or the data was modified, truncated or reordered)",
                                index, at),
                    at);
  }
  return out;
}

// Input bytes not yet cut into chunks.
class Chunker {
 public:
  std::size_t buffered() const { return buf_.size(); }
  void append(std::span<const std::byte> in) { buf_.insert(buf_.end(), in.begin(), in.end()); }
  /// Removes and returns the first n bytes.
  Buffer take(std::size_t n) {
    Buffer b = Buffer::copy_of(std::span<const std::byte>(buf_.data(), n));
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    return b;
  }
  std::span<const std::byte> view() const { return buf_; }

 private:
  std::vector<std::byte> buf_;
};

class EncryptCodec final : public ChunkCodec {
 public:
  EncryptCodec(const Key& key, EncryptOptions options) : chunk_(options.chunk) {
    if (chunk_ < kMinChunk || chunk_ > kMaxChunk) {
      throw std::invalid_argument(
          fmt::format("encrypt: chunk ({}) must be in 1 KiB..64 MiB", options.chunk));
    }
    auto p = std::make_shared<Params>();
    p->key = key;
    std::byte* h = p->header.data();
    std::memcpy(h, kMagic, 8);
    h[8] = std::byte{kVersion};
    h[9] = h[10] = h[11] = std::byte{0};
    store_le(h + 12, chunk_, 4);
    if (RAND_bytes(reinterpret_cast<unsigned char*>(h + 16), kNonce) != 1) {
      crew::detail::throw_crypto_error("encrypt: OpenSSL RAND_bytes (the nonce)");
    }
    params_ = std::move(p);
  }

  void feed(Buffer input, std::vector<Job>& out) override {
    start(out);
    if (pending_.buffered() == 0 && input.size() == chunk_) {
      emit(std::move(input), false, out);
      return;
    }
    std::span<const std::byte> rest = input.span();
    while (!rest.empty()) {
      std::size_t n = std::min(rest.size(), chunk_ - pending_.buffered());
      pending_.append(rest.first(n));
      rest = rest.subspan(n);
      // A full chunk is never the last: the last one is always shorter (possibly empty).
      if (pending_.buffered() == chunk_) emit(pending_.take(chunk_), false, out);
    }
  }

  void finish(std::vector<Job>& out) override {
    start(out);
    emit(pending_.take(pending_.buffered()), true, out);
  }

  std::string_view name() const override { return "encrypt"; }

 private:
  void start(std::vector<Job>& out) {
    if (started_) return;
    started_ = true;
    out.emplace_back([p = params_]() {
      return Buffer::copy_of(std::span<const std::byte>(p->header.data(), kHeader));
    });
  }
  void emit(Buffer plain, bool final, std::vector<Job>& out) {
    out.emplace_back([p = params_, plain = std::move(plain), i = index_++, final]() {
      return seal(*p, plain, i, final);
    });
  }

  std::size_t chunk_;
  Chunker pending_;
  std::shared_ptr<const Params> params_;
  std::uint64_t index_ = 0;
  bool started_ = false;
};

class DecryptCodec final : public ChunkCodec {
 public:
  explicit DecryptCodec(const Key& key) : key_(key) {}

  void feed(Buffer input, std::vector<Job>& out) override {
    pending_.append(input.span());
    if (!params_ && !read_header()) return;
    // Only a chunk followed by more data is known not to be the last one.
    while (pending_.buffered() > chunk_ + kTag) {
      emit(pending_.take(chunk_ + kTag), false, out);
    }
  }

  void finish(std::vector<Job>& out) override {
    std::uint64_t end = offset_ + pending_.buffered();
    if (!params_ && !read_header()) {
      throw DataError(
          fmt::format("decrypt: truncated input: the {}-byte header ends at byte {}", kHeader, end),
          end);
    }
    if (pending_.buffered() < kTag) {
      throw DataError(fmt::format("decrypt: truncated input: the last chunk ends at byte {}", end),
                      end);
    }
    emit(pending_.take(pending_.buffered()), true, out);
  }

  std::string_view name() const override { return "decrypt"; }

 private:
  bool read_header() {
    auto v = pending_.view();
    if (v.empty()) return false;
    std::size_t n = std::min(v.size(), sizeof kMagic);
    if (std::memcmp(v.data(), kMagic, n) != 0) {
      throw DataError("decrypt: not crew encrypted data (bad magic) at byte 0", 0);
    }
    if (v.size() < kHeader) return false;
    if (v[8] != std::byte{kVersion}) {
      throw DataError(fmt::format("decrypt: unsupported format version {} at byte 8", int(v[8])),
                      8);
    }
    std::size_t chunk = load_le32(v.data() + 12);
    if (chunk < kMinChunk || chunk > kMaxChunk) {
      throw DataError(fmt::format("decrypt: invalid chunk size {} at byte 12", chunk), 12);
    }
    auto p = std::make_shared<Params>();
    p->key = key_;
    std::memcpy(p->header.data(), v.data(), kHeader);
    params_ = std::move(p);
    chunk_ = chunk;
    pending_.take(kHeader);
    offset_ = kHeader;
    return true;
  }

  void emit(Buffer sealed, bool final, std::vector<Job>& out) {
    std::uint64_t at = offset_;
    offset_ += sealed.size();
    out.emplace_back([p = params_, sealed = std::move(sealed), i = index_++, final, at]() {
      return open_chunk(*p, sealed, i, final, at);
    });
  }

  Key key_;
  Chunker pending_;
  std::shared_ptr<const Params> params_;
  std::size_t chunk_ = 0;
  std::uint64_t offset_ = 0;  // input offset of the first byte in pending_
  std::uint64_t index_ = 0;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Key Key::from_bytes(std::span<const std::byte> raw) {
  if (raw.size() != 32) {
    throw std::invalid_argument(fmt::format("Key: {} bytes given, 32 needed", raw.size()));
  }
  Key k;
  std::copy(raw.begin(), raw.end(), k.bytes.begin());
  return k;
}

Key Key::from_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    throw std::system_error(errno, std::generic_category(),
                            fmt::format("cannot read key file '{}'", path.string()));
  }
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (s.size() == 32) return from_bytes(std::as_bytes(std::span(s)));
  auto first = s.find_first_not_of(" \t\r\n");
  auto last = s.find_last_not_of(" \t\r\n");
  std::string hex = first == std::string::npos ? "" : s.substr(first, last - first + 1);
  Key k;
  bool ok = hex.size() == 64;
  for (std::size_t i = 0; ok && i < 32; ++i) {
    int hi = hex_value(hex[2 * i]);
    int lo = hex_value(hex[2 * i + 1]);
    ok = hi >= 0 && lo >= 0;
    k.bytes[i] = std::byte(hi << 4 | lo);
  }
  if (!ok) {
    throw std::invalid_argument(
        fmt::format("key file '{}' must hold 32 raw bytes or 64 hex digits ({} bytes found)",
                    path.string(), s.size()));
  }
  return k;
}

Key Key::random() {
  Key k;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(k.bytes.data()), 32) != 1) {
    crew::detail::throw_crypto_error("Key::random: OpenSSL RAND_bytes");
  }
  return k;
}

std::string Key::to_hex() const {
  std::string s;
  s.reserve(64);
  for (std::byte b : bytes) s += fmt::format("{:02x}", unsigned(b));
  return s;
}

std::unique_ptr<ChunkCodec> make_encrypt_codec(const Key& key, EncryptOptions options) {
  return std::make_unique<EncryptCodec>(key, options);
}

std::unique_ptr<ChunkCodec> make_decrypt_codec(const Key& key) {
  return std::make_unique<DecryptCodec>(key);
}

}  // namespace crew::inline v0::stream
