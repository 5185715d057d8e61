// Recycles the memory of pool tasks. A task is allocated by the submitting thread and freed by the
// worker that ran it; glibc's malloc handles that cross-thread pattern through its arena locks,
// which showed up as the largest cost in the fire-and-forget benchmark. Here each thread keeps
// small free lists ("magazines", after Bonwick's slab allocator) and swaps whole batches through a
// global depot, so the common case touches no lock and no shared cache line. Sizes above the
// largest class go straight to operator new.
#include <array>
#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

#include <crew/detail/task.hpp>

namespace crew::inline v0::detail {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRecycle = true;  // let ASan see every use after free
#else
constexpr bool kRecycle = true;
#endif

constexpr std::array<std::size_t, 3> kClassSize = {64, 128, 256};
constexpr std::size_t kMagazine = 256;     // nodes per batch moved between threads
constexpr std::size_t kDepotBatches = 64;  // batches kept per class once a pool goes idle

struct Node {
  Node* next;
};

struct Magazine {
  Node* head = nullptr;
  std::size_t count = 0;
};

int class_of(std::size_t size) noexcept {
  for (std::size_t c = 0; c < kClassSize.size(); ++c) {
    if (size <= kClassSize[c]) return static_cast<int>(c);
  }
  return -1;
}

void free_all(Magazine& m) noexcept {
  while (m.head != nullptr) {
    Node* n = m.head;
    m.head = n->next;
    ::operator delete(n);
  }
  m.count = 0;
}

// Full magazines shared by all threads, one stack per size class. Never destroyed: threads may
// still free tasks while static destructors run at exit.
struct Depot {
  std::mutex mutex;
  std::vector<Magazine> full;
};
Depot& depot(int c) noexcept {
  static auto* depots = new std::array<Depot, kClassSize.size()>();
  return (*depots)[static_cast<std::size_t>(c)];
}

// Unbounded while work flows: a burst deeper than the depot would otherwise be freed node by node
// on the worker threads, through malloc's arena locks, in the middle of the burst.
// trim_task_memory() returns the excess once a pool thread runs out of work.
void give_to_depot(int c, Magazine m) noexcept {
  Depot& d = depot(c);
  try {
    std::lock_guard lock(d.mutex);
    d.full.push_back(m);
    return;
  } catch (const std::bad_alloc&) {
  }
  free_all(m);
}

bool take_from_depot(int c, Magazine& out) noexcept {
  Depot& d = depot(c);
  std::lock_guard lock(d.mutex);
  if (d.full.empty()) return false;
  out = d.full.back();
  d.full.pop_back();
  return true;
}

thread_local bool tl_cache_gone = false;  // trivially destructible: safe to read at thread exit

struct Cache {
  // Per class: the magazine in use and one spare, so that a thread alternating allocations and
  // frees around a batch boundary does not hit the depot every time.
  std::array<Magazine, kClassSize.size()> loaded{};
  std::array<Magazine, kClassSize.size()> spare{};

  Cache() = default;
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;
  ~Cache() {
    tl_cache_gone = true;
    for (std::size_t c = 0; c < kClassSize.size(); ++c) {
      if (spare[c].count == kMagazine) {
        give_to_depot(static_cast<int>(c), spare[c]);
      } else {
        free_all(spare[c]);
      }
      free_all(loaded[c]);
    }
  }

  void* allocate(int c) {
    auto& m = loaded[static_cast<std::size_t>(c)];
    if (m.head == nullptr) {
      auto& s = spare[static_cast<std::size_t>(c)];
      if (s.head != nullptr) {
        m = std::exchange(s, Magazine{});
      } else if (!take_from_depot(c, m)) {
        return ::operator new(kClassSize[static_cast<std::size_t>(c)]);
      }
    }
    Node* n = m.head;
    m.head = n->next;
    --m.count;
    return n;
  }

  void deallocate(int c, void* p) noexcept {
    auto& m = loaded[static_cast<std::size_t>(c)];
    if (m.count == kMagazine) {
      auto& s = spare[static_cast<std::size_t>(c)];
      if (s.count == kMagazine) give_to_depot(c, s);
      s = std::exchange(m, Magazine{});
    }
    auto* n = static_cast<Node*>(p);
    n->next = m.head;
    m.head = n;
    ++m.count;
  }
};

thread_local Cache tl_cache;

}  // namespace

void trim_task_memory() noexcept {
  if constexpr (!kRecycle) return;
  for (std::size_t c = 0; c < kClassSize.size(); ++c) {
    std::vector<Magazine> excess;
    {
      Depot& d = depot(static_cast<int>(c));
      std::lock_guard lock(d.mutex);
      if (d.full.size() <= kDepotBatches) continue;
      excess.assign(d.full.begin() + static_cast<std::ptrdiff_t>(kDepotBatches), d.full.end());
      d.full.resize(kDepotBatches);
    }
    for (auto& m : excess) free_all(m);
  }
}

void* allocate_task(std::size_t size) {
  const int c = class_of(size);
  if (!kRecycle || c < 0 || tl_cache_gone)
    return ::operator new(c < 0 ? size : kClassSize[static_cast<std::size_t>(c)]);
  return tl_cache.allocate(c);
}

void deallocate_task(void* p, std::size_t size) noexcept {
  const int c = class_of(size);
  if (!kRecycle || c < 0 || tl_cache_gone) {
    ::operator delete(p);
    return;
  }
  tl_cache.deallocate(c, p);
}

}  // namespace crew::inline v0::detail
