// BroadcastChannel fan-out: one announcer, several workers subscribed to the same name. Each
// worker receives every announcement once; none is relayed by the main thread.
//
// Each worker joins the channel, reports on its parent port that it is listening (so no
// announcement is posted before everyone subscribed), then counts announcements until "stop".

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <crew/crew.hpp>

int main() {
  constexpr int kWorkers = 3;
  constexpr int kAnnouncements = 5;
  std::vector<std::unique_ptr<crew::Worker>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<crew::Worker>(
        [](crew::WorkerContext& ctx) {
          crew::BroadcastChannel news("news");
          ctx.parent().post(crew::Message("listening"));
          std::int64_t seen = 0;
          while (auto m = news.receive()) {
            if (m->as<std::string>() == "stop") break;
            ++seen;
          }
          ctx.parent().post(crew::Message(seen));
        },
        crew::WorkerOptions{.name = "listener-" + std::to_string(w)}));
  }
  for (auto& w : workers) {
    if (w->receive()->as<std::string>() != "listening") return 1;
  }

  crew::BroadcastChannel announcer("news");
  for (int i = 1; i <= kAnnouncements; ++i) {
    const std::size_t reached = announcer.post(crew::Message("announcement " + std::to_string(i)));
    std::printf("announcement %d reached %zu subscribers\n", i, reached);
  }
  announcer.post(crew::Message("stop"));

  bool ok = true;
  for (std::size_t w = 0; w < workers.size(); ++w) {
    const std::int64_t seen = workers[w]->receive()->as<std::int64_t>();
    std::printf("listener-%zu received %lld announcements\n", w, static_cast<long long>(seen));
    ok = ok && seen == kAnnouncements && workers[w]->join() == 0;
  }
  std::printf(ok ? "OK\n" : "FAILED\n");
  return ok ? 0 : 1;
}
