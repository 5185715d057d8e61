#include "heap_profile.hpp"

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>

#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <crew/errors.hpp>

namespace crew::inline v0::detail {
namespace {

constexpr std::string_view kJemalloc = "libjemalloc.so.2";
// Sampling on from the start, one sample per 2^19 bytes (512 KiB) allocated on average: cheap
// enough to leave on, fine enough for leaks of megabytes.
constexpr std::string_view kMallocConf = "prof:true,prof_active:true,lg_prof_sample:19";
constexpr auto kPollEvery = std::chrono::milliseconds(5);

// "<dir>/<worker>.<pid>.<tag>.heap": the pool computes the name the worker will write.
std::string profile_path(std::string_view dir, std::string_view worker, pid_t pid,
                         std::string_view tag) {
  return fmt::format("{}/{}.{}.{}.heap", dir, worker, pid, tag);
}

// The library this process already runs on (preloaded or linked), else the first candidate
// that exists: where the build found it, then the usual places. Empty when there is none.
std::string find_jemalloc() {
  const std::string name(kJemalloc);
  if (void* handle = ::dlopen(name.c_str(), RTLD_LAZY | RTLD_NOLOAD)) {
    link_map* map = nullptr;
    std::string path;
    if (::dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr) {
      path = map->l_name;
    }
    ::dlclose(handle);
    if (!path.empty()) return path;
  }
  static constexpr const char* kDirs[] = {CREW_JEMALLOC_DIR, "/usr/lib/" CREW_LIBRARY_ARCH,
                                          "/usr/local/lib", "/usr/lib64", "/usr/lib"};
  for (const char* dir : kDirs) {
    if (*dir == '\0') continue;
    std::string path = fmt::format("{}/{}", dir, name);
    if (::access(path.c_str(), R_OK) == 0) return path;
  }
  return {};
}

// The value of `key` in `env` ("KEY=value" entries); empty when it is not there.
std::string_view get_variable(const std::vector<std::string>& env, std::string_view key) {
  for (const auto& kv : env) {
    if (kv.size() > key.size() && kv.starts_with(key) && kv[key.size()] == '=') {
      return std::string_view(kv).substr(key.size() + 1);
    }
  }
  return {};
}

void set_variable(std::vector<std::string>& env, std::string_view key, std::string_view value) {
  std::erase_if(env, [&](const std::string& kv) {
    return kv.size() > key.size() && kv.starts_with(key) && kv[key.size()] == '=';
  });
  env.push_back(fmt::format("{}={}", key, value));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// ---- the worker's side -------------------------------------------------------------------------

using Mallctl = int (*)(const char*, void*, std::size_t*, void*, std::size_t);

int g_requests = -1;  // the write end of the pipe to the profile thread, for the handler

void on_profile_signal(int, siginfo_t* info, void*) {
  const int saved = errno;
  // The pool's sequence number; a signal sent by hand (kill) carries none.
  const std::int32_t seq =
      info->si_code == SI_QUEUE && info->si_value.sival_int > 0 ? info->si_value.sival_int : 0;
  [[maybe_unused]] const auto n = ::write(g_requests, &seq, sizeof seq);
  errno = saved;
}

// Why this worker cannot write profiles, or empty.
std::string profiling_unavailable(Mallctl mallctl) {
  if (mallctl == nullptr) {
    return "jemalloc is not this worker's allocator (mallctl not found): the LD_PRELOAD the pool "
           "set did not apply (a static or set-user-ID program ignores it)";
  }
  bool on = false;
  std::size_t size = sizeof on;
  if (mallctl("opt.prof", &on, &size, nullptr, 0) != 0 || !on) {
    return "jemalloc runs without profiling (opt.prof is false): it was built without it, or a "
           "MALLOC_CONF setting prof:false overrides heap_profiling; use Debian's libjemalloc2 "
           "and leave prof on";
  }
  return {};
}

// Writes a profile at `path` (under a temporary name first: the pool waits for the final one);
// returns why it could not, or empty.
std::string dump_profile(Mallctl mallctl, const std::string& path) {
  const std::string tmp = path + ".tmp";
  const char* name = tmp.c_str();
  if (const int rc = mallctl("prof.dump", nullptr, nullptr, &name, sizeof name); rc != 0) {
    return fmt::format(
        "jemalloc could not write {} (prof.dump: {}); check that the directory "
        "exists and is writable",
        tmp, std::strerror(rc));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return fmt::format("renaming {} to {} failed ({})", tmp, path, std::strerror(err));
  }
  return {};
}

void write_error(const std::string& path, const std::string& why) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << why;
  }
  std::rename(tmp.c_str(), path.c_str());
}

void profile_thread(int requests, std::string dir, std::string worker) {
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  // The one thread of the worker that takes SIGUSR2: its handler runs here, never in a task.
  pthread_sigmask(SIG_UNBLOCK, &usr2, nullptr);
  const auto mallctl = reinterpret_cast<Mallctl>(::dlsym(RTLD_DEFAULT, "mallctl"));
  const std::string unavailable = profiling_unavailable(mallctl);
  if (!unavailable.empty()) {
    fmt::print(stderr, "crew: heap_profiling is on, but {}\n", unavailable);
    std::fflush(stderr);
  }
  unsigned by_hand = 0;
  for (;;) {
    std::int32_t seq = 0;
    const ssize_t n = ::read(requests, &seq, sizeof seq);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof seq) return;
    const std::string path =
        profile_path(dir, worker, ::getpid(),
                     seq > 0 ? std::to_string(seq) : fmt::format("signal{}", ++by_hand));
    const std::string error = unavailable.empty() ? dump_profile(mallctl, path) : unavailable;
    if (error.empty()) {
      fmt::print(stdout, "crew: heap profile written to {}\n", path);
      std::fflush(stdout);
    } else {
      if (seq > 0) write_error(path + ".error", error);
      fmt::print(stderr, "crew: could not write a heap profile: {}\n", error);
      std::fflush(stderr);
    }
  }
}

}  // namespace

void enable_heap_profiling(ProcessPoolOptions& options, std::vector<std::string>& env) {
  namespace fs = std::filesystem;
  std::string dir = options.heap_profile_dir;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::error_code ec;
  fs::path resolved = fs::absolute(dir, ec).lexically_normal();
  if (!resolved.has_filename()) resolved = resolved.parent_path();  // a trailing '/'
  if (ec || !fs::is_directory(resolved, ec) || ::access(resolved.c_str(), W_OK | X_OK) != 0) {
    throw std::invalid_argument(fmt::format(
        "crew::ProcessPool: heap_profile_dir '{}' is not a writable directory; create it or "
        "name another (empty: $TMPDIR, else /tmp)",
        dir));
  }
  options.heap_profile_dir = resolved.string();
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer's runtime must come first and replaces malloc itself: a worker with jemalloc
  // preloaded would not even start.
  throw std::invalid_argument(
      "crew::ProcessPool: heap_profiling needs jemalloc as the workers' allocator, and in a "
      "sanitizer build (ASan, TSan) the sanitizer is; profile a release build");
#endif

  const std::string preloaded(get_variable(env, "LD_PRELOAD"));
  if (preloaded.find("libjemalloc") == std::string::npos) {
    const std::string library = find_jemalloc();
    if (library.empty()) {
      throw std::invalid_argument(
          "crew::ProcessPool: heap_profiling needs jemalloc (libjemalloc.so.2) and it is not "
          "installed; on Debian or Ubuntu: apt-get install libjemalloc2 (libjemalloc-dev brings "
          "jeprof, to read the profiles)");
    }
    // First in the list: jemalloc's malloc must be the one every other library binds to.
    set_variable(env, "LD_PRELOAD", preloaded.empty() ? library : library + ":" + preloaded);
  }
  const std::string conf(get_variable(env, "MALLOC_CONF"));
  // jemalloc applies settings in order: the user's come last and win.
  set_variable(env, "MALLOC_CONF",
               conf.empty() ? std::string(kMallocConf) : fmt::format("{},{}", kMallocConf, conf));
  set_variable(env, kWorkerHeapDirEnv, options.heap_profile_dir);
}

std::string take_heap_profile(const ProcessPoolOptions& options, HeapTarget target,
                              std::chrono::milliseconds timeout) {
  // Checked here: without the directory the worker could not even say why it wrote nothing.
  if (::access(options.heap_profile_dir.c_str(), W_OK | X_OK) != 0) {
    throw Error(
        fmt::format("crew::ProcessPool::heap_profile: heap_profile_dir {} is gone or not "
                    "writable ({}); recreate it",
                    options.heap_profile_dir, std::strerror(errno)));
  }
  static std::atomic<std::int32_t> next_seq{1};
  const std::int32_t seq = next_seq.fetch_add(1, std::memory_order_relaxed);
  const std::string path =
      profile_path(options.heap_profile_dir, target.name, target.pid, std::to_string(seq));
  const std::string error_path = path + ".error";

  siginfo_t info{};
  info.si_signo = SIGUSR2;
  info.si_code = SI_QUEUE;
  info.si_pid = ::getpid();
  info.si_uid = ::getuid();
  info.si_value.sival_int = seq;
  if (::syscall(SYS_pidfd_send_signal, target.pidfd.get(), SIGUSR2, &info, 0) != 0) {
    const int err = errno;
    if (err == ESRCH) {
      throw Error(
          fmt::format("crew::ProcessPool::heap_profile: worker {} (pid {}) has exited; "
                      "ask its replacement (see stats().per_worker)",
                      target.name, target.pid));
    }
    throw std::system_error(
        err, std::generic_category(),
        fmt::format("crew::ProcessPool::heap_profile: signalling worker {} (pid {}) failed",
                    target.name, target.pid));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (::access(path.c_str(), F_OK) == 0) return path;
    if (::access(error_path.c_str(), F_OK) == 0) {
      const std::string why = read_file(error_path);
      ::unlink(error_path.c_str());
      throw Error(
          fmt::format("crew::ProcessPool::heap_profile: worker {} (pid {}) could not "
                      "write its heap profile: {}",
                      target.name, target.pid, why));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      throw TimedOut(fmt::format(
          "crew::ProcessPool::heap_profile: worker {} (pid {}) wrote no heap profile within {} "
          "ms ({} is missing); its log lines may say why",
          target.name, target.pid, timeout.count(), path));
    }
    // The pidfd turns readable when the worker exits.
    pollfd exited{.fd = target.pidfd.get(), .events = POLLIN, .revents = 0};
    if (::poll(&exited, 1, static_cast<int>(kPollEvery.count())) > 0 &&
        ::access(path.c_str(), F_OK) != 0) {
      throw Error(
          fmt::format("crew::ProcessPool::heap_profile: worker {} (pid {}) exited before "
                      "it wrote its heap profile",
                      target.name, target.pid));
    }
  }
}

bool serve_heap_profiles(const char* worker_name) {
  const char* dir = std::getenv(kWorkerHeapDirEnv);
  if (dir == nullptr) return true;
  std::string profile_dir = dir;
  ::unsetenv(kWorkerHeapDirEnv);  // the worker's own children do not write profiles here
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0 || ::fcntl(fds[1], F_SETFL, O_NONBLOCK) != 0) {
    fmt::print(stderr, "crew::worker_main: heap profiles: pipe2 failed ({})\n",
               std::strerror(errno));
    return false;
  }
  // Blocked here before any task runs, so the threads tasks start block it too and SIGUSR2
  // never interrupts a task's system call.
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &usr2, nullptr);
  g_requests = fds[1];
  struct sigaction action {};
  action.sa_sigaction = on_profile_signal;
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGUSR2, &action, nullptr) != 0) {
    fmt::print(stderr, "crew::worker_main: heap profiles: sigaction(SIGUSR2) failed ({})\n",
               std::strerror(errno));
    return false;
  }
  try {
    std::thread(profile_thread, fds[0], std::move(profile_dir), std::string(worker_name)).detach();
  } catch (const std::system_error& e) {
    fmt::print(stderr, "crew::worker_main: heap profiles: could not start their thread ({})\n",
               e.what());
    return false;
  }
  return true;
}

}  // namespace crew::inline v0::detail
