// Seed scenario: "transfer a large buffer to a worker without copying it".
//
// A crew::Buffer has a single owner. Posting it in a message moves the pointer, not the bytes:
// the worker sees the same data() address, and the sender's Buffer is left *detached* (size 0),
// like an ArrayBuffer in Node's transfer list. Here 64 MiB go to a worker and come back; the
// program compares the addresses, checks the contents, and times the transfer against copying
// the same bytes with memcpy.
//
// Node.js equivalent:
//   const buf = new ArrayBuffer(64 << 20);
//   worker.postMessage(buf, [buf]);   // buf.byteLength === 0 afterwards

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kBytes = std::size_t{64} << 20;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// A cheap fingerprint: one byte per 4 KiB page.
std::uint64_t sample_sum(const crew::Buffer& b) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < b.size(); i += 4096)
    sum += std::to_integer<std::uint8_t>(b.data()[i]);
  return sum;
}

// The worker: take the buffer, report what it sees, and hand the same bytes back.
void inspect_and_return(crew::WorkerContext& ctx) {
  while (std::optional<crew::Message> m = ctx.parent().receive()) {
    const std::int64_t received_ns = now_ns();
    crew::Buffer bytes = m->take_buffer();
    crew::Message::Map report;
    report.emplace("received_ns", received_ns);
    report.emplace("address", reinterpret_cast<std::uintptr_t>(bytes.data()));
    report.emplace("size", bytes.size());
    report.emplace("sample_sum", sample_sum(bytes));
    bytes.data()[0] = std::byte{0x42};           // the worker owns the bytes now: it may write them
    report.emplace("buffer", std::move(bytes));  // and transfers them back
    ctx.parent().post(std::move(report));
  }
}

double ms(std::int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

}  // namespace

int main() {
  int failures = 0;
  auto check = [&failures](bool ok, const char* what) {
    if (!ok) {
      std::printf("FAIL: %s\n", what);
      ++failures;
    }
  };

  crew::Buffer buffer = crew::Buffer::uninitialized(kBytes);
  std::memset(buffer.data(), 0x5a, buffer.size());
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  const std::uint64_t expected_sum = sample_sum(buffer);
  std::printf("main: %zu MiB buffer at %#llx\n", buffer.size() >> 20,
              static_cast<unsigned long long>(address));

  crew::Worker worker(inspect_and_return, {.name = "crew-inspect"});
  worker.online().get();  // so the timing below does not include starting the thread

  // 1. Transfer: the Buffer moves into the message, the message moves through the port.
  const std::int64_t sent_ns = now_ns();
  if (!worker.post(crew::Message(std::move(buffer)))) {
    std::printf("FAIL: post refused\n");
    return 1;
  }
  std::printf("main: after post, the sender's buffer: detached=%s size=%zu data=%p\n",
              buffer.detached() ? "true" : "false", buffer.size(),
              static_cast<void*>(buffer.data()));
  check(buffer.detached() && buffer.size() == 0, "the sender's Buffer must be detached");

  std::optional<crew::Message> report = worker.receive();
  if (!report) {
    std::printf("FAIL: no report from the worker\n");
    return 1;
  }
  const std::int64_t transfer_ns = (*report)["received_ns"].as<std::int64_t>() - sent_ns;
  const auto seen = (*report)["address"].as<std::uintptr_t>();
  std::printf("worker: received %zu bytes at %#llx (%s), sample sum %llu\n",
              (*report)["size"].as<std::size_t>(), static_cast<unsigned long long>(seen),
              seen == address ? "same address: no copy" : "DIFFERENT address",
              static_cast<unsigned long long>((*report)["sample_sum"].as<std::uint64_t>()));
  check(seen == address, "the worker must see the same address");
  check((*report)["size"].as<std::size_t>() == kBytes, "the worker must see every byte");
  check((*report)["sample_sum"].as<std::uint64_t>() == expected_sum, "contents must match");

  // 2. And back: the worker transferred the same block to us, with its write in it.
  crew::Buffer back = (*report)["buffer"].take_buffer();
  std::printf("main: got it back at %#llx, first byte %#x (written by the worker)\n",
              static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(back.data())),
              std::to_integer<unsigned>(back.data()[0]));
  check(reinterpret_cast<std::uintptr_t>(back.data()) == address, "same block on return");
  check(back.data()[0] == std::byte{0x42}, "the worker's write must be visible");

  // 3. A detached Buffer cannot be posted again: its bytes live elsewhere now.
  try {
    (void)worker.post(crew::Message(std::move(buffer)));
    check(false, "posting a detached Buffer must throw");
  } catch (const crew::BadArguments&) {
    std::printf("main: posting the detached buffer again throws crew::BadArguments\n");
  }

  // 4. The alternative: copy the 64 MiB (into memory already touched, to be fair to memcpy).
  crew::Buffer copy(kBytes);
  const std::int64_t copy_start = now_ns();
  std::memcpy(copy.data(), back.data(), back.size());
  const std::int64_t copy_ns = now_ns() - copy_start;
  check(copy.data()[1] == std::byte{0x5a}, "the copy must hold the bytes");

  std::printf(
      "main: transfer to the worker took %.3f ms (includes waking it), memcpy of %zu MiB "
      "took %.3f ms\n",
      ms(transfer_ns), kBytes >> 20, ms(copy_ns));

  (void)worker.terminate().get();
  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
