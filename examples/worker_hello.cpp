// Seed scenario: "a basic worker that says hello".
//
// A crew::Worker is a long-lived thread with a message port to its parent. The worker function
// gets a WorkerContext: its end of that port (Node's parentPort), the data it was started with
// (Node's workerData) and its id (Node's threadId). Here it posts one greeting; the main thread
// receives it, then sees the port end once the worker has exited, and reads the exit code.
//
// Node.js equivalent:
//   const w = new Worker(`parentPort.postMessage('hello from ' + workerData.name)`,
//                        {eval: true, workerData: {name: 'greeter'}});
//   w.on('message', console.log);

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include <crew/crew.hpp>

int main() {
  int failures = 0;
  std::printf("main: is_main_thread() = %s\n", crew::is_main_thread() ? "true" : "false");

  crew::Message::Map data;
  data.emplace("name", "greeter");
  crew::Worker worker(
      [](crew::WorkerContext& ctx) {
        crew::Message::Map hello;
        hello.emplace("text", "hello from worker " + ctx.data()["name"].as<std::string>());
        hello.emplace("thread_id", ctx.id());
        hello.emplace("is_main_thread", crew::is_main_thread());
        hello.emplace("in_worker", crew::this_worker() == &ctx);
        ctx.parent().post(std::move(hello));
      },
      {.name = "crew-hello", .data = std::move(data)});

  // receive() waits for the message; the worker's thread id travels with it.
  std::optional<crew::Message> reply = worker.receive();
  if (!reply) {
    std::printf("FAIL: the worker exited without saying hello\n");
    return 1;
  }
  std::printf("main: received %s\n", reply->to_string().c_str());
  const auto& text = (*reply)["text"].as<std::string>();
  if (text != "hello from worker greeter") {
    std::printf("FAIL: unexpected text '%s'\n", text.c_str());
    ++failures;
  }
  if ((*reply)["thread_id"].as<std::uint64_t>() != worker.id() ||
      (*reply)["is_main_thread"].as<bool>() || !(*reply)["in_worker"].as<bool>()) {
    std::printf("FAIL: the worker's view of itself is wrong\n");
    ++failures;
  }

  // After its last message, receive() returns empty: the worker has exited and closed the port.
  if (auto extra = worker.receive()) {
    std::printf("FAIL: unexpected extra message %s\n", extra->to_string().c_str());
    ++failures;
  } else {
    std::printf("main: the port is closed, the worker is done\n");
  }

  const int code = worker.join();
  std::printf("main: worker %llu exited with code %d\n",
              static_cast<unsigned long long>(worker.id()), code);
  if (code != 0) {
    std::printf("FAIL: expected exit code 0\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
