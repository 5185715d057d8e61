// tests/redis: a real redis-server of the test's own, on a free loopback port, in a fresh
// directory that the destructor removes. Never the system service: a test that needs Redis
// fails (it never skips) when redis-server is missing.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

namespace crew_test {

/// Starts `args` (args[0]: the program's path) as a child that dies with this process
/// (PR_SET_PDEATHSIG), every signal unblocked, stdin and stdout on /dev/null and stderr too unless
/// `keep_stderr`; returns its pid. Throws std::runtime_error when fork fails.
inline pid_t spawn_tied(std::vector<std::string> args, bool keep_stderr) {
  std::vector<char*> argv;  // made before the fork: the child only calls async-signal-safe code
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("spawn_tied: fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the parent died before the line above
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    if (!keep_stderr) ::dup2(null, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

struct RedisServerOptions {
  /// AOF with `appendfsync always`, so data written before kill9() survives restart().
  bool appendonly = false;
  /// Where the server's directory (AOF, log) is made; empty: the system's temporary directory.
  /// A tmpfs such as /dev/shm makes each fsync free: a process killed with SIGKILL loses only
  /// what it had not written yet either way (fsync guards against a machine crash), and on a
  /// VM disk every fsync may cost milliseconds.
  std::filesystem::path parent{};
};

class RedisServer {
 public:
  explicit RedisServer(RedisServerOptions options = {}) : options_(options) {
    binary_ = find_binary();
    const auto parent =
        options_.parent.empty() ? std::filesystem::temp_directory_path() : options_.parent;
    std::string pattern = (parent / "crew-redis-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("redis_server: mkdtemp failed");
    dir_ = pattern;
    // redis-server has no --port 0: take a port the kernel just handed out, and pick another
    // if someone else binds it first (the server then exits at once).
    for (int attempt = 1;; ++attempt) {
      port_ = free_port();
      if (start()) return;
      if (attempt == 5) throw std::runtime_error("redis-server did not start: " + log_tail());
    }
  }
  ~RedisServer() {
    stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  [[nodiscard]] std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] int port() const { return port_; }

  /// SIGTERM and wait: Redis shuts down cleanly (and flushes its AOF).
  void stop() { end(SIGTERM); }
  /// SIGKILL: a crash, nothing flushed that was not already.
  void kill9() { end(SIGKILL); }
  /// Starts again on the same port and directory, so an AOF is loaded back.
  void restart() {
    stop();
    if (!start()) throw std::runtime_error("redis-server did not restart: " + log_tail());
  }
  /// SIGSTOP / SIGCONT: a server that accepts connections but never answers.
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  static std::string find_binary() {
    std::vector<std::string> dirs;
    if (const char* path = std::getenv("PATH")) {
      std::stringstream in(path);
      for (std::string dir; std::getline(in, dir, ':');) dirs.push_back(dir);
    }
    dirs.insert(dirs.end(), {"/usr/bin", "/usr/sbin", "/usr/local/bin"});
    for (const auto& dir : dirs) {
      auto candidate = std::filesystem::path(dir) / "redis-server";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    }
    throw std::runtime_error("redis-server not found on PATH: run scripts/bootstrap");
  }

  static int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    const bool ok = fd >= 0 &&
                    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok) throw std::runtime_error("redis_server: no free loopback port");
    return ntohs(address.sin_port);
  }

  // Whether the server answers PING; false when it exited (its port was taken).
  bool start() {
    const std::string log = (dir_ / "redis.log").string();
    std::vector<std::string> args = {
        binary_,       "--port",       std::to_string(port_),
        "--bind",      "127.0.0.1",    "--dir",
        dir_.string(), "--save",       "",
        "--daemonize", "no",           "--logfile",
        log,           "--appendonly", options_.appendonly ? "yes" : "no"};
    if (options_.appendonly) args.insert(args.end(), {"--appendfsync", "always"});
    // A test that crashes never runs the destructor: the server must not outlive it.
    pid_ = spawn_tied(std::move(args), false);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (pong()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    end(SIGKILL);
    throw std::runtime_error("redis-server did not answer PING within 10 s: " + log_tail());
  }

  bool pong() const {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    timeval timeout{0, 500'000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<std::uint16_t>(port_));
    char reply[8] = {};
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
              ::send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6 && ::recv(fd, reply, 7, 0) > 0 &&
              std::string_view(reply).starts_with("+PONG");
    ::close(fd);
    return ok;
  }

  void end(int signal) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);  // a paused server cannot act on SIGTERM
    ::kill(pid_, signal);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (::waitpid(pid_, nullptr, WNOHANG) != pid_) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
  }

  std::string log_tail() const {
    std::ifstream in(dir_ / "redis.log");
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
  }

  RedisServerOptions options_;
  std::string binary_;
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// Polls `done` every 5 ms until it holds or `limit` passes (the figures a test waits for
/// change on other threads and processes, with nothing to wait on); true when it held.
template <class F>
bool eventually(F&& done, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

}  // namespace crew_test
