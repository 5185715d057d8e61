#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

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

#include "frame.hpp"
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

void reply_error(int sock, std::uint64_t id, ErrorKind kind, const std::string& type,
                 const std::string& message) {
  msgpack::sbuffer out(kSmallMessage);
  msgpack::packer<msgpack::sbuffer> pk(out);
  pk.pack_array(3);
  pk.pack(static_cast<int>(kind));
  pk.pack(type);
  pk.pack(message);
  send_frame(sock, FrameType::error, id, std::as_bytes(std::span(out.data(), out.size())),
             FdList{});
}

std::string known_names(const Tasks& tasks) {
  std::string out;
  for (const auto& n : tasks.names()) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(none)" : out;
}

// Runs one request and sends its reply. Returns false when the parent is gone.
bool handle(int sock, const Tasks& tasks, Frame& frame) {
  std::string name;
  msgpack::sbuffer out(kSmallMessage);
  FdList out_fds;
  try {
    WireScope scope(&frame.fds, &out_fds);
    thread_local msgpack::zone zone;
    zone.clear();
    const msgpack::object o = unpack_payload(frame.payload, zone);
    if (o.type != msgpack::type::ARRAY || o.via.array.size != 2 ||
        o.via.array.ptr[0].type != msgpack::type::STR) {
      throw ProtocolError("request payload is not [name, args]");
    }
    name = o.via.array.ptr[0].as<std::string>();
    const Tasks::Entry* entry = tasks.find(name);
    if (entry == nullptr) {
      reply_error(
          sock, frame.id, ErrorKind::unknown_task, "crew::BadArguments",
          fmt::format("crew: unknown task '{}'; the worker knows: {}", name, known_names(tasks)));
      return true;
    }
    msgpack::packer<msgpack::sbuffer> pk(out);
    entry->invoke(o.via.array.ptr[1], pk);
  } catch (const ProtocolError&) {
    throw;
  } catch (const BadArguments& e) {
    reply_error(sock, frame.id, ErrorKind::bad_arguments, "crew::BadArguments", e.what());
    return true;
  } catch (const std::bad_alloc& e) {
    reply_error(sock, frame.id, ErrorKind::out_of_memory, "std::bad_alloc", e.what());
    return true;
  } catch (const std::exception& e) {
    reply_error(sock, frame.id, ErrorKind::remote, demangle(typeid(e)), e.what());
    return true;
  } catch (...) {
    reply_error(sock, frame.id, ErrorKind::remote, "unknown",
                "the task threw something that is not a std::exception");
    return true;
  }
  return send_frame(sock, FrameType::result, frame.id,
                    std::as_bytes(std::span(out.data(), out.size())), out_fds) != SendStatus::gone;
}

// A worker's side of what it shares with its pool besides the channel: the doorbell (one write
// to the pool's eventfd wakes the supervisor), the pool's page (read-only) and its own page of
// frame counts.
class PoolLink {
 public:
  PoolLink() {
    if (::fcntl(kWorkerDoorbellFd, F_GETFD) >= 0) fd_ = kWorkerDoorbellFd;
    pool_ = static_cast<const PoolPage*>(map(kWorkerPageFd, PROT_READ));
    own_ = static_cast<WorkerPage*>(map(kWorkerOwnPageFd, PROT_READ | PROT_WRITE));
  }
  PoolLink(const PoolLink&) = delete;
  PoolLink& operator=(const PoolLink&) = delete;
  ~PoolLink() {
    if (pool_ != nullptr) ::munmap(const_cast<PoolPage*>(pool_), kPoolPageSize);
    if (own_ != nullptr) ::munmap(own_, kPoolPageSize);
  }

  /// Counts a frame sent, then rings unless somebody reads replies anyway. Returns true when a
  /// thread was waiting for results (the worker then looks for its next request before it
  /// sleeps).
  bool sent(bool always_ring) noexcept {
    if (own_ != nullptr) own_->replies.store(++replies_, std::memory_order_seq_cst);
    if (fd_ < 0) return false;
    // Pairs with the reader's "leave, then read once more": either it sees our count or we see
    // that it left (both sides are seq_cst).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const bool driven = pool_ != nullptr && pool_->drivers.load(std::memory_order_relaxed) != 0;
    if (!always_ring && (driven || (pool_ != nullptr && pool_->supervisor_awake.load(
                                                            std::memory_order_relaxed) != 0))) {
      return driven;
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(fd_, &one, sizeof one);
    return driven;
  }

  /// The next frame from the pool. With `spin`, looks at the request count for a while before
  /// it sleeps in the socket: back-to-back tasks then cost no wake-up of this process.
  RecvStatus next(int sock, Frame& frame, bool spin) {
    if (spin && own_ != nullptr) {
      const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
      for (int i = 1; own_->requests.load(std::memory_order_acquire) == requests_; ++i) {
        cpu_relax();
        if ((i & 31) == 0 && std::chrono::steady_clock::now() >= until) break;
      }
    }
    const RecvStatus st = recv_frame(sock, frame, true);
    if (st == RecvStatus::frame) ++requests_;
    return st;
  }

 private:
  static void* map(int fd, int prot) {
    if (::fcntl(fd, F_GETFD) < 0) return nullptr;
    void* p = ::mmap(nullptr, kPoolPageSize, prot, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? nullptr : p;
  }

  int fd_ = -1;
  const PoolPage* pool_ = nullptr;
  WorkerPage* own_ = nullptr;
  std::uint64_t requests_ = 0;  // frames received
  std::uint64_t replies_ = 0;   // frames sent
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

int serve(const Tasks& tasks) {
  const int sock = detail::worker_socket_from_env();
  if (sock < 0) {
    throw std::logic_error(
        "crew::serve: this process was not started by a crew::ProcessPool (CREW_WORKER_FD is not "
        "set); call it only when crew::is_worker_process() is true");
  }
  const char* name = std::getenv(detail::kWorkerNameEnv);
  ::prctl(PR_SET_NAME, name != nullptr ? name : "crew-proc", 0, 0, 0);
  // Programs this worker starts are not workers of this pool.
  ::unsetenv(detail::kWorkerFdEnv);
  ::unsetenv(detail::kWorkerNameEnv);

  detail::PoolLink link;
  if (detail::send_frame(sock, detail::FrameType::ready, static_cast<std::uint64_t>(::getpid()), {},
                         detail::FdList{}) == detail::SendStatus::gone) {
    return 0;
  }
  link.sent(true);
  bool spin = false;
  for (;;) {
    detail::Frame frame;
    try {
      if (link.next(sock, frame, spin) == detail::RecvStatus::closed) return 0;
      switch (frame.type) {
        case detail::FrameType::shutdown:
          return 0;
        case detail::FrameType::request: {
          const bool open = detail::handle(sock, tasks, frame);
          spin = link.sent(false);
          if (!open) return 0;
          break;
        }
        default:
          throw detail::ProtocolError("unexpected frame type from the pool");
      }
    } catch (const detail::ProtocolError& e) {
      fmt::print(stderr, "crew worker {}: malformed message from the pool: {}\n", ::getpid(),
                 e.what());
      return 70;  // EX_SOFTWARE
    }
  }
}

}  // namespace crew::inline v0
