// The cluster primary is one epoll loop over a signalfd (SIGHUP, SIGTERM, SIGINT), an eventfd
// (stop()/reload()), each worker's pidfd (exit) and channel (readiness, published state), and
// timers (restart backoff, shutdown deadline, memory polling). Workers are forked by the thread
// that calls run() and exec this same program with the listening socket and a channel inherited
// at fixed descriptors.
//
// Channel messages are SOCK_SEQPACKET datagrams whose first byte says what they are:
//   worker -> primary: 'R' ready, 'S' + state
//   primary -> worker: 'D' drain, 'P' + id + pid (two int32) + state, 'G' + id (a peer is gone)
// The primary sends without blocking: a worker too busy to read loses relayed states (the next
// one replaces them) and, if even a drain request does not fit, gets SIGTERM instead.
//
// Connection balancing uses a board instead of messages: a page of shared memory (inherited at a
// fixed descriptor) with a slot per live worker holding its id, its open connections and whether
// it accepts. The primary hands out and frees the slots; each worker writes only its own.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/pool.hpp>
#include <crew/process/cluster.hpp>

#include "backoff.hpp"
#include "spawn.hpp"

extern char** environ;

namespace crew {
inline namespace v0 {
namespace {

using detail::Child;
using detail::epoll_watch;
using detail::FdPair;
using detail::make_socketpair;
using detail::RestartBackoff;
using detail::signal_process;
using detail::spawn_process;
using detail::SpawnRequest;
using detail::UniqueFd;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
constexpr int kListenFd = 3;
constexpr int kChannelFd = 4;
constexpr int kBoardFd = 5;
constexpr const char* kEnvChannel = "CREW_CLUSTER_CHANNEL";
constexpr const char* kEnvListen = "CREW_CLUSTER_LISTEN";
constexpr const char* kEnvId = "CREW_CLUSTER_WORKER";
constexpr const char* kEnvBoard = "CREW_CLUSTER_BOARD";
constexpr const char* kEnvSlot = "CREW_CLUSTER_SLOT";
// Board slots: id (0 = free), open connections, accepting (0/1), unused. More slots than a
// cluster has workers, replacements during a reload included.
constexpr std::size_t kBoardSlots = 256;
constexpr std::size_t kSlotFields = 4;
enum SlotField : std::size_t { kSlotId = 0, kSlotConnections = 1, kSlotAccepting = 2 };
constexpr milliseconds kAcceptPatience{100};
// How often max_rss_restart_bytes reads each worker's resident memory: a worker that crosses it is
// sent to reload within this much (one small /proc read per worker).
constexpr milliseconds kMemoryCheckEvery{250};
constexpr std::string_view kWho = "crew::Cluster";
constexpr std::size_t kHeader = 9;  // 'P' + id + pid
constexpr std::size_t kMaxMessage = ClusterWorker::kMaxState + kHeader;

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

bool send_message(int fd, std::string_view bytes) {
  return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
         static_cast<ssize_t>(bytes.size());
}

void put_int(std::string& out, std::int32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

std::int32_t get_int(const char* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

sigset_t cluster_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

int open_listener(const std::string& host, std::uint16_t port) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_INET;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof *v4;
  } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof *v6;
  } else {
    throw std::invalid_argument(
        fmt::format("crew::Cluster: host '{}' is not an IPv4 or IPv6 address", host));
  }
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_errno("crew::Cluster: socket");
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(),
                            fmt::format("crew::Cluster: cannot listen on {}:{}", host, port));
  }
  return fd;
}

std::uint16_t port_of(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

std::vector<std::string> own_argv() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> argv;
  for (std::string arg; std::getline(in, arg, '\0');) argv.push_back(arg);
  return argv;
}

// One field of one slot on the balancing board, shared by the primary and every worker.
std::atomic_ref<std::int32_t> board_field(const SharedBuffer& board, std::size_t slot,
                                          std::size_t field) noexcept {
  return std::atomic_ref(
      *(reinterpret_cast<std::int32_t*>(board.data()) + slot * kSlotFields + field));
}

struct Worker {
  int id = 0;
  pid_t pid = -1;       // for messages and /proc; signals go through child's pidfd
  detail::Child child;  // killed and reaped if run() throws
  detail::UniqueFd channel;
  Clock::time_point started{};
  bool ready = false;
  bool draining = false;
  bool replaced = false;  // part of a reload: exits on purpose
  std::string state;      // the latest 'S' message, relayed as 'P'
  int slot = -1;          // on the balancing board; -1: none was free
};

// The primary's loop (Cluster::run): its state, and one member function per step. Workers are
// forked by the thread that calls run().
class Primary {
 public:
  Primary(const ClusterOptions& options, int listen_fd, const SharedBuffer& board, int wake_fd,
          std::atomic<bool>& stop_requested, std::atomic<bool>& reload_requested);
  int run();

 private:
  static constexpr std::uint64_t kSignalTag = 0;  // worker tags are (id << 1) | 0/1, id >= 1
  static constexpr std::uint64_t kWakeTag = 1;

  void start_workers();
  int timeout_ms(Clock::time_point now) const;
  void on_control(std::uint64_t tag, Clock::time_point now);
  void on_message(Worker& w);
  void on_exit(std::map<int, Worker>::iterator it, Clock::time_point now);
  bool shut_down(Clock::time_point now);
  void check_memory(Clock::time_point now);
  void replace_missing(Clock::time_point now);
  int spawn();
  void free_slot(Worker& w);
  void send_signal(Worker& w, int sig);
  void drain(Worker& w);
  void drain_all(Clock::time_point now);
  milliseconds unstable_start(Clock::time_point now);
  std::size_t live() const;
  void start_next_reload();
  void reload_all();
  static std::string peer_message(const Worker& w);

  const ClusterOptions& options_;
  const int listen_fd_;
  const SharedBuffer& board_;
  const int wake_fd_;
  std::atomic<bool>& stop_requested_;
  std::atomic<bool>& reload_requested_;
  UniqueFd sfd_;
  UniqueFd ep_;
  // By id. Declared after the descriptors, so that if run() throws, every worker still here is
  // killed and reaped (Worker::child) before they close.
  std::map<int, Worker> workers_;
  int next_id_ = 1;
  std::size_t unstable_ = 0;
  RestartBackoff backoff_;
  bool stopping_ = false;
  Clock::time_point stop_deadline_{};
  std::deque<int> to_reload_;   // old workers still to replace, in order
  int reload_waiting_for_ = 0;  // the new worker whose readiness releases the next old one
  Clock::time_point next_memory_check_ = Clock::now();
  int exit_code_ = 0;
  std::vector<char> buffer_ = std::vector<char>(kMaxMessage);
};

Primary::Primary(const ClusterOptions& options, int listen_fd, const SharedBuffer& board,
                 int wake_fd, std::atomic<bool>& stop_requested,
                 std::atomic<bool>& reload_requested)
    : options_(options),
      listen_fd_(listen_fd),
      board_(board),
      wake_fd_(wake_fd),
      stop_requested_(stop_requested),
      reload_requested_(reload_requested),
      backoff_(options.restart_backoff) {
  const sigset_t set = cluster_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  sfd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sfd_) throw_errno("crew::Cluster::run: signalfd");
  ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep_) throw_errno("crew::Cluster::run: epoll_create1");
  epoll_watch(kWho, ep_.get(), sfd_.get(), kSignalTag);
  epoll_watch(kWho, ep_.get(), wake_fd_, kWakeTag);
}

int Primary::run() {
  start_workers();
  epoll_event events[32];
  for (;;) {
    const int n = ::epoll_wait(ep_.get(), events, 32, timeout_ms(Clock::now()));
    const auto t = Clock::now();
    for (int e = 0; e < n; ++e) {
      const std::uint64_t tag = events[e].data.u64;
      if (tag == kSignalTag || tag == kWakeTag) {
        on_control(tag, t);
        continue;
      }
      auto it = workers_.find(static_cast<int>(tag >> 1));
      if (it == workers_.end()) continue;
      if ((tag & 1) == 1) {
        on_message(it->second);
      } else {
        on_exit(it, t);
      }
    }
    const auto after = Clock::now();
    if (stopping_) {
      if (shut_down(after)) break;
      continue;
    }
    if (options_.max_rss_restart_bytes != 0 && after >= next_memory_check_) check_memory(after);
    replace_missing(after);
  }
  spdlog::info("crew cluster: all workers stopped, exit {}", exit_code_);
  return exit_code_;
}

// A worker that cannot be started at all is the caller's problem to hear about at once:
// run() throws with the reason (the workers started so far are killed with `workers_`).
void Primary::start_workers() {
  for (std::size_t i = 0; i < options_.workers; ++i) {
    try {
      spawn();
    } catch (const std::exception& e) {
      spdlog::error("crew cluster: cannot start worker {} of {}: {}", i + 1, options_.workers,
                    e.what());
      throw;
    }
  }
}

int Primary::timeout_ms(Clock::time_point now) const {
  int timeout = 1000;
  if (stopping_) {
    timeout = static_cast<int>(std::max<long long>(
        0, std::chrono::duration_cast<milliseconds>(stop_deadline_ - now).count()));
  } else if (live() < options_.workers && backoff_.next() > now) {
    timeout = static_cast<int>(std::chrono::ceil<milliseconds>(backoff_.next() - now).count());
  } else if (live() < options_.workers) {
    timeout = 0;
  }
  if (!stopping_ && options_.max_rss_restart_bytes != 0) {
    const auto left = std::chrono::ceil<milliseconds>(next_memory_check_ - now).count();
    timeout = static_cast<int>(std::clamp<long long>(left, 0, timeout));
  }
  return timeout;
}

// A signal (SIGHUP: reload; SIGTERM, SIGINT: stop), or stop()/reload() through the eventfd.
void Primary::on_control(std::uint64_t tag, Clock::time_point now) {
  bool want_stop = false, want_reload = false;
  if (tag == kSignalTag) {
    signalfd_siginfo si{};
    while (::read(sfd_.get(), &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGHUP) want_reload = true;
      if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
        want_stop = true;
        spdlog::info("crew cluster: {} received", ::strsignal(static_cast<int>(si.ssi_signo)));
      }
    }
  } else {
    eventfd_t v;
    [[maybe_unused]] auto r = ::eventfd_read(wake_fd_, &v);
    want_stop = stop_requested_.exchange(false);
    want_reload = reload_requested_.exchange(false);
  }
  if (want_stop && !stopping_) {
    spdlog::info("crew cluster: draining every worker (up to {} ms)",
                 options_.shutdown_timeout.count());
    drain_all(now);
  } else if (want_reload && !stopping_) {
    reload_all();
  }
}

void Primary::on_message(Worker& w) {
  const int id = w.id;
  const ssize_t got = ::recv(w.channel.get(), buffer_.data(), buffer_.size(), MSG_DONTWAIT);
  if (got == 0) {
    ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, w.channel.get(), nullptr);
  } else if (got > 0 && buffer_[0] == 'R') {
    w.ready = true;
    // Bring the newcomer up to date with everyone's latest state.
    for (auto& [oid, o] : workers_) {
      if (oid != id && !o.state.empty()) send_message(w.channel.get(), peer_message(o));
    }
    if (id == reload_waiting_for_ && !to_reload_.empty()) {
      // The replacement serves: now the old one may go.
      const int old = to_reload_.front();
      to_reload_.pop_front();
      if (auto o = workers_.find(old); o != workers_.end()) drain(o->second);
      start_next_reload();
    }
  } else if (got > 0 && buffer_[0] == 'S') {
    w.state.assign(buffer_.data() + 1, static_cast<std::size_t>(got) - 1);
    const std::string msg = peer_message(w);
    for (auto& [oid, o] : workers_) {
      if (oid != id) send_message(o.channel.get(), msg);
    }
  }
}

// A worker exited: why, whether its restart backs off, and the peers told it is gone.
// replace_missing() starts its replacement.
void Primary::on_exit(std::map<int, Worker>::iterator it, Clock::time_point now) {
  Worker& w = it->second;
  const int id = w.id;
  const int status = w.child.wait();
  const auto uptime = now - w.started;
  const bool expected = w.draining || w.replaced || stopping_;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 78 && id == reload_waiting_for_ && !stopping_) {
    // A reload whose new configuration is bad (a broken certificate, say): the old workers
    // still serve with the one they started with, so they stay, and the reload ends here.
    if (!to_reload_.empty()) {
      if (auto o = workers_.find(to_reload_.front()); o != workers_.end()) {
        o->second.replaced = false;
      }
    }
    spdlog::error(
        "crew cluster: reload aborted: the new worker {} cannot start (configuration, exit "
        "78); the old workers keep serving. Fix the configuration and send SIGHUP again",
        id);
    to_reload_.clear();
    reload_waiting_for_ = 0;
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 78) {
    spdlog::error("crew cluster: worker {} cannot start (configuration, exit 78); stopping", id);
    exit_code_ = 78;
    if (!stopping_) drain_all(now);
  } else if (!expected) {
    const std::string how = WIFSIGNALED(status)
                                ? fmt::format("killed by signal {}", WTERMSIG(status))
                                : fmt::format("exited with code {}", WEXITSTATUS(status));
    milliseconds delay{0};
    if (uptime < options_.min_uptime) {
      delay = unstable_start(now);
    } else {
      unstable_ = 0;
      backoff_.up_for(uptime);
      delay = backoff_.wait_from(now);
    }
    spdlog::warn("crew cluster: worker {} (pid {}) {} after {} ms; restarting in {} ms", id, w.pid,
                 how, std::chrono::duration_cast<milliseconds>(uptime).count(), delay.count());
  }
  free_slot(w);
  workers_.erase(it);  // closes its pidfd and channel
  std::string gone = "G";
  put_int(gone, id);
  for (auto& [oid, o] : workers_) send_message(o.channel.get(), gone);
  if (id == reload_waiting_for_) start_next_reload();  // the replacement died: move on
}

// While stopping: true once every worker is gone; past the deadline, those still draining are
// killed.
bool Primary::shut_down(Clock::time_point now) {
  if (workers_.empty()) return true;
  if (now >= stop_deadline_) {
    spdlog::warn(
        "crew cluster: shutdown timeout ({} ms): killing the {} workers still "
        "draining",
        options_.shutdown_timeout.count(), workers_.size());
    for (auto& [id, w] : workers_) send_signal(w, SIGKILL);
    if (exit_code_ == 0) exit_code_ = 1;
    stop_deadline_ = now + milliseconds(1000);
  }
  return false;
}

void Primary::check_memory(Clock::time_point now) {
  next_memory_check_ = now + kMemoryCheckEvery;
  for (auto& [id, w] : workers_) {
    if (w.ready && !w.draining && !w.replaced &&
        resident_memory_bytes(w.pid) > options_.max_rss_restart_bytes &&
        std::find(to_reload_.begin(), to_reload_.end(), id) == to_reload_.end()) {
      spdlog::warn("crew cluster: worker {} is above max_rss_restart_bytes; reloading it", id);
      to_reload_.push_back(id);
      if (reload_waiting_for_ == 0) start_next_reload();
    }
  }
}

void Primary::replace_missing(Clock::time_point now) {
  while (!stopping_ && live() < options_.workers && backoff_.may_start(now)) {
    try {
      spawn();
    } catch (const std::exception& e) {
      // Counted like a worker that died at once: the next try backs off, and enough of them
      // in a row stop the cluster (run() returns 1).
      const auto delay = unstable_start(now);
      spdlog::error("crew cluster: could not start a worker: {}; retrying in {} ms", e.what(),
                    delay.count());
    }
  }
}

// Starts a worker; throws SpawnError with the reason, leaving nothing behind.
int Primary::spawn() {
  Worker w;
  w.id = next_id_++;
  for (std::size_t i = 0; i < kBoardSlots && w.slot < 0; ++i) {
    if (board_field(board_, i, kSlotId).load() == 0) {
      board_field(board_, i, kSlotConnections).store(0);
      board_field(board_, i, kSlotAccepting).store(0);
      board_field(board_, i, kSlotId).store(w.id);
      w.slot = static_cast<int>(i);
    }
  }
  try {
    FdPair channel = make_socketpair(kWho);
    SpawnRequest request;
    request.who = kWho;
    request.executable = "/proc/self/exe";
    request.argv = options_.argv;
    for (char** e = environ; *e != nullptr; ++e) request.env.emplace_back(*e);
    request.env.push_back(fmt::format("{}={}", kEnvListen, kListenFd));
    request.env.push_back(fmt::format("{}={}", kEnvChannel, kChannelFd));
    request.env.push_back(fmt::format("{}={}", kEnvId, w.id));
    request.fds = {{listen_fd_, kListenFd}, {channel.second.get(), kChannelFd}};
    if (w.slot >= 0) {
      request.env.push_back(fmt::format("{}={}", kEnvBoard, kBoardFd));
      request.env.push_back(fmt::format("{}={}", kEnvSlot, w.slot));
      request.fds.push_back({board_.fd(), kBoardFd});
    }
    request.keep_stdio = true;  // workers write to the primary's stdout and stderr
    w.child = spawn_process(request);
    channel.second.reset();
    w.pid = w.child.pid();
    w.channel = std::move(channel.first);
    w.started = Clock::now();
    epoll_watch(kWho, ep_.get(), w.child.pidfd(), static_cast<std::uint64_t>(w.id) << 1);
    epoll_watch(kWho, ep_.get(), w.channel.get(), (static_cast<std::uint64_t>(w.id) << 1) | 1);
    spdlog::info("crew cluster: worker {} started (pid {})", w.id, w.pid);
    workers_.emplace(w.id, std::move(w));
  } catch (...) {
    free_slot(w);
    throw;
  }
  return next_id_ - 1;
}

void Primary::free_slot(Worker& w) {
  if (w.slot < 0) return;
  const auto slot = static_cast<std::size_t>(w.slot);
  board_field(board_, slot, kSlotId).store(0);
  board_field(board_, slot, kSlotAccepting).store(0);
  board_field(board_, slot, kSlotConnections).store(0);
  w.slot = -1;
}

void Primary::send_signal(Worker& w, int sig) {
  // Through the pidfd: the pid of a worker reaped meanwhile could name another process.
  if (const int err = signal_process(w.child.pidfd(), sig); err != 0) {
    const char* name = ::sigabbrev_np(sig);
    spdlog::error(
        "crew cluster: could not send SIG{} to worker {} (pid {}): pidfd_send_signal "
        "failed: {}",
        name != nullptr ? name : "?", w.id, w.pid, std::strerror(err));
  }
}

void Primary::drain(Worker& w) {
  if (w.draining) return;
  w.draining = true;
  if (w.slot >= 0) board_field(board_, static_cast<std::size_t>(w.slot), kSlotAccepting).store(0);
  if (!send_message(w.channel.get(), "D")) send_signal(w, SIGTERM);
}

void Primary::drain_all(Clock::time_point now) {
  stopping_ = true;
  stop_deadline_ = now + options_.shutdown_timeout;
  for (auto& [id, w] : workers_) drain(w);
}

// A worker that died soon after starting, or could not be started at all.
milliseconds Primary::unstable_start(Clock::time_point now) {
  ++unstable_;
  const auto delay = backoff_.fail(now);
  if (unstable_ > options_.max_restarts) {
    spdlog::error(
        "crew cluster: too many unstable restarts ({} workers in a row failed to start or died "
        "within {} ms of starting); giving up",
        unstable_, options_.min_uptime.count());
    exit_code_ = 1;
    drain_all(now);
  }
  return delay;
}

std::size_t Primary::live() const {
  std::size_t n = 0;
  for (auto& [id, w] : workers_) n += (!w.draining && !w.replaced) ? 1 : 0;
  return n;
}

void Primary::start_next_reload() {
  while (!to_reload_.empty() && !workers_.contains(to_reload_.front())) to_reload_.pop_front();
  if (to_reload_.empty() || stopping_) {
    reload_waiting_for_ = 0;
    return;
  }
  Worker& old = workers_.at(to_reload_.front());
  old.replaced = true;
  try {
    reload_waiting_for_ = spawn();
  } catch (const std::exception& e) {
    // The old workers keep serving; a later reload tries again.
    spdlog::error("crew cluster: reload stopped, {} workers not replaced: {}", to_reload_.size(),
                  e.what());
    old.replaced = false;
    to_reload_.clear();
    reload_waiting_for_ = 0;
  }
}

void Primary::reload_all() {
  spdlog::info("crew cluster: reloading {} workers one at a time", workers_.size());
  for (auto& [id, w] : workers_) {
    if (!w.draining && !w.replaced) to_reload_.push_back(id);
  }
  if (reload_waiting_for_ == 0) start_next_reload();
}

std::string Primary::peer_message(const Worker& w) {
  std::string msg;
  msg.reserve(kHeader + w.state.size());
  msg += 'P';
  put_int(msg, w.id);
  put_int(msg, w.pid);
  msg += w.state;
  return msg;
}

}  // namespace

bool is_cluster_worker() noexcept {
  return std::getenv(kEnvChannel) != nullptr && std::getenv(kEnvListen) != nullptr;
}

// --- worker side ---------------------------------------------------------------------------

void ClusterWorker::ready() {
  if (!send_message(channel_, "R")) {
    spdlog::warn("crew cluster worker {}: could not tell the primary it is ready: {}", id_,
                 std::strerror(errno));
  }
}

void ClusterWorker::publish(const std::string& state) {
  if (state.size() > kMaxState) {
    throw std::length_error(fmt::format(
        "crew::ClusterWorker::publish: the state is {} bytes; at most {} fit in one message",
        state.size(), kMaxState));
  }
  std::string msg;
  msg.reserve(state.size() + 1);
  msg += 'S';
  msg += state;
  // Best effort: a full channel means the primary is busy; the next state replaces this one.
  send_message(channel_, msg);
}

std::vector<ClusterPeer> ClusterWorker::peers() const {
  std::lock_guard lock(mutex_);
  return peers_;
}

void ClusterWorker::receive(const char* data, std::size_t size) {
  if (size >= kHeader && data[0] == 'P') {
    ClusterPeer peer{get_int(data + 1), get_int(data + 5),
                     std::string(data + kHeader, size - kHeader), Clock::now()};
    std::lock_guard lock(mutex_);
    auto it = std::find_if(peers_.begin(), peers_.end(), [&](auto& p) { return p.id == peer.id; });
    if (it != peers_.end()) {
      *it = std::move(peer);
    } else {
      peers_.insert(std::upper_bound(peers_.begin(), peers_.end(), peer.id,
                                     [](int id, const ClusterPeer& p) { return id < p.id; }),
                    std::move(peer));
    }
  } else if (size >= 5 && data[0] == 'G') {
    const int id = get_int(data + 1);
    std::lock_guard lock(mutex_);
    std::erase_if(peers_, [id](const ClusterPeer& p) { return p.id == id; });
  }
}

void ClusterWorker::connection_opened() noexcept {
  if (slot_ >= 0) {
    board_field(board_, static_cast<std::size_t>(slot_), kSlotConnections)
        .fetch_add(1, std::memory_order_relaxed);
  }
}

void ClusterWorker::connection_closed() noexcept {
  if (slot_ >= 0) {
    board_field(board_, static_cast<std::size_t>(slot_), kSlotConnections)
        .fetch_sub(1, std::memory_order_relaxed);
  }
}

void ClusterWorker::accepting(bool on) noexcept {
  if (slot_ >= 0) {
    board_field(board_, static_cast<std::size_t>(slot_), kSlotAccepting)
        .store(on ? 1 : 0, std::memory_order_relaxed);
  }
}

bool ClusterWorker::accept_later() noexcept {
  if (slot_ < 0) return false;
  auto load = [this](std::size_t slot, std::size_t field) {
    return board_field(board_, slot, field).load(std::memory_order_relaxed);
  };
  const std::int32_t mine = load(static_cast<std::size_t>(slot_), kSlotConnections);
  std::int64_t least = -1;
  for (std::size_t i = 0; i < kBoardSlots; ++i) {
    if (i == static_cast<std::size_t>(slot_) || load(i, kSlotId) == 0 ||
        load(i, kSlotAccepting) == 0) {
      continue;
    }
    const std::int32_t n = load(i, kSlotConnections);
    if (least < 0 || n < least) least = n;
  }
  if (least < 0 || mine <= least + 1) {
    waited_for_.store(-1, std::memory_order_relaxed);
    return false;
  }
  // A worker whose count has not moved for kAcceptPatience is not taking connections (stuck, or
  // busy for longer than a client should wait): stop waiting for it until its count moves.
  const std::int64_t now = Clock::now().time_since_epoch().count();
  if (waited_for_.exchange(least, std::memory_order_relaxed) != least) {
    waiting_since_.store(now, std::memory_order_relaxed);
    return true;
  }
  return now - waiting_since_.load(std::memory_order_relaxed) <
         std::chrono::duration_cast<Clock::duration>(kAcceptPatience).count();
}

ClusterWorker::Stop ClusterWorker::wait(const std::function<std::string()>& state,
                                        std::chrono::milliseconds every) {
  const sigset_t set = cluster_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  const int sfd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) throw_errno("crew::ClusterWorker::wait: signalfd");
  std::vector<char> buffer(kMaxMessage);
  auto next = Clock::now();
  Stop why = Stop::primary_gone;
  for (;;) {
    int timeout = -1;
    if (state) {
      auto now = Clock::now();
      if (now >= next) {
        // A state that cannot be made or sent is logged and skipped: it never ends the worker.
        try {
          publish(state());
        } catch (const std::exception& e) {
          spdlog::warn("crew cluster worker {}: state not published: {}", id_, e.what());
        }
        next = now + every;
      }
      timeout = static_cast<int>(std::chrono::ceil<milliseconds>(next - now).count());
    }
    pollfd fds[2] = {{channel_, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (::poll(fds, 2, timeout) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) {
      signalfd_siginfo si{};
      bool stop = false;
      while (::read(sfd, &si, sizeof si) == sizeof si) {
        stop = stop || si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT;  // SIGHUP: ignored
      }
      if (stop) {
        why = Stop::signal;
        break;
      }
    }
    if (fds[0].revents != 0) {
      const ssize_t n = ::recv(channel_, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) break;  // the primary is gone
      if (buffer[0] == 'D') {
        why = Stop::drain;
        break;
      }
      receive(buffer.data(), static_cast<std::size_t>(n));
    }
  }
  ::close(sfd);
  return why;
}

// --- primary -------------------------------------------------------------------------------

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  // Before any thread exists, so every thread inherits the mask and signalfd gets the signals.
  const sigset_t set = cluster_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  if (is_cluster_worker()) {
    const char* id = std::getenv(kEnvId);
    const int listen_fd = std::atoi(std::getenv(kEnvListen));
    const int channel = std::atoi(std::getenv(kEnvChannel));
    worker_.reset(new ClusterWorker(id != nullptr ? std::atoi(id) : 0, listen_fd, channel));
    const char* board = std::getenv(kEnvBoard);
    const char* slot = std::getenv(kEnvSlot);
    if (board != nullptr && slot != nullptr) {
      // Without the board this worker still serves; it only does not balance.
      try {
        worker_->board_ = SharedBuffer::attach(std::atoi(board));
        const int s = std::atoi(slot);
        if (worker_->board_.size() >= kBoardSlots * kSlotFields * sizeof(std::int32_t) && s >= 0 &&
            static_cast<std::size_t>(s) < kBoardSlots) {
          worker_->slot_ = s;
        }
      } catch (const std::exception& e) {
        spdlog::warn("crew cluster worker: no connection balancing: {}", e.what());
      }
      ::close(std::atoi(board));  // attach() took a duplicate
    }
    // Programs this worker starts are neither workers nor holders of the socket or channel.
    ::fcntl(listen_fd, F_SETFD, FD_CLOEXEC);
    ::fcntl(channel, F_SETFD, FD_CLOEXEC);
    ::unsetenv(kEnvListen);
    ::unsetenv(kEnvChannel);
    ::unsetenv(kEnvId);
    ::unsetenv(kEnvBoard);
    ::unsetenv(kEnvSlot);
    return;
  }
  if (options_.workers == 0) options_.workers = default_thread_count();
  if (options_.argv.empty()) options_.argv = own_argv();
  if (options_.argv.empty()) throw std::invalid_argument("crew::Cluster: argv must not be empty");
  if (options_.listen_fd >= 0) {
    listen_fd_ = options_.listen_fd;
  } else {
    listen_fd_ = open_listener(options_.host, options_.port);
  }
  port_ = port_of(listen_fd_);
  try {
    board_ = SharedBuffer::create(kBoardSlots * kSlotFields * sizeof(std::int32_t),
                                  {.across_processes = true});
  } catch (...) {
    ::close(listen_fd_);
    throw;
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    ::close(listen_fd_);
    throw_errno("crew::Cluster: eventfd");
  }
}

Cluster::~Cluster() {
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

ClusterWorker& Cluster::worker() {
  if (!worker_) {
    throw std::logic_error(
        "crew::Cluster::worker: this is the primary; call run() (is_primary() is true)");
  }
  return *worker_;
}

void Cluster::stop() {
  stop_requested_ = true;
  if (wake_fd_ >= 0) [[maybe_unused]]
    auto n = ::eventfd_write(wake_fd_, 1);
}

void Cluster::reload() {
  reload_requested_ = true;
  if (wake_fd_ >= 0) [[maybe_unused]]
    auto n = ::eventfd_write(wake_fd_, 1);
}

int Cluster::run() {
  if (worker_) {
    throw std::logic_error(
        "crew::Cluster::run: this is a worker; use worker() (is_primary() is false)");
  }
  Primary primary(options_, listen_fd_, board_, wake_fd_, stop_requested_, reload_requested_);
  return primary.run();
}

}  // namespace v0
}  // namespace crew
