// Seed scenario: "a SharedArrayBuffer counter updated by several workers".
//
// A crew::SharedBuffer is memory every handle sees at once (Node's SharedArrayBuffer): copying
// the handle, or posting it in a message, never copies the bytes. Four workers each add 1 to a
// shared counter many times with crew::atomics::add. When a worker is done it bumps a "finished"
// cell and calls atomics::notify; the main thread sleeps in atomics::wait on that cell (a futex:
// no polling) until all of them have reported. The total must be exact.
//
// The buffer reaches the workers two ways: even-numbered workers get it in WorkerOptions::data
// (Node's workerData), odd-numbered ones in their first message. Both are the same memory: every
// worker reports the address it sees.
//
// Node.js equivalent:
//   const sab = new SharedArrayBuffer(8); const cells = new Int32Array(sab);
//   new Worker(file, {workerData: sab});             // ... Atomics.add(cells, COUNT, 1)
//   while ((f = Atomics.load(cells, DONE)) < N) Atomics.wait(cells, DONE, f);

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <crew/crew.hpp>

namespace {

constexpr std::size_t kFinished = 0;  // int32 cell: workers that are done
constexpr std::size_t kCount = 1;     // int32 cell: the shared counter
constexpr int kWorkers = 4;
#if defined(__SANITIZE_THREAD__)
constexpr std::int32_t kAddsPerWorker = 20'000;  // TSan instruments every atomic: scale down
#else
constexpr std::int32_t kAddsPerWorker = 250'000;
#endif

void add_many(crew::WorkerContext& ctx) {
  // The buffer comes either with the worker's data or in its first message.
  crew::SharedBuffer shared;
  if (ctx.data().is<crew::SharedBuffer>()) {
    shared = ctx.data().as<crew::SharedBuffer>();
  } else if (std::optional<crew::Message> m = ctx.parent().receive()) {
    shared = m->as<crew::SharedBuffer>();
  }
  if (!shared) throw std::runtime_error("no shared buffer arrived");

  for (std::int32_t i = 0; i < kAddsPerWorker; ++i) crew::atomics::add(shared, kCount, 1);

  // Report the address this worker sees, then say "finished" to whoever waits on the cell.
  ctx.parent().post(crew::Message(reinterpret_cast<std::uintptr_t>(shared.data())));
  crew::atomics::add(shared, kFinished, 1);
  crew::atomics::notify(shared, kFinished);
}

}  // namespace

int main() {
  int failures = 0;
  const crew::SharedBuffer shared = crew::SharedBuffer::create(64);
  const auto address = reinterpret_cast<std::uintptr_t>(shared.data());
  std::printf("main: shared buffer of %zu bytes at %#llx\n", shared.size(),
              static_cast<unsigned long long>(address));

  std::vector<std::unique_ptr<crew::Worker>> workers;
  for (int i = 0; i < kWorkers; ++i) {
    const bool via_data = i % 2 == 0;
    workers.push_back(std::make_unique<crew::Worker>(
        add_many, crew::WorkerOptions{.name = "crew-add-" + std::to_string(i),
                                      .data = via_data ? crew::Message(shared) : crew::Message()}));
    if (!via_data) workers.back()->post(crew::Message(shared));  // another handle, same bytes
  }

  // Wait until every worker has reported. wait() returns at once (not_equal) when the cell no
  // longer holds the value we saw, so a notify between load and wait cannot be lost.
  int waits = 0;
  for (std::int32_t done = crew::atomics::load<std::int32_t>(shared, kFinished); done < kWorkers;
       done = crew::atomics::load<std::int32_t>(shared, kFinished)) {
    crew::atomics::wait(shared, kFinished, done);
    ++waits;
  }
  const std::int32_t total = crew::atomics::load<std::int32_t>(shared, kCount);
  std::printf("main: all %d workers finished (woke %d times); counter = %d, expected %d\n",
              kWorkers, waits, total, kWorkers * kAddsPerWorker);
  if (total != kWorkers * kAddsPerWorker) {
    std::printf("FAIL: lost updates\n");
    ++failures;
  }

  for (int i = 0; i < kWorkers; ++i) {
    std::optional<crew::Message> seen = workers[i]->receive();
    const auto seen_at = seen ? seen->as<std::uintptr_t>() : 0;
    std::printf("worker %d (buffer via %s) saw the buffer at %#llx%s\n", i,
                i % 2 == 0 ? "data   " : "message", static_cast<unsigned long long>(seen_at),
                seen_at == address ? " (same memory)" : "");
    if (seen_at != address) ++failures;
    if (workers[i]->join() != 0) ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
