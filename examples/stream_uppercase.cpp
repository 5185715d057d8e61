// Seed scenario: Node's uppercase Transform stream, stdin to stdout.
//
//     process.stdin.pipe(new Transform({ transform(chunk, enc, cb) {
//       cb(null, chunk.toString().toUpperCase()); } })).pipe(process.stdout);
//
// In crew: read_fd(0) | uppercase() | write_fd(1), with backpressure (a slow stdout pauses the
// reads) and a Summary of what each stage did. Try `echo hello | example_stream_uppercase`.
// When stdin is a terminal, or nothing arrives on it, the program runs a built-in sample
// instead and checks the output, so running it unattended (as CTest does) verifies something.

#include <cstdio>
#include <string>
#include <vector>

#include <poll.h>
#include <unistd.h>

#include <crew/stream.hpp>

namespace cs = crew::stream;

namespace {

// True when stdin has data (or end of file) within 200 ms and is not a terminal.
bool stdin_has_input() {
  if (::isatty(0)) return false;
  pollfd p{0, POLLIN, 0};
  if (::poll(&p, 1, 200) <= 0) return false;
  if ((p.revents & POLLIN) == 0) return false;  // POLLHUP alone: an empty pipe
  return true;
}

int run_sample() {
  const std::string sample =
      "the quick brown fox\njumps over the lazy dog\n"
      "streams: a readable piped through a transform into a writable\n";
  std::vector<crew::Buffer> chunks;
  for (std::size_t at = 0; at < sample.size(); at += 16) {  // small chunks, like a slow pipe
    chunks.push_back(crew::Buffer::copy_of(std::string_view(sample).substr(at, 16)));
  }
  auto p = cs::from(std::move(chunks)) | cs::uppercase() | cs::collect();
  const cs::Summary summary = p.run().get();
  std::string out;
  for (const crew::Buffer& b : p.take()) out += b.view();
  std::fputs(out.c_str(), stdout);
  std::string expected = sample;
  for (char& c : expected) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  std::fprintf(stderr, "(built-in sample; pipe text into stdin to transform it)\n%s",
               summary.to_string().c_str());
  if (out != expected) {
    std::fprintf(stderr, "FAILED: the output is not the upper-cased sample\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main() {
  if (!stdin_has_input()) return run_sample();
  auto p = cs::read_fd(0) | cs::uppercase() | cs::write_fd(1);
  try {
    const cs::Summary s = p.run().get();
    std::fflush(stdout);
    std::fprintf(stderr, "%s", s.to_string().c_str());
    if (s.stage("read_fd").bytes_out != s.stage("write_fd").bytes_in) {
      std::fprintf(stderr, "FAILED: bytes read and written differ\n");
      return 1;
    }
    if (s.stage("read_fd").bytes_out == 0) return run_sample();  // stdin was empty
  } catch (const std::exception& e) {
    std::fprintf(stderr, "example_stream_uppercase: %s\n", e.what());
    return 1;
  }
  return 0;
}
