// A single-producer single-consumer byte ring in memory shared by a pool and one worker process.
// Small frames cross it without a system call; a frame that carries descriptors or is larger than
// kRingEntryMax goes through the socket, and a marker entry in the ring keeps its place in the
// order. Written here because no library offers a ring whose reader must survive a hostile
// writer: the reader checks every position and length it reads and copies an entry out before
// anything parses it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace crew::inline v0::detail {

inline constexpr std::size_t kRingBytes = 64 * 1024;
/// Largest frame (header and payload) carried in the ring itself.
inline constexpr std::size_t kRingEntryMax = 4096;

enum class RingEntry : std::uint32_t {
  frame = 1,   // the entry holds a frame
  socket = 2,  // the next frame is on the socket
  wrap = 3,    // the rest of the ring up to its end is unused; go on at its start
};

struct Ring {
  alignas(64) std::atomic<std::uint64_t> head{0};  // bytes ever written (the producer's)
  alignas(64) std::atomic<std::uint64_t> tail{0};  // bytes ever consumed (the consumer's)
  alignas(64) std::byte data[kRingBytes];
};

namespace ring_detail {
inline constexpr std::size_t kEntryHeader = 8;  // u32 length, u32 kind
constexpr std::uint64_t padded(std::uint64_t n) {
  return (n + 7) & ~std::uint64_t{7};
}
}  // namespace ring_detail

/// The producer's side. Thread safety: one thread of one process.
class RingWriter {
 public:
  explicit RingWriter(Ring* ring) noexcept : ring_(ring) {
    if (ring_ != nullptr) head_ = ring_->head.load(std::memory_order_relaxed);
  }

  /// Whether an entry of `bytes` (0 for a marker) fits now.
  [[nodiscard]] bool has_room(std::size_t bytes) const noexcept {
    return space_needed(bytes) <=
           kRingBytes - (head_ - ring_->tail.load(std::memory_order_acquire));
  }

  /// Appends an entry made of `a` then `b`; false (nothing written) when it does not fit.
  /// Publishes with seq_cst: the caller then reads the consumer's "asleep" flag.
  bool push(RingEntry kind, std::span<const std::byte> a, std::span<const std::byte> b = {}) {
    using namespace ring_detail;
    const std::size_t len = a.size() + b.size();
    if (!has_room(len)) return false;
    // Entries are 8-byte aligned, so a header always fits before the end.
    std::size_t pos = (head_ % kRingBytes) & ~std::size_t{7};
    if (pos + kEntryHeader + padded(len) > kRingBytes) {
      put_header(pos, 0, RingEntry::wrap);
      head_ += kRingBytes - pos;
      pos = 0;
    }
    put_header(pos, static_cast<std::uint32_t>(len), kind);
    if (!a.empty()) std::memcpy(ring_->data + pos + kEntryHeader, a.data(), a.size());
    if (!b.empty()) std::memcpy(ring_->data + pos + kEntryHeader + a.size(), b.data(), b.size());
    head_ += kEntryHeader + padded(len);
    ring_->head.store(head_, std::memory_order_seq_cst);
    return true;
  }

 private:
  // Room an entry may take: its own, plus the unused end of the ring if it has to wrap.
  [[nodiscard]] std::uint64_t space_needed(std::size_t len) const noexcept {
    using namespace ring_detail;
    const std::uint64_t own = kEntryHeader + padded(len);
    const std::size_t pos = head_ % kRingBytes;
    return pos + own > kRingBytes ? own + (kRingBytes - pos) : own;
  }
  void put_header(std::size_t pos, std::uint32_t len, RingEntry kind) noexcept {
    const auto k = static_cast<std::uint32_t>(kind);
    std::memcpy(ring_->data + pos, &len, 4);
    std::memcpy(ring_->data + pos + 4, &k, 4);
  }

  Ring* ring_;
  std::uint64_t head_ = 0;
};

/// The consumer's side. Trusts nothing the producer wrote.
/// Thread safety: one thread at a time (the pool serialises its readers under its mutex).
class RingReader {
 public:
  enum class Status { empty, entry, broken };

  explicit RingReader(Ring* ring) noexcept : ring_(ring) {
    if (ring_ != nullptr) tail_ = ring_->tail.load(std::memory_order_relaxed);
  }

  [[nodiscard]] bool empty() const noexcept {
    return ring_->head.load(std::memory_order_seq_cst) == tail_;
  }

  /// Takes the next entry: its kind into `kind` and, for a frame, a copy of its bytes into
  /// `out`. On `broken`, `error` says what is wrong and the ring must not be read again.
  Status pop(RingEntry& kind, std::vector<std::byte>& out, std::string& error) {
    using namespace ring_detail;
    for (;;) {
      const std::uint64_t head = ring_->head.load(std::memory_order_acquire);
      if (head == tail_) return Status::empty;
      const std::uint64_t avail = head - tail_;
      if (avail > kRingBytes || avail % 8 != 0) return fail(error, "its write position is wrong");
      const std::size_t pos = (tail_ % kRingBytes) & ~std::size_t{7};  // avail % 8 == 0 holds
      std::uint32_t len, k;
      std::memcpy(&len, ring_->data + pos, 4);
      std::memcpy(&k, ring_->data + pos + 4, 4);
      if (k == static_cast<std::uint32_t>(RingEntry::wrap)) {
        if (kRingBytes - pos > avail) return fail(error, "a wrap entry runs past what was written");
        advance(kRingBytes - pos);
        continue;
      }
      if (k != static_cast<std::uint32_t>(RingEntry::frame) &&
          k != static_cast<std::uint32_t>(RingEntry::socket)) {
        return fail(error, "an entry of unknown kind " + std::to_string(k));
      }
      const std::uint64_t size = kEntryHeader + padded(len);
      if (len > kRingEntryMax || size > avail || pos + size > kRingBytes) {
        return fail(error, "an entry of " + std::to_string(len) + " bytes does not fit");
      }
      kind = static_cast<RingEntry>(k);
      out.assign(ring_->data + pos + kEntryHeader, ring_->data + pos + kEntryHeader + len);
      advance(size);
      return Status::entry;
    }
  }

 private:
  static Status fail(std::string& error, const std::string& what) {
    error = "the shared ring is corrupt: " + what;
    return Status::broken;
  }
  void advance(std::uint64_t n) noexcept {
    tail_ += n;
    ring_->tail.store(tail_, std::memory_order_seq_cst);
  }

  Ring* ring_;
  std::uint64_t tail_ = 0;
};

}  // namespace crew::inline v0::detail
