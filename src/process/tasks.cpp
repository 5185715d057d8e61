#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include <cxxabi.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <crew/detail/futex.hpp>
#include <crew/errors.hpp>
#include <crew/process/detail/call.hpp>
#include <crew/process/tasks.hpp>

#include "channel.hpp"
#include "frame.hpp"
#include "heap_profile.hpp"
#include "worker_env.hpp"

namespace crew::inline v0 {
namespace detail {

std::string demangle(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(type.name());
}

std::string describe(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return "nil";
    case msgpack::type::BOOLEAN:
      return "bool";
    case msgpack::type::POSITIVE_INTEGER:
      return "unsigned integer";
    case msgpack::type::NEGATIVE_INTEGER:
      return "integer";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return "float";
    case msgpack::type::STR:
      return "string";
    case msgpack::type::BIN:
      return "bytes";
    case msgpack::type::ARRAY:
      return fmt::format("array of {}", o.via.array.size);
    case msgpack::type::MAP:
      return fmt::format("map of {}", o.via.map.size);
    case msgpack::type::EXT:
      return o.via.ext.type() == kExtBuffer ? "crew::Buffer" : "extension";
  }
  return "unknown";
}

std::string describe_list(const msgpack::object& args) {
  if (args.type != msgpack::type::ARRAY) return describe(args);
  std::string out;
  for (std::uint32_t i = 0; i < args.via.array.size; ++i) {
    if (i != 0) out += ", ";
    out += describe(args.via.array.ptr[i]);
  }
  return out;
}

void throw_task_arguments(std::string_view task, std::string_view signature, std::size_t arity,
                          const msgpack::object& args) {
  const std::size_t given = args.type == msgpack::type::ARRAY ? args.via.array.size : 1;
  if (given != arity) {
    throw BadArguments(
        fmt::format("crew: task '{}' takes {} argument(s) ({}) but was given {} ({})", task, arity,
                    signature, given, describe_list(args)));
  }
  throw BadArguments(fmt::format(
      "crew: arguments for task '{}' do not convert to its parameters: expected {}, given ({})",
      task, signature, describe_list(args)));
}

std::exception_ptr bad_result(const std::string& task, const std::string& wanted,
                              const msgpack::object& result) noexcept {
  try {
    return std::make_exception_ptr(BadArguments(
        fmt::format("crew: the result of task '{}' ({}) does not convert to the type run<{}>() "
                    "asked for; use the task's return type",
                    task, describe(result), wanted)));
  } catch (...) {
    return std::current_exception();
  }
}

namespace {

constexpr auto kWorkerSpin = std::chrono::microseconds(50);

struct Reply {
  FrameType type = FrameType::result;
  msgpack::sbuffer payload{kSmallMessage};
  FdList fds;
};

Reply error_reply(ErrorKind kind, const std::string& type, const std::string& message) {
  Reply r;
  r.type = FrameType::error;
  msgpack::packer<msgpack::sbuffer> pk(r.payload);
  pk.pack_array(3);
  pk.pack(static_cast<int>(kind));
  pk.pack(type);
  pk.pack(message);
  return r;
}

std::string known_names(const Tasks& tasks) {
  std::string out;
  for (const auto& n : tasks.names()) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(none)" : out;
}

// Runs one request; the reply is its result or the error it ended with.
Reply handle(const Tasks& tasks, Frame& frame) {
  Reply reply;
  try {
    WireScope scope(&frame.fds, &reply.fds);
    thread_local msgpack::zone zone;
    zone.clear();
    const msgpack::object o = unpack_payload(frame.payload, zone);
    if (o.type != msgpack::type::ARRAY || o.via.array.size != 2 ||
        o.via.array.ptr[0].type != msgpack::type::STR) {
      throw ProtocolError("request payload is not [name, args]");
    }
    const auto name = o.via.array.ptr[0].as<std::string>();
    const Tasks::Entry* entry = tasks.find(name);
    if (entry == nullptr) {
      return error_reply(
          ErrorKind::unknown_task, "crew::BadArguments",
          fmt::format("crew: unknown task '{}'; the worker knows: {}", name, known_names(tasks)));
    }
    msgpack::packer<msgpack::sbuffer> pk(reply.payload);
    entry->invoke(o.via.array.ptr[1], pk);
  } catch (const ProtocolError&) {
    throw;
  } catch (const BadArguments& e) {
    return error_reply(ErrorKind::bad_arguments, "crew::BadArguments", e.what());
  } catch (const std::bad_alloc& e) {
    return error_reply(ErrorKind::out_of_memory, "std::bad_alloc", e.what());
  } catch (const std::exception& e) {
    return error_reply(ErrorKind::remote, demangle(typeid(e)), e.what());
  } catch (...) {
    return error_reply(ErrorKind::remote, "unknown",
                       "the task threw something that is not a std::exception");
  }
  return reply;
}

// A worker's side of its pool: the channel (socket and rings), the doorbell (one write to the
// pool's eventfd wakes the supervisor) and the pool's page (read-only).
class PoolLink {
 public:
  explicit PoolLink(int sock) {
    if (::fcntl(kWorkerDoorbellFd, F_GETFD) >= 0) doorbell_ = kWorkerDoorbellFd;
    pool_ = static_cast<const PoolPage*>(map(kWorkerPageFd, kPoolPageSize, PROT_READ));
    own_ = static_cast<WorkerPage*>(map(kWorkerOwnPageFd, kWorkerPageSize, PROT_READ | PROT_WRITE));
    if (doorbell_ < 0 || pool_ == nullptr || own_ == nullptr) {
      throw std::runtime_error(
          "crew::worker_main: the pool's doorbell and shared pages (descriptors 4 to 6) are "
          "missing; "
          "start this program from a crew::ProcessPool built with the same crew version");
    }
    channel_.emplace(sock, &own_->replies, &own_->requests, true);
  }
  PoolLink(const PoolLink&) = delete;
  PoolLink& operator=(const PoolLink&) = delete;
  ~PoolLink() {
    ::munmap(const_cast<PoolPage*>(pool_), kPoolPageSize);
    ::munmap(own_, kWorkerPageSize);
  }

  /// Sends a frame, waiting for room if the pool is behind, then rings unless somebody reads
  /// replies anyway. False when the pool is gone.
  bool send(FrameType type, std::uint64_t id, std::span<const std::byte> payload, const FdList& fds,
            bool always_ring) {
    for (;;) {
      SendStatus st = channel_->put(type, id, payload, fds);
      if (st == SendStatus::full) {
        own_->wants_room.store(1, std::memory_order_seq_cst);
        st = channel_->put(type, id, payload, fds);  // the pool may have read meanwhile
      }
      if (st == SendStatus::gone) return false;
      if (st == SendStatus::sent) break;
      ring(true);
      if (channel_->wait_socket() == RecvStatus::closed) return false;
    }
    own_->wants_room.store(0, std::memory_order_relaxed);
    driven_ = ring(always_ring);
    return true;
  }

  /// The next frame from the pool. After answering a thread that waits for results, the worker
  /// looks at the ring for a while before it sleeps: back-to-back tasks then cost no wake-up.
  RecvStatus next(Frame& frame) {
    const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
    bool spin = driven_;
    for (int i = 1;; ++i) {
      const RecvStatus st = channel_->get(frame);
      if (st != RecvStatus::would_block) return st;
      if (spin) {
        cpu_relax();
        if ((i & 31) == 0 && std::chrono::steady_clock::now() >= until) spin = false;
        continue;
      }
      // Asleep in the socket; the pool sends a wake frame when it finds the flag set.
      own_->asleep.store(1, std::memory_order_seq_cst);
      if (!channel_->has_input() && channel_->wait_socket() == RecvStatus::closed) {
        return RecvStatus::closed;
      }
      own_->asleep.store(0, std::memory_order_relaxed);
    }
  }

 private:
  static void* map(int fd, std::size_t size, int prot) {
    if (::fcntl(fd, F_GETFD) < 0) return nullptr;
    void* p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? nullptr : p;
  }

  // Returns whether a thread of the pool was waiting for results.
  bool ring(bool always) const noexcept {
    // Pairs with the reader's "leave, then read once more": either it sees our entry or we see
    // that it left (both sides are seq_cst).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const bool driven = pool_->drivers.load(std::memory_order_relaxed) != 0;
    if (!always && (driven || pool_->supervisor_awake.load(std::memory_order_relaxed) != 0)) {
      return driven;
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(doorbell_, &one, sizeof one);
    return driven;
  }

  int doorbell_ = -1;
  const PoolPage* pool_ = nullptr;
  WorkerPage* own_ = nullptr;
  std::optional<Channel> channel_;
  bool driven_ = false;
};

}  // namespace
}  // namespace detail

void Tasks::insert(std::string name, Entry entry) {
  if (name.empty()) throw std::invalid_argument("crew::Tasks::add: the task name is empty");
  if (entries_.contains(name)) {
    throw std::invalid_argument(
        fmt::format("crew::Tasks::add: a task named '{}' is already registered", name));
  }
  entries_.emplace(std::move(name), std::move(entry));
}

std::vector<std::string> Tasks::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

bool Tasks::contains(std::string_view name) const noexcept {
  return entries_.find(name) != entries_.end();
}

const Tasks::Entry* Tasks::find(std::string_view name) const noexcept {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const std::string& Tasks::signature(std::string_view name) const {
  const Entry* e = find(name);
  if (e == nullptr) {
    throw BadArguments(
        fmt::format("crew::Tasks: unknown task '{}'; known: {}", name, detail::known_names(*this)));
  }
  return e->signature;
}

PackedValue Tasks::invoke_packed(std::string_view name, std::string_view args) const {
  const Entry* e = find(name);
  if (e == nullptr) {
    throw BadArguments(
        fmt::format("crew: unknown task '{}'; known tasks: {}", name, detail::known_names(*this)));
  }
  msgpack::zone zone;
  msgpack::object o;
  try {
    o = detail::unpack_payload(std::as_bytes(std::span(args.data(), args.size())), zone);
  } catch (const detail::ProtocolError& error) {
    throw BadArguments(fmt::format("crew: arguments for task '{}': {}", name, error.what()));
  }
  msgpack::sbuffer out(detail::kSmallMessage);
  msgpack::packer<msgpack::sbuffer> pk(out);
  e->invoke(o, pk);
  return PackedValue{std::string(out.data(), out.size())};
}

bool is_worker_process() noexcept {
  return detail::worker_socket_from_env() >= 0;
}

int worker_main(const Tasks& tasks) {
  const int sock = detail::worker_socket_from_env();
  if (sock < 0) {
    throw std::logic_error(
        "crew::worker_main: this process was not started by a crew::ProcessPool (CREW_WORKER_FD is "
        "not "
        "set); call it only when crew::is_worker_process() is true");
  }
  const char* name_env = std::getenv(detail::kWorkerNameEnv);
  const std::string name = name_env != nullptr ? name_env : "crew-proc";
  ::prctl(PR_SET_NAME, name.c_str(), 0, 0, 0);
  // Programs this worker starts are not workers of this pool.
  ::unsetenv(detail::kWorkerFdEnv);
  ::unsetenv(detail::kWorkerNameEnv);
  // Before the pool hears "ready": it signals only workers that are.
  if (!detail::serve_heap_profiles(name.c_str())) return 71;  // EX_OSERR

  std::optional<detail::PoolLink> pool_link;
  try {
    pool_link.emplace(sock);
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 78;  // EX_CONFIG
  }
  detail::PoolLink& link = *pool_link;
  try {
    if (!link.send(detail::FrameType::ready, static_cast<std::uint64_t>(::getpid()), {},
                   detail::FdList{}, true)) {
      return 0;
    }
    for (;;) {
      detail::Frame frame;
      if (link.next(frame) == detail::RecvStatus::closed) return 0;
      switch (frame.type) {
        case detail::FrameType::shutdown:
          return 0;
        case detail::FrameType::request: {
          const detail::Reply r = detail::handle(tasks, frame);
          if (!link.send(r.type, frame.id,
                         std::as_bytes(std::span(r.payload.data(), r.payload.size())), r.fds,
                         false)) {
            return 0;
          }
          break;
        }
        default:
          throw detail::ProtocolError("unexpected frame type from the pool");
      }
    }
  } catch (const detail::ProtocolError& e) {
    fmt::print(stderr, "crew worker {}: malformed message from the pool: {}\n", ::getpid(),
               e.what());
    return 70;  // EX_SOFTWARE
  }
}

namespace {
thread_local std::stop_token tl_task_stop;
}  // namespace

std::stop_token this_task::stop_token() noexcept {
  return tl_task_stop;
}
this_task::StopScope::StopScope(std::stop_token token) noexcept
    : previous_(std::exchange(tl_task_stop, std::move(token))) {}
this_task::StopScope::~StopScope() {
  tl_task_stop = std::move(previous_);
}

}  // namespace crew::inline v0
