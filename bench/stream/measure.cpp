// Runs a command and records its wall time and peak resident set size (the benchmark's stand-in
// for GNU `time -v`, which Debian does not install by default).
//
//   crew_bench_measure RESULT_FILE COMMAND [ARG]...   (stdin/stdout are passed through)
//
// Writes "<seconds> <peak RSS KiB> <exit status>" to RESULT_FILE; exits with the command's status.
#include <chrono>
#include <cstdio>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s RESULT_FILE COMMAND [ARG]...\n", argv[0]);
    return 64;
  }
  auto start = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return 71;
  }
  if (pid == 0) {
    execvp(argv[2], argv + 2);
    std::perror(argv[2]);
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  while (wait4(pid, &status, 0, &usage) < 0) {
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (FILE* f = std::fopen(argv[1], "w")) {
    std::fprintf(f, "%.3f %ld %d\n", seconds, usage.ru_maxrss, code);
    std::fclose(f);
  }
  return code;
}
