#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>

#include <crew/errors.hpp>
#include <crew/worker.hpp>

namespace crew::inline v0 {
namespace {
// Recorded during static initialisation, which runs on the program's first thread.
const std::thread::id kMainThread = std::this_thread::get_id();
thread_local WorkerContext* tl_worker = nullptr;
std::atomic<std::uint64_t> next_worker_id{1};
}  // namespace

bool is_main_thread() noexcept {
  return std::this_thread::get_id() == kMainThread;
}
WorkerContext* this_worker() noexcept {
  return tl_worker;
}

namespace detail {

struct WorkerState {
  using Schedule = std::function<void(std::function<void()>)>;
  std::uint64_t id = 0;
  std::string name;
  std::stop_source stop;

  std::mutex mutex;  // guards everything below
  std::condition_variable finished_cv;
  bool online = false;
  bool finished = false;
  bool joined = false;
  int exit_code = 0;
  std::exception_ptr error;
  std::vector<Promise<void>> online_waiters;
  std::vector<Promise<int>> exit_waiters;
  std::function<void(std::exception_ptr)> on_error;
  Schedule error_schedule;
  bool error_delivered = false;
  std::function<void(int)> on_exit;
  Schedule exit_schedule;
  bool exit_delivered = false;
  // With push delivery of messages, the exit event waits until the last message was delivered.
  bool delivery = false;
  bool delivery_drained = false;
  pthread_t thread{};

  static WorkerContext make_context(MessagePort parent, Message data, std::stop_token stop,
                                    std::uint64_t id) {
    return WorkerContext(std::move(parent), std::move(data), std::move(stop), id);
  }

  // Each fire_* delivers at most once, when both the event and its callback exist.
  void fire_error(std::unique_lock<std::mutex>& lock) {
    if (error_delivered || !error || !on_error) return;
    error_delivered = true;
    auto cb = on_error;
    auto schedule = error_schedule;
    auto e = error;
    lock.unlock();
    try {
      schedule([cb, e] { cb(e); });
    } catch (...) {  // the executor is closed: nobody is left to tell
    }
    lock.lock();
  }
  void fire_exit(std::unique_lock<std::mutex>& lock) {
    if (exit_delivered || !finished || !on_exit || (delivery && !delivery_drained)) return;
    exit_delivered = true;
    auto cb = on_exit;
    auto schedule = exit_schedule;
    const int code = exit_code;
    lock.unlock();
    try {
      schedule([cb, code] { cb(code); });
    } catch (...) {
    }
    lock.lock();
  }
};

namespace {
struct Launch {
  std::function<void(WorkerContext&)> fn;
  std::shared_ptr<WorkerState> state;
  MessagePort port;
  Message data;
};

void report_unhandled(const WorkerState& s, const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "crew: worker %llu (%s) threw: %s (set Worker::on_error to handle it)\n",
                 static_cast<unsigned long long>(s.id), s.name.c_str(), ex.what());
  } catch (...) {
    std::fprintf(stderr, "crew: worker %llu (%s) threw a non-std exception\n",
                 static_cast<unsigned long long>(s.id), s.name.c_str());
  }
}
}  // namespace

// The worker thread's body, with a C signature for pthread_create.
extern "C" void* crew_worker_main(void* arg) {
  std::unique_ptr<Launch> launch(static_cast<Launch*>(arg));
  auto& state = *launch->state;
  pthread_setname_np(pthread_self(), state.name.substr(0, 15).c_str());
  WorkerContext* context = nullptr;
  int code = 0;
  std::exception_ptr error;
  {
    WorkerContext ctx = WorkerState::make_context(std::move(launch->port), std::move(launch->data),
                                                  state.stop.get_token(), state.id);
    context = &ctx;
    tl_worker = context;
    std::vector<Promise<void>> waiters;
    {
      std::lock_guard lock(state.mutex);
      state.online = true;
      waiters.swap(state.online_waiters);
    }
    for (auto& w : waiters) w.set_value();
    try {
      launch->fn(ctx);
    } catch (...) {
      error = std::current_exception();
      code = 1;
    }
    if (state.stop.stop_requested()) code = 1;  // terminated, as in Node
    tl_worker = nullptr;
    {
      std::unique_lock lock(state.mutex);
      state.exit_code = code;
      state.error = error;
      state.finished = true;
      // The error event goes out before the port closes, so it is scheduled ahead of the exit
      // event (which, with push delivery, waits for the closed port to be drained).
      state.fire_error(lock);
      if (error && !state.on_error) report_unhandled(state, error);
    }
    // Closing after everything the worker posted: the parent drains those, then sees the end.
    ctx.parent().close();
  }
  std::vector<Promise<int>> exits;
  {
    std::unique_lock lock(state.mutex);
    exits.swap(state.exit_waiters);
    state.fire_exit(lock);
  }
  state.finished_cv.notify_all();
  for (auto& p : exits) p.set_value(code);
  launch->fn = nullptr;  // the callable's captures die on this thread, before it ends
  return nullptr;
}

}  // namespace detail

Worker::Worker(std::function<void(WorkerContext&)> fn, WorkerOptions options)
    : state_(std::make_shared<detail::WorkerState>()) {
  if (!fn) throw std::invalid_argument("crew::Worker: the worker function is empty");
  if (options.stack_size != 0 && options.stack_size < 64 * 1024) {
    throw std::invalid_argument(fmt::format(
        "crew::Worker '{}': stack_size ({}) must be 0 (system default) or at least 65536",
        options.name, options.stack_size));
  }
  state_->id = next_worker_id.fetch_add(1, std::memory_order_relaxed);
  state_->name = options.name;
  MessageChannel channel({.high_water_mark = options.high_water_mark});
  port_ = std::move(channel.port1);
  auto launch = std::make_unique<detail::Launch>();
  launch->fn = std::move(fn);
  launch->state = state_;
  launch->port = std::move(channel.port2);
  launch->data = std::move(options.data);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (options.stack_size != 0) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    pthread_attr_setstacksize(&attr, (options.stack_size + page - 1) / page * page);
  }
  const int rc = pthread_create(&state_->thread, &attr, detail::crew_worker_main, launch.get());
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    throw std::system_error(
        rc, std::generic_category(),
        fmt::format("crew::Worker '{}': could not start its thread", options.name));
  }
  launch.release();  // the thread owns it now
}

Worker::~Worker() {
  (void)terminate();
  join();
  // Our port (and with it the push delivery that would have announced the exit after the last
  // message) goes away with us: announce the exit now, as without push delivery.
  std::unique_lock lock(state_->mutex);
  state_->delivery = false;
  state_->fire_exit(lock);
}

Future<void> Worker::online() {
  std::lock_guard lock(state_->mutex);
  if (state_->online) return make_ready_future();
  state_->online_waiters.emplace_back();
  return state_->online_waiters.back().get_future();
}

Future<int> Worker::terminate() {
  state_->stop.request_stop();
  port_.close();  // wakes a worker blocked in receive()
  std::lock_guard lock(state_->mutex);
  if (state_->finished) return make_ready_future(state_->exit_code);
  state_->exit_waiters.emplace_back();
  return state_->exit_waiters.back().get_future();
}

int Worker::join() {
  std::unique_lock lock(state_->mutex);
  if (pthread_equal(pthread_self(), state_->thread) != 0) {
    throw std::logic_error("crew::Worker::join: a worker cannot join itself");
  }
  state_->finished_cv.wait(lock, [this] { return state_->finished; });
  if (!state_->joined) {
    state_->joined = true;
    const pthread_t t = state_->thread;
    lock.unlock();
    pthread_join(t, nullptr);
    lock.lock();
  }
  return state_->exit_code;
}

std::uint64_t Worker::id() const noexcept {
  return state_->id;
}

void Worker::set_on_error(std::function<void(std::exception_ptr)> callback, Schedule schedule) {
  std::unique_lock lock(state_->mutex);
  state_->on_error = std::move(callback);
  state_->error_schedule = std::move(schedule);
  state_->fire_error(lock);
}

void Worker::set_on_exit(std::function<void(int)> callback, Schedule schedule) {
  std::unique_lock lock(state_->mutex);
  state_->on_exit = std::move(callback);
  state_->exit_schedule = std::move(schedule);
  state_->fire_exit(lock);
}

void Worker::set_on_message(std::function<void(Message)> callback, Schedule schedule) {
  {
    std::lock_guard lock(state_->mutex);
    state_->delivery = true;
    state_->delivery_drained = false;
  }
  std::weak_ptr<detail::WorkerState> weak = state_;
  port_.set_delivery(std::move(callback), std::move(schedule), [weak] {
    if (auto s = weak.lock()) {
      std::unique_lock lock(s->mutex);
      s->delivery_drained = true;
      s->fire_exit(lock);
    }
  });
}

}  // namespace crew::inline v0
