// Tests for the spawn path ProcessPool and Cluster share (src/process/spawn.hpp) and the
// restart backoff (backoff.hpp). This executable is also the program it starts: as a plain
// child it lists its descriptors on stdout, as a ProcessPool worker it serves a task returning
// the descriptors it started with, and as a cluster worker it writes them to a file.
#include "spawn.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/process.hpp>

#include "backoff.hpp"
#include "process/observe.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using crew::detail::CloseMode;
using crew::detail::SpawnStep;
using ::testing::HasSubstr;
namespace d = crew::detail;

constexpr const char* kRole = "CREW_SPAWN_TEST_ROLE";
constexpr const char* kOut = "CREW_SPAWN_TEST_OUT";

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

/// This process's open descriptors (the listing's own excluded).
std::vector<int> open_fds() {
  std::vector<int> out;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return out;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != ::dirfd(dir)) out.push_back(fd);
  }
  ::closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (int fd : v) s += (s.empty() ? "" : " ") + std::to_string(fd);
  return s;
}

std::vector<int> parse(const std::string& s) {
  std::vector<int> v;
  std::istringstream in(s);
  for (int fd; in >> fd;) v.push_back(fd);
  return v;
}

std::vector<int> g_startup_fds;  // a pool worker's descriptors before serve()

const crew::Tasks& tasks() {
  static const crew::Tasks t = [] {
    crew::Tasks t;
    t.add("fds", [] { return g_startup_fds; });
    t.add("pid", [] { return static_cast<int>(::getpid()); });
    return t;
  }();
  return t;
}

std::string self_exe() {
  return std::filesystem::read_symlink("/proc/self/exe").string();
}

std::string read_all(int fd) {
  std::string s;
  char buf[512];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
  }
}

std::vector<std::string> env_with(const std::string& role) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "CREW_SPAWN_TEST_ROLE=", 21) != 0) env.emplace_back(*e);
  }
  env.push_back(std::string(kRole) + "=" + role);
  return env;
}

// Forces a close mode for a scope, automatic again after.
struct ForcedCloseMode {
  explicit ForcedCloseMode(CloseMode m) { d::force_close_mode(m); }
  ~ForcedCloseMode() { d::force_close_mode(CloseMode::automatic); }
};

// Descriptors a careless program leaves open without CLOEXEC, one of them far up: a worker must
// inherit none of them.
struct Leaks {
  Leaks() {
    low = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC, on purpose
    high = ::fcntl(low, F_DUPFD, 900);
    EXPECT_GE(low, 0);
    EXPECT_GE(high, 900);
  }
  ~Leaks() {
    ::close(low);
    ::close(high);
  }
  int low, high;
};

crew::ProcessPoolOptions pool_opts() {
  crew::ProcessPoolOptions o;
  o.tasks = &tasks();
  o.max_workers = 1;
  o.restart_backoff = 1ms;
  o.name = "spawntest";
  return o;
}

// A child that lists its descriptors on stdout, through a pipe; returns the listing.
std::vector<int> child_listing(const std::vector<d::FdMove>& extra = {}) {
  d::FdPair out = d::make_pipe("test");
  d::SpawnRequest r;
  r.who = "test";
  r.executable = self_exe();
  r.argv = {r.executable};
  r.env = env_with("list_fds");
  r.fds = {{out.second.get(), 1}};
  r.fds.insert(r.fds.end(), extra.begin(), extra.end());
  d::Child child = d::spawn_process(r);
  out.second.reset();
  const std::string text = read_all(out.first.get());
  const int status = child.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  return parse(text);
}

// --- restart backoff -----------------------------------------------------------------------

TEST(RestartBackoff, GrowsByHalfUpToTheCapAndStartsOverAfterAStableRun) {
  using ms = std::chrono::milliseconds;
  const auto t0 = std::chrono::steady_clock::now();
  d::RestartBackoff b(ms(100), ms(1000), ms(5000));
  EXPECT_FALSE(b.unstable());
  EXPECT_TRUE(b.may_start(t0));
  std::vector<long> delays;
  for (int i = 0; i < 8; ++i) delays.push_back(b.fail(t0).count());
  EXPECT_EQ(delays, (std::vector<long>{100, 150, 225, 337, 505, 757, 1000, 1000}));
  EXPECT_TRUE(b.unstable());
  EXPECT_EQ(b.next(), t0 + ms(1000));
  EXPECT_FALSE(b.may_start(t0 + ms(999)));
  EXPECT_TRUE(b.may_start(t0 + ms(1000)));
  // Up, but not long enough: the delay stays, the next start waits it out from now.
  b.up_for(ms(4999));
  EXPECT_EQ(b.wait_from(t0 + ms(2000)).count(), 1000);
  EXPECT_EQ(b.next(), t0 + ms(3000));
  b.up_for(ms(5000));
  EXPECT_FALSE(b.unstable());
  EXPECT_EQ(b.wait_from(t0).count(), 0);
  EXPECT_EQ(b.fail(t0).count(), 100);  // from the start again
  b.hold(t0);
  EXPECT_EQ(b.next(), t0 + ms(1000));
  // A first delay above the cap is capped too.
  d::RestartBackoff big(ms(20'000));
  EXPECT_EQ(big.fail(t0), d::RestartBackoff::kCap);
}

// --- spawn_process --------------------------------------------------------------------------

TEST(Spawn, AChildInheritsOnlyWhatItIsGiven) {
  Leaks leaks;
  for (CloseMode mode : {CloseMode::automatic, CloseMode::proc_fd, CloseMode::close_loop}) {
    ForcedCloseMode forced(mode);
    SCOPED_TRACE(static_cast<int>(mode));
    // Stdio is not kept: only 1 (the pipe) and, moved, a descriptor at 7 (a gap at 2..6).
    EXPECT_EQ(child_listing({{leaks.low, 7}}), (std::vector<int>{1, 7}));
    EXPECT_EQ(child_listing(), (std::vector<int>{1}));
  }
}

TEST(Spawn, MovesWorkWhateverTheNumberingInTheParent) {
  // Each source sits where the other goes: a swap, two different files.
  d::UniqueFd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  d::UniqueFd b(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(a && b);
  d::FdPair out = d::make_pipe("test");
  d::SpawnRequest r;
  r.who = "test";
  r.executable = self_exe();
  r.argv = {r.executable};
  r.env = env_with("stat_fds");
  r.fds = {{out.second.get(), 1}, {a.get(), b.get()}, {b.get(), a.get()}};
  struct stat sa {
  }, sb{};
  ASSERT_EQ(::fstat(a.get(), &sa), 0);
  ASSERT_EQ(::fstat(b.get(), &sb), 0);
  d::Child child = d::spawn_process(r);
  out.second.reset();
  const std::string text = read_all(out.first.get());
  child.wait();
  // The child prints "<fd>:<inode>" for each descriptor above 2: each file where the other was.
  EXPECT_THAT(text, HasSubstr(fmt::format("{}:{}", b.get(), sa.st_ino)));
  EXPECT_THAT(text, HasSubstr(fmt::format("{}:{}", a.get(), sb.st_ino)));
}

TEST(Spawn, EveryFailingStepThrowsNamingItAndLeavesNothingOpen) {
  const auto before = open_fds();
  const int epoll = -1;  // epoll_watch is only reached through the injection below
  for (int s = 1; s < static_cast<int>(SpawnStep::count_); ++s) {
    const auto step = static_cast<SpawnStep>(s);
    if (step == SpawnStep::setrlimit && kSanitized) continue;  // no address limit there
    SCOPED_TRACE(d::spawn_step_name(step));
    d::inject_spawn_failure(step, EIO);
    try {
      // What ProcessPool does, in the same order, with every descriptor owned.
      d::FdPair sock = d::make_socketpair("test");
      d::FdPair out = d::make_pipe("test");
      d::UniqueFd null = d::open_fd("test", "/dev/null", O_RDONLY);
      d::set_nonblocking("test", sock.first.get());
      d::SpawnRequest r;
      r.who = "test";
      r.executable = self_exe();
      r.argv = {r.executable};
      r.env = env_with("list_fds");
      r.fds = {{null.get(), 0}, {out.second.get(), 1}, {sock.second.get(), 3}};
      r.default_signals = {SIGPIPE};
      r.address_limit = kSanitized ? 0 : (std::size_t{64} << 30);
      if (step == SpawnStep::epoll_ctl) d::epoll_watch("test", epoll, sock.first.get(), 1);
      d::Child child = d::spawn_process(r);
      ADD_FAILURE() << "no failure";
    } catch (const d::SpawnError& e) {
      EXPECT_EQ(e.step(), step);
      EXPECT_EQ(e.code().value(), EIO);
      EXPECT_THAT(e.what(), HasSubstr(d::spawn_step_name(step)));
      EXPECT_THAT(e.what(), HasSubstr("(EIO: Input/output error)"));
      EXPECT_THAT(e.what(), HasSubstr("test: "));
      if (d::spawn_step_in_child(step)) {
        EXPECT_THAT(e.what(), HasSubstr("in the new process"));
      }
    }
    EXPECT_EQ(open_fds(), before);
    EXPECT_THAT(crew_test::children_of(::getpid()), ::testing::IsEmpty());  // reaped too
  }
  // And then a start that works, still without a leak.
  EXPECT_EQ(child_listing(), (std::vector<int>{1}));
  EXPECT_EQ(open_fds(), before);
}

TEST(Spawn, RealFailuresInTheChildAreReportedWithTheirReason) {
  const auto before = open_fds();
  d::SpawnRequest r;
  r.who = "crew::ProcessPool";
  r.executable = "/nonexistent/worker";
  r.argv = {r.executable};
  try {
    (void)d::spawn_process(r);
    ADD_FAILURE() << "spawned a program that does not exist";
  } catch (const d::SpawnError& e) {
    EXPECT_EQ(e.step(), SpawnStep::execve);
    EXPECT_STREQ(e.what(),
                 "crew::ProcessPool: in the new process, execve of '/nonexistent/worker' failed "
                 "(ENOENT: No such file or directory); the program (or its ELF interpreter) "
                 "does not exist");
  }
  r.executable = "/";
  r.argv = {r.executable};
  try {
    (void)d::spawn_process(r);
    ADD_FAILURE() << "spawned a directory";
  } catch (const std::system_error& e) {  // a SpawnError is a std::system_error
    EXPECT_EQ(e.code().value(), EACCES);
    EXPECT_THAT(e.what(), HasSubstr("is not executable"));
  }
  // A descriptor to pass that is not open: the parent's duplicate fails first, naming it.
  r.executable = "/bin/true";
  r.argv = {r.executable};
  r.fds = {{1000, 3}};
  EXPECT_THAT([&] { (void)d::spawn_process(r); },
              ::testing::ThrowsMessage<d::SpawnError>(
                  HasSubstr("fcntl(F_DUPFD_CLOEXEC) of descriptor 1000 failed (EBADF")));
  r.fds = {{0, 3}, {0, 3}};
  EXPECT_THROW((void)d::spawn_process(r), std::invalid_argument);
  r.fds = {{0, 1}};
  r.keep_stdio = true;
  EXPECT_THROW((void)d::spawn_process(r), std::invalid_argument);
  EXPECT_EQ(open_fds(), before);
}

TEST(Spawn, PidfdOpenOnAnOldKernelSaysWhichKernelIsNeeded) {
  d::inject_spawn_failure(SpawnStep::pidfd_open, ENOSYS);
  d::SpawnRequest r;
  r.who = "crew::ProcessPool";
  r.executable = "/bin/true";
  r.argv = {r.executable};
  EXPECT_THAT([&] { (void)d::spawn_process(r); },
              ::testing::ThrowsMessage<d::SpawnError>(::testing::StrEq(
                  "crew::ProcessPool: pidfd_open failed (ENOSYS: Function not implemented); "
                  "Linux 5.3 or later is needed")));
  EXPECT_THAT(crew_test::children_of(::getpid()), ::testing::IsEmpty());
}

TEST(Spawn, SignalsGoThroughThePidfdAndAnExitedProcessIsNoError) {
  d::FdPair in = d::make_pipe("test");
  d::SpawnRequest r;
  r.who = "test";
  r.executable = self_exe();
  r.argv = {r.executable};
  r.env = env_with("wait_stdin");  // blocks until its stdin closes
  r.fds = {{in.first.get(), 0}};
  d::Child child = d::spawn_process(r);
  ASSERT_GE(child.pidfd(), 0);
  EXPECT_EQ(d::signal_process(child.pidfd(), SIGKILL), 0);
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // Reaped: the pid may belong to someone else by now, the pidfd never does.
  EXPECT_EQ(d::signal_process(child.pidfd(), SIGTERM), 0);
  EXPECT_EQ(d::signal_process(-1, SIGTERM), EBADF);
}

TEST(Spawn, ADestroyedChildIsKilledAndReaped) {
  d::FdPair in = d::make_pipe("test");
  d::SpawnRequest r;
  r.who = "test";
  r.executable = self_exe();
  r.argv = {r.executable};
  r.env = env_with("wait_stdin");
  r.fds = {{in.first.get(), 0}};
  pid_t pid = -1;
  {
    d::Child child = d::spawn_process(r);
    pid = child.pid();
    EXPECT_THAT(crew_test::children_of(::getpid()), ::testing::Contains(pid));
  }
  EXPECT_THAT(crew_test::children_of(::getpid()), ::testing::Not(::testing::Contains(pid)));
}

// --- through ProcessPool ------------------------------------------------------------------

TEST(SpawnPool, AWorkerInheritsExactlyItsSevenDescriptors) {
  Leaks leaks;
  for (CloseMode mode : {CloseMode::automatic, CloseMode::proc_fd, CloseMode::close_loop}) {
    ForcedCloseMode forced(mode);
    SCOPED_TRACE(static_cast<int>(mode));
    crew::ProcessPool pool(pool_opts());
    // stdin (/dev/null), stdout and stderr pipes, channel, doorbell, pool page, own page.
    EXPECT_EQ(pool.run<std::vector<int>>("fds").get(), (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
  }
}

TEST(SpawnPool, AFailureAtAnyStepIsLoggedRetriedAndLeaksNothing) {
  // Every step a pool's spawn reaches; setrlimit only with an address limit.
  std::vector<SpawnStep> steps;
  for (int s = 1; s < static_cast<int>(SpawnStep::count_); ++s) {
    if (static_cast<SpawnStep>(s) == SpawnStep::setrlimit && kSanitized) continue;
    steps.push_back(static_cast<SpawnStep>(s));
  }
  const auto before = open_fds();
  for (SpawnStep step : steps) {
    SCOPED_TRACE(d::spawn_step_name(step));
    std::mutex m;
    std::vector<std::string> lines;
    auto o = pool_opts();
    o.memory_limit_bytes = std::size_t{8} << 30;
    o.log = [&](const crew::ProcessLogLine& l) {
      std::lock_guard lock(m);
      lines.emplace_back(l.line);
    };
    // The pool's constructor watches its doorbell: the failure is for the spawn's epoll_ctl.
    d::inject_spawn_failure(step, EMFILE, step == SpawnStep::epoll_ctl ? 1 : 0);
    {
      crew::ProcessPool pool(o);
      // The first start fails; the retry after restart_backoff runs the task.
      EXPECT_GT(pool.run<int>("pid").get(), 0);
      EXPECT_EQ(pool.stats().startup_failures, 1U);
    }
    std::lock_guard lock(m);
    EXPECT_THAT(lines, ::testing::Contains(::testing::AllOf(
                           ::testing::StartsWith("crew: could not start a worker: "
                                                 "crew::ProcessPool: "),
                           HasSubstr(d::spawn_step_name(step)),
                           HasSubstr("(EMFILE: Too many open files); this process has too many "
                                     "descriptors open: raise RLIMIT_NOFILE"))));
    EXPECT_EQ(open_fds(), before);
  }
}

TEST(SpawnPool, AProgramThatCannotBeExecutedFailsTheTasksWithTheReason) {
  // Executable by its mode, so the constructor accepts it, but not a program.
  const auto path = std::filesystem::temp_directory_path() /
                    fmt::format("crew-spawn-test-{}-not-a-program", ::getpid());
  {
    std::ofstream f(path);
    f << "not a program\n";
  }
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  const auto before = open_fds();
  {
    auto o = pool_opts();
    o.tasks = nullptr;
    o.executable = path.string();
    o.max_startup_failures = 3;
    o.log = [](const crew::ProcessLogLine&) {};
    crew::ProcessPool pool(o);
    auto f = pool.run<int>("pid");
    try {
      (void)f.get();
      ADD_FAILURE() << "the task ran";
    } catch (const crew::WorkerCrashed& e) {
      EXPECT_THAT(e.what(), HasSubstr("keep failing to start (3 times in a row)"));
      EXPECT_THAT(e.what(), HasSubstr("execve of '" + path.string() + "' failed (ENOEXEC"));
    }
    EXPECT_EQ(pool.stats().startup_failures, 3U);
    EXPECT_THROW((void)pool.run<int>("pid"), crew::WorkerCrashed);  // the breaker is open
  }
  EXPECT_EQ(open_fds(), before);
  std::filesystem::remove(path);
}

// --- through Cluster ------------------------------------------------------------------------

struct ClusterRun {
  ClusterRun()
      : out(std::filesystem::temp_directory_path() /
            fmt::format("crew-spawn-test-{}-cluster", ::getpid())) {
    std::filesystem::remove(out);
    ::setenv(kOut, out.c_str(), 1);
  }
  ~ClusterRun() {
    ::unsetenv(kOut);
    ::unsetenv(kRole);
    std::filesystem::remove(out);
  }
  std::string report() const {
    std::ifstream f(out);
    std::string s;
    std::getline(f, s);
    return s;
  }
  std::filesystem::path out;
};

crew::ClusterOptions cluster_opts() {
  crew::ClusterOptions o;
  o.workers = 1;
  o.argv = {"/proc/self/exe"};
  o.restart_backoff = 1ms;
  return o;
}

std::vector<int> parent_stdio() {
  std::vector<int> v;
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0) v.push_back(fd);
  }
  return v;
}

TEST(SpawnCluster, AWorkerInheritsStdioTheSocketTheChannelAndTheBoardOnly) {
  Leaks leaks;
  for (CloseMode mode : {CloseMode::automatic, CloseMode::proc_fd, CloseMode::close_loop}) {
    ForcedCloseMode forced(mode);
    SCOPED_TRACE(static_cast<int>(mode));
    ClusterRun run;
    ::setenv(kRole, "report_fds", 1);  // the worker reports, then exits 78 (stops the cluster)
    crew::Cluster cluster(cluster_opts());
    EXPECT_EQ(cluster.run(), 78);
    auto expected = parent_stdio();
    expected.insert(expected.end(), {3, 4, 5});
    EXPECT_EQ(run.report(), "1: " + join(expected));
  }
}

TEST(SpawnCluster, AWorkerThatCannotBeStartedMakesRunThrowTheReason) {
  const auto before = open_fds();
  {
    ::setenv(kRole, "report_fds", 1);
    crew::Cluster cluster(cluster_opts());
    d::inject_spawn_failure(SpawnStep::execve, EACCES);
    EXPECT_THAT([&] { (void)cluster.run(); },
                ::testing::ThrowsMessage<std::system_error>(HasSubstr(
                    "crew::Cluster: in the new process, execve of '/proc/self/exe' failed "
                    "(EACCES")));
    ::unsetenv(kRole);
  }
  EXPECT_EQ(open_fds(), before);
  EXPECT_THAT(crew_test::children_of(::getpid()), ::testing::IsEmpty());
}

TEST(SpawnCluster, ARestartThatCannotBeStartedIsRetried) {
  const auto before = open_fds();
  {
    ClusterRun run;
    // Worker 1 exits at once (an unstable exit: restart after the backoff); starting worker 2
    // fails in the child; worker 3 reports and ends the cluster with 78.
    ::setenv(kRole, "first_exits", 1);
    crew::Cluster cluster(cluster_opts());
    d::inject_spawn_failure(SpawnStep::dup2, EBADF, 1);
    EXPECT_EQ(cluster.run(), 78);
    EXPECT_THAT(run.report(), ::testing::StartsWith("3: "));
  }
  EXPECT_EQ(open_fds(), before);
}

// --- the programs ---------------------------------------------------------------------------

int child_main(const std::string& role) {
  if (role == "list_fds") {
    const std::string s = join(open_fds()) + "\n";
    return ::write(1, s.data(), s.size()) == static_cast<ssize_t>(s.size()) ? 0 : 1;
  }
  if (role == "stat_fds") {
    std::string s;
    for (int fd : open_fds()) {
      struct stat st {};
      if (fd > 2 && ::fstat(fd, &st) == 0) s += fmt::format("{}:{}\n", fd, st.st_ino);
    }
    return ::write(1, s.data(), s.size()) == static_cast<ssize_t>(s.size()) ? 0 : 1;
  }
  if (role == "wait_stdin") {
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    return 0;
  }
  return 2;
}

int cluster_worker_main(const std::string& role) {
  const auto fds = open_fds();  // before anything of this program opens one
  const char* id = std::getenv("CREW_CLUSTER_WORKER");
  if (role == "first_exits" && id != nullptr && std::strcmp(id, "1") == 0) return 1;
  std::ofstream(std::getenv(kOut)) << (id != nullptr ? id : "?") << ": " << join(fds) << "\n";
  return 78;
}

}  // namespace

int main(int argc, char** argv) {
  const char* role = std::getenv(kRole);
  if (crew::is_cluster_worker()) return cluster_worker_main(role != nullptr ? role : "");
  if (crew::is_worker_process()) {
    g_startup_fds = open_fds();
    return crew::worker_main(tasks());
  }
  if (role != nullptr) return child_main(role);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
