// crew_process_compare: ProcessPool next to workerpool's process workers and Piscina (Node.js),
// same machine, same run, 2 workers each. See bench/README.md.
//
//   crew_process_compare [--quick] [--no-node]
//
// The Node anchors come from bench/node/package.json, installed by bench/node/install.sh into
// $CREW_NODE_DIR (default: build/bench-node under the source tree).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <crew/process.hpp>

#include "bench_common.hpp"

namespace {

using crew_bench::Clock;
using crew_bench::fixed;
using crew_bench::verdict;

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * v.size()))];
}

crew::Tasks& tasks() {
  static crew::Tasks t = [] {
    crew::Tasks x;
    x.add("noop", [] { return 0; });
    x.add("echo", [](crew::Buffer b) { return b; });  // hands the buffer back untouched
    return x;
  }();
  return t;
}

std::map<std::string, double> crew_figures(bool quick) {
  std::map<std::string, double> out;
  const int rounds = quick ? 1000 : 10000;
  const int tiny = quick ? 20000 : 200000;
  {
    crew::ProcessPool pool({.tasks = &tasks(), .min_workers = 2, .max_workers = 2});
    for (int i = 0; i < 200; ++i) (void)pool.run<int>("noop").get();
    std::vector<double> lat;
    lat.reserve(rounds);
    for (int i = 0; i < rounds; ++i) {
      const auto t = Clock::now();
      (void)pool.run<int>("noop").get();
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
    }
    out["rt_p50_us"] = percentile(lat, 50);
    out["rt_p99_us"] = percentile(lat, 99);
    const auto t = Clock::now();
    std::vector<crew::Future<int>> all;
    all.reserve(tiny);
    for (int i = 0; i < tiny; ++i) all.push_back(pool.run<int>("noop"));
    for (auto& f : all) (void)f.get();
    out["tiny_per_s"] = tiny / crew_bench::seconds_since(t);

    crew::Buffer b(std::size_t{64} << 20);
    std::memset(b.data(), 7, b.size());
    for (int i = 0; i < 3; ++i) b = pool.run<crew::Buffer>("echo", std::move(b)).get();
    std::vector<double> big;
    for (int i = 0; i < (quick ? 5 : 20); ++i) {
      const auto s = Clock::now();
      b = pool.run<crew::Buffer>("echo", std::move(b)).get();
      big.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s).count());
    }
    crew_bench::check(b.size() == (std::size_t{64} << 20) && b.data()[b.size() - 1] == std::byte{7},
                      "64 MiB buffer came back changed");
    out["64mib_ms"] = percentile(big, 50);
  }
  std::vector<double> spawn;
  for (int i = 0; i < (quick ? 3 : 10); ++i) {
    const auto t = Clock::now();
    crew::ProcessPool pool({.tasks = &tasks(), .max_workers = 1});
    (void)pool.run<int>("noop").get();  // spawn to first answer, as measured for workerpool
    spawn.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
  }
  out["spawn_ms"] = percentile(spawn, 50);
  return out;
}

std::map<std::string, double> node_figures(bool quick) {
  std::map<std::string, double> out;
  const std::filesystem::path src = CREW_BENCH_SOURCE_DIR;
  const char* env_dir = std::getenv("CREW_NODE_DIR");
  const std::filesystem::path dir =
      env_dir != nullptr ? env_dir : src.parent_path().parent_path() / "build" / "bench-node";
  const std::string install = "bash '" + (src.parent_path() / "node" / "install.sh").string() +
                              "' '" + dir.string() + "' >&2";
  if (std::system(install.c_str()) != 0) {
    std::fprintf(stderr, "crew_process_compare: could not install the Node anchors; skipping\n");
    return out;
  }
  const std::string cmd = "NODE_PATH='" + (dir / "node_modules").string() + "' node '" +
                          (src / "anchors.js").string() + "'" + (quick ? " --quick" : "");
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char key[128];
  double value;
  while (std::fscanf(p, "%127s %lf", key, &value) == 2) out[key] = value;
  if (::pclose(p) != 0) std::fprintf(stderr, "crew_process_compare: node anchors failed\n");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(tasks());
  bool quick = false, node = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--no-node") {
      node = false;
    } else {
      std::fprintf(stderr, "usage: crew_process_compare [--quick] [--no-node]\n");
      return a == "--help" ? 0 : crew_bench::kUsageError;
    }
  }
  const auto c = crew_figures(quick);
  const auto n = node ? node_figures(quick) : std::map<std::string, double>{};
  auto get = [&](const char* k) { return n.contains(k) ? n.at(k) : 0.0; };

  std::printf("ProcessPool vs Node.js (2 workers each)%s\n", quick ? " [quick]" : "");
  std::printf("%-34s %12s %12s %12s %9s  %s\n", "figure", "crew", "workerpool", "piscina", "ratio",
              "target");
  auto row = [](const char* name, double crew, double wp, double pis, double ratio,
                const std::string& target) {
    std::printf("%-34s %12s %12s %12s %9s  %s\n", name, fixed(crew, 2).c_str(),
                wp > 0 ? fixed(wp, 2).c_str() : "-", pis > 0 ? fixed(pis, 2).c_str() : "-",
                ratio > 0 ? (fixed(ratio, 1) + "x").c_str() : "-", target.c_str());
  };
  const double rt = get("workerpool_rt_p50_us") / c.at("rt_p50_us");
  const double rt99 = get("workerpool_rt_p99_us") / c.at("rt_p99_us");
  const double tiny = c.at("tiny_per_s") / std::max(get("workerpool_tiny_per_s"), 1e-9);
  const double big = get("piscina_64mib_ms") / c.at("64mib_ms");
  row("no-op round trip p50 (us)", c.at("rt_p50_us"), get("workerpool_rt_p50_us"),
      get("piscina_rt_p50_us"), rt, n.empty() ? "" : ">= 10x workerpool: " + verdict(rt >= 10));
  row("no-op round trip p99 (us)", c.at("rt_p99_us"), get("workerpool_rt_p99_us"), 0, rt99,
      n.empty() ? "" : ">= 10x workerpool: " + verdict(rt99 >= 10));
  row("tiny tasks (per s)", c.at("tiny_per_s"), get("workerpool_tiny_per_s"), 0,
      n.empty() ? 0 : tiny, n.empty() ? "" : ">= 10x workerpool: " + verdict(tiny >= 10));
  row("64 MiB to a worker and back (ms)", c.at("64mib_ms"), 0, get("piscina_64mib_ms"), big,
      n.empty() ? "" : ">= 5x piscina: " + verdict(big >= 5));
  row("spawn to first answer (ms)", c.at("spawn_ms"), get("workerpool_spawn_ms"), 0,
      get("workerpool_spawn_ms") / c.at("spawn_ms"), "(reported)");
  return crew_bench::g_results_ok ? 0 : 1;
}
