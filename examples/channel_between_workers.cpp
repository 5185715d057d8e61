// Seed scenario: "two workers talking to each other directly through a MessageChannel".
//
// The main thread creates a crew::MessageChannel (two entangled ports) and sends one port to
// each worker inside an ordinary message. From then on the workers exchange messages over the
// channel themselves: the "pinger" sends numbers, the "ponger" answers each with its square. The
// main thread relays nothing; it only hears a summary from each worker through their parent
// ports at the end. The ports the main thread created are moved out of it: its MessageChannel
// object is left holding two unconnected ports.
//
// Node.js equivalent:
//   const {port1, port2} = new MessageChannel();
//   a.postMessage({peer: port1}, [port1]);
//   b.postMessage({peer: port2}, [port2]);

#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>

#include <crew/crew.hpp>

namespace {

constexpr std::int64_t kRounds = 1000;

// Waits for {"peer": <port>} from the parent and takes the port out of the message.
crew::MessagePort receive_peer(crew::WorkerContext& ctx) {
  std::optional<crew::Message> intro = ctx.parent().receive();
  if (!intro || !intro->contains("peer")) throw std::runtime_error("no peer port arrived");
  return (*intro)["peer"].take_port();
}

void pinger(crew::WorkerContext& ctx) {
  crew::MessagePort peer = receive_peer(ctx);
  std::int64_t checked = 0;
  for (std::int64_t i = 1; i <= kRounds; ++i) {
    if (!peer.post(crew::Message(i))) break;
    std::optional<crew::Message> answer = peer.receive();
    if (!answer || answer->as<std::int64_t>() != i * i) break;
    ++checked;
  }
  peer.close();  // tells the ponger we are done: its receive() returns empty
  crew::Message::Map summary;
  summary.emplace("who", "pinger");
  summary.emplace("answers_checked", checked);
  ctx.parent().post(std::move(summary));
}

void ponger(crew::WorkerContext& ctx) {
  crew::MessagePort peer = receive_peer(ctx);
  std::int64_t answered = 0;
  while (std::optional<crew::Message> m = peer.receive()) {
    const auto n = m->as<std::int64_t>();
    if (!peer.post(crew::Message(n * n))) break;
    ++answered;
  }
  crew::Message::Map summary;
  summary.emplace("who", "ponger");
  summary.emplace("answered", answered);
  ctx.parent().post(std::move(summary));
}

crew::Message introduce(crew::MessagePort&& port) {
  crew::Message::Map m;
  m.emplace("peer", std::move(port));
  return m;
}

}  // namespace

int main() {
  int failures = 0;
  crew::Worker a(pinger, {.name = "crew-pinger"});
  crew::Worker b(ponger, {.name = "crew-ponger"});

  crew::MessageChannel channel;
  std::printf("main: sending port1 to the pinger and port2 to the ponger\n");
  if (!a.post(introduce(std::move(channel.port1))) ||
      !b.post(introduce(std::move(channel.port2)))) {
    std::printf("FAIL: could not introduce the workers\n");
    return 1;
  }
  // Moved out: the main thread holds no end of the channel any more, so it cannot relay.
  const bool main_can_post = channel.port1.post(crew::Message("hi?"));
  std::printf("main: my channel ends are now unconnected (post returns %s)\n",
              main_can_post ? "true" : "false");
  if (main_can_post) ++failures;

  // The only messages the main thread sees: one summary from each worker.
  std::optional<crew::Message> from_a = a.receive();
  std::optional<crew::Message> from_b = b.receive();
  if (!from_a || !from_b) {
    std::printf("FAIL: a worker ended without a summary\n");
    return 1;
  }
  std::printf("pinger: %s\n", from_a->to_string().c_str());
  std::printf("ponger: %s\n", from_b->to_string().c_str());
  const auto checked = (*from_a)["answers_checked"].as<std::int64_t>();
  const auto answered = (*from_b)["answered"].as<std::int64_t>();
  std::printf("main: %lld round trips went worker to worker, none through main\n",
              static_cast<long long>(checked));
  if (checked != kRounds || answered != kRounds) {
    std::printf("FAIL: expected %lld round trips on both sides\n", static_cast<long long>(kRounds));
    ++failures;
  }
  if (a.join() != 0 || b.join() != 0) {
    std::printf("FAIL: a worker failed\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
