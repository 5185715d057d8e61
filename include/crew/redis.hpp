// crew::redis — a distributed task queue on Redis 7: Queue submits named tasks (crew::Tasks) and
// hands their results back as crew::Future<R>; crew::redis::Worker (crew/redis/worker.hpp) runs
// them on any machine that reaches the same Redis.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/process/tasks.hpp>
#include <crew/redis/errors.hpp>
#include <crew/redis/stats.hpp>
#include <crew/retry.hpp>

namespace crew::inline v0::redis {

/// Where a Queue's jobs live.
struct QueueOptions {
  /// `redis://[[user]:password@]host[:port][/db]`.
  std::string url = "redis://127.0.0.1:6379";
  /// The queue: every key is under `crew:{<name>}:` (one Cluster slot). 1..200 bytes, no braces.
  std::string name = "default";
  std::chrono::milliseconds connect_timeout{2'000};
  /// How long one command may wait for Redis before the connection counts as broken.
  std::chrono::milliseconds command_timeout{5'000};
  /// How long the results thread blocks in one XREAD. It bounds how long the destructor waits,
  /// and how late a result is noticed for a job this Queue did not create (see result()).
  std::chrono::milliseconds block{1'000};
};

// The retry vocabulary of a local ProcessPool (crew/retry.hpp); crew.lua's crew_fail computes
// the same delays from the Redis clock.
using crew::Backoff;
using crew::BackoffKind;

/// Per-job options; every field has a default.
struct JobOptions {
  /// 0..3; a worker takes higher priorities first.
  int priority = 1;
  /// Runs no earlier than this after submission (the Redis clock decides).
  std::chrono::milliseconds delay{0};
  /// Executions at most, counting the first; a job that still fails is dead-lettered.
  int attempts = 1;
  Backoff backoff{};
  /// One execution's limit; the worker kills (process isolation) or stops it. 0: none.
  std::chrono::milliseconds timeout{0};
  /// Empty: a fresh unique id. A job id that exists already attaches to that job: it does not
  /// run again while its record is retained.
  std::string job_id{};
  /// How long the job's record and result stay in Redis after it settled; result() and
  /// resubmissions of the same job_id see it meanwhile. 0: deleted once its producer is told.
  std::chrono::milliseconds retain{std::chrono::hours(24)};
};

/// Where a job is in its life.
enum class JobState {
  unknown,    ///< no such job: never submitted, or its record expired (JobOptions::retain)
  waiting,    ///< in its priority's stream, for the next free worker
  delayed,    ///< waiting out JobOptions::delay or a retry's backoff
  active,     ///< running on a worker
  completed,  ///< settled with a result
  dead,       ///< settled with an error after its last attempt (dead-lettered)
};

/// "unknown", "waiting", "delayed", "active", "completed" or "dead".
const char* to_string(JobState state) noexcept;

/// A job as its record in Redis shows it (Queue::status). Times are the Redis clock's.
struct JobStatus {
  using Time = std::chrono::system_clock::time_point;

  std::string id;
  JobState state = JobState::unknown;
  std::string task;
  int priority = 0;
  int attempt = 0;   ///< executions started so far (one whose worker was lost counts too)
  int attempts = 0;  ///< the most executions allowed (JobOptions::attempts)
  Time created{};
  std::optional<Time> started;   ///< when the latest execution started
  std::optional<Time> finished;  ///< completed or dead
  std::optional<Time> due;       ///< delayed: when it may run
  std::string result;            ///< completed: the result, msgpack-encoded
  /// The latest failed execution's error type and message (a dead job's: why it died); empty
  /// while no execution failed.
  std::string error_type;
  std::string error;

  /// The exception the job's Futures settle with when it is dead (crew::TimedOut,
  /// crew::WorkerCrashed, crew::RemoteError, ...): that of error_type and error, naming the job.
  /// Null while error_type is empty.
  [[nodiscard]] std::exception_ptr exception() const;
};

namespace detail {

/// A settled job as a producer sees it: the packed result, or the error's type and message
/// (internal). The error stays a record so that each Future gets an exception object of its own:
/// one object shared by Futures settled on one thread and consumed on others would be freed by
/// whichever thread lets go last.
struct JobOutcome {
  std::string id;
  std::string result;
  std::string error_type;  ///< empty: completed with `result`
  std::string error;
};
using Settle = std::function<void(const JobOutcome&)>;

/// A new exception for a failed outcome: the crew error type its `error_type` names.
std::exception_ptr job_error(const JobOutcome& outcome);

/// Throws crew::BadArguments naming the job and the expected type.
[[noreturn]] void throw_result_type(std::string_view expected, const std::exception& cause);

template <class... A>
std::string pack_args(const A&... args) {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> packer(buffer);
  packer.pack_array(sizeof...(A));
  (packer.pack(args), ...);
  return {buffer.data(), buffer.size()};
}

template <class R>
void settle(Promise<R>& promise, const JobOutcome& outcome) {
  if (!outcome.error_type.empty()) {
    promise.set_exception(job_error(outcome));
    return;
  }
  // Settled outside the catch block (crew::detail::capture): see capture() on why.
  auto error = crew::detail::capture([&] {
    if constexpr (std::is_void_v<R>) {
      promise.set_value();
    } else if constexpr (std::is_same_v<R, PackedValue>) {
      promise.set_value(PackedValue{outcome.result});
    } else {
      msgpack::object_handle handle = msgpack::unpack(outcome.result.data(), outcome.result.size());
      try {
        promise.set_value(handle.get().as<R>());
      } catch (const std::exception& e) {
        throw_result_type(crew::detail::type_name<R>(), e);
      }
    }
  });
  if (error) promise.set_exception(std::move(error));
}

// The state of a Future whose result comes from another process through Redis: a network round
// trip away at least, so a thread that waits for it sleeps at once instead of spinning first
// (StateBase::wait()). The spin only kept the CPU from the threads that bring the result about
// when they share it (a producer and a worker in one process), and cannot pay off otherwise.
template <class R>
class RemoteState final : public crew::detail::State<R> {
 public:
  bool drive() const noexcept override { return true; }
};

template <class R>
Settle settler(Future<R>& future) {
  auto promise = std::make_shared<Promise<R>>(new RemoteState<R>());
  future = promise->get_future();
  return [promise](const JobOutcome& outcome) { settle(*promise, outcome); };
}

}  // namespace detail

/// The producer side of a queue: submits jobs and settles their Futures with the results.
///
///     crew::redis::Queue q({.url = "redis://127.0.0.1:6379", .name = "images"});
///     crew::Future<long> f = q.run<long>("fib", 30);
///     crew::Future<long> g = q.run<long>({.attempts = 3, .timeout = 10s}, "fib", 40);
///     std::string id = q.submit("resize", path);   // fire and forget
///
/// Arguments are packed with msgpack as crew::Tasks expects them (crew::Buffer and
/// crew::SharedBuffer cannot cross Redis). A job runs at least once and may run more than once
/// (a worker that dies or loses its lease has its job run again elsewhere); its result is
/// delivered exactly once: each Future settles once, with the value of the execution that Redis
/// accepted. Errors: crew::WorkerCrashed, crew::TimedOut, crew::BadArguments (unknown task,
/// arguments or a result that does not fit), crew::RemoteError (the task threw: remote type and
/// message), crew::MemoryLimitExceeded.
///
/// One thread per Queue reads this producer's result notifications; Futures settle (and inline
/// continuations run) on it. After a reconnect it re-reads every awaited job's record, so a
/// notification lost with a Redis restart is never a lost result while the record is retained.
///
/// Thread safety: every member but the destructor may be called from any thread. Submissions share
/// one connection: a thread that finds no call in flight sends its own at once, together with any
/// that other threads queued meanwhile, so many submitting threads cost few round trips. The
/// destructor stops the results thread within about `block` and settles every Future still waiting
/// with crew::Cancelled; the jobs themselves carry on.
class Queue {
 public:
  /// Connects; throws std::invalid_argument naming a bad option and ConnectionError when Redis
  /// cannot be reached. Warns (spdlog "crew.redis") when Redis may evict keys under memory
  /// pressure (maxmemory-policy other than noeviction): jobs would vanish silently.
  explicit Queue(QueueOptions options);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  /// Submits task `name` with `args`; the Future yields its result as an `R`. Throws
  /// std::invalid_argument for bad options and ConnectionError when Redis does not answer (the
  /// job may or may not exist then: resubmit with the same job_id to be sure).
  template <class R, class... A>
  Future<R> run(std::string_view name, const A&... args) {
    return run<R>(JobOptions{}, name, args...);
  }
  template <class R, class... A>
  Future<R> run(const JobOptions& options, std::string_view name, const A&... args) {
    Future<R> future;
    enqueue(options, name, detail::pack_args(args...), detail::settler(future));
    return future;
  }

  /// Fire and forget: submits and returns the job id.
  template <class... A>
  std::string submit(std::string_view name, const A&... args) {
    return submit(JobOptions{}, name, args...);
  }
  template <class... A>
  std::string submit(const JobOptions& options, std::string_view name, const A&... args) {
    return enqueue(options, name, detail::pack_args(args...), nullptr);
  }

  /// run() and submit() for arguments already packed as a msgpack array (what bridges that do
  /// not know a task's C++ types hold, such as `crew serve`'s JSON routes): the result comes back
  /// packed. Throws std::invalid_argument when `args` is not one msgpack array.
  Future<PackedValue> run_packed(const JobOptions& options, std::string_view name,
                                 std::string args);
  std::string submit_packed(const JobOptions& options, std::string_view name, std::string args);

  /// Fire and forget, many jobs of task `name` at once: `jobs` holds each job's arguments. They
  /// go to Redis in one call per 1 000 jobs; returns their ids in order. Throws as submit does
  /// (options.job_id must be empty: each job gets an id of its own); after a ConnectionError,
  /// some of the jobs may exist.
  template <class... A>
  std::vector<std::string> submit_many(const JobOptions& options, std::string_view name,
                                       const std::vector<std::tuple<A...>>& jobs) {
    std::vector<std::string> args;
    args.reserve(jobs.size());
    for (const auto& job : jobs) {
      args.push_back(std::apply([](const A&... a) { return detail::pack_args(a...); }, job));
    }
    return enqueue_many(options, name, std::move(args), std::vector<detail::Settle>(jobs.size()));
  }

  /// The result of a job submitted by any producer, while its record is retained. A job that does
  /// not exist settles the Future with crew::BadArguments. For a job this Queue did not create,
  /// the result is noticed within about `block` (its notification goes to its own producer).
  template <class R>
  Future<R> result(std::string_view job_id) {
    Future<R> future;
    watch(job_id, detail::settler(future));
    return future;
  }

  /// A snapshot of the whole queue: every producer's and worker's jobs. Throws ConnectionError.
  [[nodiscard]] QueueStats stats();

  /// A job's state and record, read in one step (any producer's job). A job that does not exist
  /// (never submitted, or its record expired) has state JobState::unknown. Throws
  /// std::invalid_argument for an id that is empty or over 256 bytes, and ConnectionError when
  /// Redis does not answer.
  JobStatus status(std::string_view job_id);

  /// The id of this producer (its results stream is `results:<producer_id>`).
  [[nodiscard]] const std::string& producer_id() const noexcept;

 private:
  struct Impl;
  std::string enqueue(const JobOptions& options, std::string_view name, std::string args,
                      detail::Settle settle);
  // One Settle per job (empty: fire and forget).
  std::vector<std::string> enqueue_many(const JobOptions& options, std::string_view name,
                                        std::vector<std::string> args,
                                        std::vector<detail::Settle> settles);
  void watch(std::string_view job_id, detail::Settle settle);
  std::unique_ptr<Impl> impl_;
};

}  // namespace crew::inline v0::redis
