// The pipeline thread, the Summary, StageError and the non-template parts of the typed stages.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <pthread.h>

#include <crew/stream/error.hpp>
#include <crew/stream/flow.hpp>
#include <crew/stream/stages.hpp>
#include <crew/stream/summary.hpp>

namespace crew {
inline namespace v0 {

namespace {
std::string describe(const std::string& stage, std::size_t index, std::uint64_t position,
                     StageError::Unit unit, const std::string& cause) {
  return fmt::format("crew::stream: stage {} '{}' failed at {} {}: {}", index, stage,
                     unit == StageError::Unit::byte ? "byte offset" : "item", position, cause);
}
}  // namespace

StageError::StageError(std::string stage, std::size_t stage_index, std::uint64_t position,
                       Unit unit, const std::string& cause_message)
    : Error(describe(stage, stage_index, position, unit, cause_message)),
      stage_(std::move(stage)),
      stage_index_(stage_index),
      position_(position),
      unit_(unit) {}

namespace stream {

const StageStats* Summary::find(std::string_view name) const noexcept {
  for (const StageStats& s : stages) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

const StageStats& Summary::stage(std::string_view name) const {
  if (const StageStats* s = find(name)) return *s;
  throw std::out_of_range(fmt::format("crew::stream::Summary::stage: no stage named '{}'", name));
}

std::string Summary::to_string() const {
  std::string out =
      fmt::format("{:<3} {:<14} {:>12} {:>12} {:>14} {:>10} {:>10} {:>12}\n", "#", "stage",
                  "items in", "items out", "bytes out", "busy ms", "peak", "mark");
  for (const StageStats& s : stages) {
    out += fmt::format("{:<3} {:<14} {:>12} {:>12} {:>14} {:>10.3f} {:>10} {:>12}\n", s.index,
                       s.name, s.items_in, s.items_out, s.bytes_out,
                       std::chrono::duration<double, std::milli>(s.busy).count(), s.peak_buffered,
                       s.high_water_mark == 0
                           ? std::string("-")
                           : fmt::format("{}{}", s.high_water_mark, s.counts_bytes ? " B" : ""));
    if (!s.report.empty()) out += fmt::format("    {}: {}\n", s.name, s.report);
  }
  out += fmt::format("elapsed {:.3f} ms\n",
                     std::chrono::duration<double, std::milli>(elapsed).count());
  return out;
}

namespace detail {

Context::Context(const std::vector<std::string>& names, FlowOptions marks, std::stop_token stop)
    : slots_(names.size()), marks_(marks), stop_(std::move(stop)) {
  for (std::size_t i = 0; i < names.size(); ++i) {
    slots_[i].name = names[i];
    slots_[i].index = i;
  }
}

Summary Context::summary(std::chrono::nanoseconds elapsed, double ns_per_tick) const {
  Summary out;
  out.elapsed = elapsed;
  out.stages.reserve(slots_.size());
  for (const Slot& s : slots_) {
    StageStats st;
    st.name = s.name;
    st.index = s.index;
    st.items_in = s.items_in;
    st.items_out = s.items_out;
    st.bytes_in = s.bytes_in;
    st.bytes_out = s.bytes_out;
    st.busy = std::chrono::nanoseconds(
        static_cast<std::int64_t>(static_cast<double>(s.busy_ticks) * ns_per_tick));
    st.peak_buffered = s.peak_buffered;
    st.high_water_mark = s.mark;
    st.counts_bytes = s.counts_bytes;
    st.peak_in_flight = s.peak_in_flight;
    st.report = s.report;
    out.stages.push_back(std::move(st));
  }
  return out;
}

void rethrow_as_stage_error(const Slot& slot, std::uint64_t position) {
  try {
    throw;
  } catch (const StageError&) {
    throw;
  } catch (const Cancelled&) {
    throw;
  } catch (const std::exception& e) {
    throw StageError(slot.name, slot.index, position,
                     slot.counts_bytes ? StageError::Unit::byte : StageError::Unit::item, e.what());
  } catch (...) {
    throw StageError(slot.name, slot.index, position,
                     slot.counts_bytes ? StageError::Unit::byte : StageError::Unit::item,
                     "an exception not derived from std::exception");
  }
}

void throw_cancelled(const Slot& source, std::uint64_t position) {
  throw Cancelled(
      fmt::format("crew::stream: pipeline cancelled; the source '{}' stopped after {} {}",
                  source.name, position, source.counts_bytes ? "bytes" : "items"));
}

void validate_marks(const FlowOptions& marks, const char* who) {
  if (marks.high_water_mark == 0) {
    throw std::invalid_argument(fmt::format("{}: high_water_mark (0) must be >= 1", who));
  }
  if (marks.high_water_bytes == 0) {
    throw std::invalid_argument(fmt::format("{}: high_water_bytes (0) must be >= 1", who));
  }
}

void validate_parallel(const ParallelOptions& options, const char* who) {
  if (options.grain == 0)
    throw std::invalid_argument(fmt::format("{}: grain (0) must be >= 1", who));
  if (options.max_in_flight && *options.max_in_flight == 0) {
    throw std::invalid_argument(fmt::format("{}: max_in_flight (0) must be >= 1", who));
  }
  if (options.max_in_flight && *options.max_in_flight < options.grain) {
    throw std::invalid_argument(fmt::format("{}: max_in_flight ({}) must be >= grain ({})", who,
                                            *options.max_in_flight, options.grain));
  }
}

std::size_t default_in_flight(const ThreadPool& pool) noexcept {
  const std::size_t n = 2 * pool.thread_count();
  return n < 2 ? 2 : n;
}

bool PortSource::pull(std::vector<Message>& out, std::size_t max, const std::stop_token& stop) {
  // Wait for one message (waking up to notice a stop request), then take what is already there.
  while (out.empty()) {
    if (stop.stop_requested()) return true;
    std::optional<Message> m = port_.receive_for(std::chrono::milliseconds(20));
    if (m) {
      out.push_back(std::move(*m));
    } else if (port_.closed() && port_.pending() == 0) {
      return false;
    }
  }
  while (out.size() < max) {
    std::optional<Message> m = port_.try_receive();
    if (!m) break;
    out.push_back(std::move(*m));
  }
  return true;
}

namespace {
double ns_per_tick(std::uint64_t ticks, std::chrono::nanoseconds elapsed) {
#if defined(__x86_64__) || defined(__i386__)
  if (ticks == 0) return 0.0;
  return static_cast<double>(elapsed.count()) / static_cast<double>(ticks);
#else
  (void)ticks;
  (void)elapsed;
  return 1.0;
#endif
}
}  // namespace

Future<Summary> start_run(std::unique_ptr<PipelineBuilder> builder, std::vector<std::string> names,
                          FlowOptions marks, std::stop_token stop, std::jthread& thread) {
  Promise<Summary> promise;
  Future<Summary> future = promise.get_future();
  if (thread.joinable()) thread.join();
  thread = std::jthread([builder = std::move(builder), names = std::move(names), marks,
                         stop = std::move(stop), promise = std::move(promise)]() mutable {
    pthread_setname_np(pthread_self(), "crew-stream");
    const auto t0 = std::chrono::steady_clock::now();
    const std::uint64_t k0 = ticks();
    Context ctx(names, marks, std::move(stop));
    std::exception_ptr error;
    {
      std::unique_ptr<Driver> driver;
      error = crew::detail::capture([&] {
        driver = builder->build(ctx);
        builder.reset();
        dynamic_cast<PulledDriver&>(*driver).run();
      });
      // Tear down before settling: a write_file sink removes its temporary file, a parallel
      // stage waits for its tasks, so the caller sees the final state once the Future is ready.
      driver.reset();
      builder.reset();
    }
    if (error) {
      promise.set_exception(std::move(error));
      return;
    }
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    const std::uint64_t k = ticks() - k0;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed);
    std::optional<Summary> summary;
    error = crew::detail::capture([&] { summary.emplace(ctx.summary(ns, ns_per_tick(k, ns))); });
    if (error) {
      promise.set_exception(std::move(error));
    } else {
      promise.set_value(std::move(*summary));
    }
  });
  return future;
}

namespace {

// One pipeline running on its source's executor: the stages' context, the driver, the Future's
// promise. The driver's callbacks hold it; it lets go of itself when the run ends.
struct DrivenRun {
  DrivenRun(const std::vector<std::string>& names, FlowOptions marks, std::stop_token stop,
            std::shared_ptr<void> keep, std::shared_ptr<std::atomic<bool>> finished)
      : ctx(names, marks, std::move(stop)), keep(std::move(keep)), finished(std::move(finished)) {}

  // On the executor, in a handler of its own (the driver is not on the stack): tears the stages
  // down, then settles.
  void end(std::exception_ptr error) {
    on_stop.reset();
    driver.reset();
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    const std::uint64_t k = ticks() - k0;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed);
    std::optional<Summary> summary;
    if (!error) {
      error = crew::detail::capture([&] { summary.emplace(ctx.summary(ns, ns_per_tick(k, ns))); });
    }
    finished->store(true, std::memory_order_release);
    if (error) {
      promise.set_exception(std::move(error));
    } else {
      promise.set_value(std::move(*summary));
    }
  }

  Context ctx;
  std::shared_ptr<void> keep;
  std::shared_ptr<std::atomic<bool>> finished;
  Promise<Summary> promise;
  std::unique_ptr<Driver> driver;
  std::optional<std::stop_callback<std::function<void()>>> on_stop;
  std::chrono::steady_clock::time_point t0;
  std::uint64_t k0 = 0;
};

}  // namespace

Future<Summary> start_driven(std::unique_ptr<PipelineBuilder> builder,
                             std::vector<std::string> names, FlowOptions marks,
                             std::stop_token stop, std::shared_ptr<void> keep,
                             std::shared_ptr<std::atomic<bool>> finished) {
  auto run = std::make_shared<DrivenRun>(names, marks, std::move(stop), std::move(keep),
                                         std::move(finished));
  Future<Summary> future = run->promise.get_future();
  std::exception_ptr error = crew::detail::capture([&] { run->driver = builder->build(run->ctx); });
  builder.reset();
  if (error) {
    run->end(std::move(error));
    return future;
  }
  auto& driver = dynamic_cast<DrivenDriver&>(*run->driver);
  run->t0 = std::chrono::steady_clock::now();
  run->k0 = ticks();
  // Before start(): once started, the run may end (and drop the driver) on another thread.
  run->on_stop.emplace(run->ctx.stop(), [&driver] { driver.cancel(); });
  // The driver holds `run` until it is done; end() then releases the driver, and with it the
  // last reference but the one of the handler running end().
  driver.start([run](std::exception_ptr e) {
    auto* d = static_cast<DrivenDriver*>(run->driver.get());
    d->post([run, e = std::move(e)]() mutable { run->end(std::move(e)); });
  });
  return future;
}

}  // namespace detail

BatchStage batch(std::size_t n) {
  if (n == 0) throw std::invalid_argument("crew::stream::batch: n (0) must be >= 1");
  BatchStage s{{"batch"}, n};
  return s;
}

Flow<Message> from(MessagePort port, FlowOptions marks) {
  return Flow<Message>(std::make_unique<detail::PortSource>(std::move(port)), "from", marks);
}

}  // namespace stream
}  // namespace v0
}  // namespace crew
