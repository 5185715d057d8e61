// Seed scenario: "message passing both ways between the main thread and a worker".
//
// The main thread sends requests as crew::Message maps ({"id", "op", "args"}); the worker answers
// each with a reply map carrying the same id ({"id", "ok", "result"} or {"id", "ok", "error"}).
// Messages on a port arrive in the order they were posted, so replies could be matched by
// position, but ids keep the protocol honest. At the end the main thread terminates the worker,
// which is blocked in receive() waiting for the next request.
//
// Node.js equivalent:
//   worker.postMessage({id: 1, op: 'sum', args: [1, 2, 3]});
//   worker.on('message', ({id, result}) => ...);
//   await worker.terminate();

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>

#include <crew/crew.hpp>

namespace {

// The worker's side: one reply per request, until the port closes.
void calculator(crew::WorkerContext& ctx) {
  while (std::optional<crew::Message> request = ctx.parent().receive()) {
    crew::Message::Map reply;
    reply.emplace("id", (*request)["id"].as<std::int64_t>());
    const std::string& op = (*request)["op"].as<std::string>();
    const crew::Message::Array& args = (*request)["args"].as<crew::Message::Array>();
    if (op == "sum") {
      double sum = 0;
      for (const crew::Message& a : args) sum += a.to_double();
      reply.emplace("ok", true);
      reply.emplace("result", sum);
    } else if (op == "upper") {
      std::string text = args.at(0).as<std::string>();
      for (char& c : text) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
      reply.emplace("ok", true);
      reply.emplace("result", std::move(text));
    } else {
      reply.emplace("ok", false);
      reply.emplace("error", "unknown op '" + op + "'");
    }
    ctx.parent().post(std::move(reply));
  }
  std::printf("worker: port closed, leaving\n");
}

crew::Message request(std::int64_t id, const char* op, crew::Message::Array args) {
  crew::Message::Map m;
  m.emplace("id", id);
  m.emplace("op", op);
  m.emplace("args", std::move(args));
  return m;
}

}  // namespace

int main() {
  int failures = 0;
  crew::Worker worker(calculator, {.name = "crew-calc"});

  // Post all requests first (posting never waits for the worker), then collect the replies.
  crew::Message::Array sum_args;
  for (int i = 1; i <= 10; ++i) sum_args.emplace_back(i);
  sum_args.emplace_back(0.5);
  crew::Message::Array upper_args;
  upper_args.emplace_back("hello, worker");
  crew::Message::Array no_args;

  crew::Message requests[] = {request(1, "sum", std::move(sum_args)),
                              request(2, "upper", std::move(upper_args)),
                              request(3, "divide_by_zero", std::move(no_args))};
  for (crew::Message& r : requests) {
    std::printf("main -> worker: %s\n", r.to_string().c_str());
    if (!worker.post(std::move(r))) {
      std::printf("FAIL: post refused\n");
      return 1;
    }
  }

  for (std::int64_t expected_id = 1; expected_id <= 3; ++expected_id) {
    std::optional<crew::Message> reply = worker.receive();
    if (!reply) {
      std::printf("FAIL: the worker closed its port early\n");
      return 1;
    }
    std::printf("worker -> main: %s\n", reply->to_string().c_str());
    if ((*reply)["id"].as<std::int64_t>() != expected_id) {
      std::printf("FAIL: expected the reply to request %lld\n",
                  static_cast<long long>(expected_id));
      ++failures;
      continue;
    }
    const bool ok = (*reply)["ok"].as<bool>();
    if (expected_id == 1 && (!ok || (*reply)["result"].as<double>() != 55.5)) ++failures;
    if (expected_id == 2 && (!ok || (*reply)["result"].as<std::string>() != "HELLO, WORKER")) {
      ++failures;
    }
    if (expected_id == 3 && ok) ++failures;
  }

  // The worker now waits in receive(). terminate() signals its stop token and closes the port,
  // which wakes that receive(); the Future gives the exit code (1: terminated, as in Node).
  const int code = worker.terminate().get();
  std::printf("main: worker terminated, exit code %d\n", code);
  if (code != 1) {
    std::printf("FAIL: expected exit code 1 after terminate()\n");
    ++failures;
  }
  if (worker.post(crew::Message("too late"))) {
    std::printf("FAIL: post succeeded after terminate()\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
