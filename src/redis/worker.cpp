// crew::redis::Worker: the fetch, lease and report threads around one pool (process or thread).
// A running job is keyed by its lease token (unique for ever), so a job that comes back to this
// worker after it lost the lease is a different entry from the stale run.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <pthread.h>

#include <crew/pool.hpp>
#include <crew/process/pool.hpp>
#include <crew/redis/worker.hpp>

#include "connection.hpp"
#include "logger.hpp"
#include "outcome.hpp"
#include "stats_reader.hpp"

namespace crew::inline v0::redis {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::size_t kErrorTypeMax = 256;
// Bounds on one call's work, so that no function call keeps Redis busy for long: jobs started by
// one crew_take or crew_report, outcomes in one crew_report, leases in one crew_renew_many.
constexpr std::size_t kTakeMax = 1'000;
constexpr std::size_t kReportMax = 1'000;
constexpr std::size_t kRenewMax = 500;
// Jobs held beyond `workers` at most (see Impl::capacity()), whatever the prefetch window.
constexpr std::size_t kPrefetchMax = 64;
// Weight of the newest run time in the running estimate of a job's run time.
constexpr double kRunTimeWeight = 0.2;
// Report threads, each with its connection. A second one reports while the first one's call is
// in Redis, once this many outcomes are queued: Redis then always has the next call to run,
// where one call at a time left it idle for a round trip and the client's turn per batch, and a
// batch this size still costs Redis little per job for the call itself.
constexpr std::size_t kReporters = 2;
constexpr std::size_t kSecondReportBatch = 16;

struct Running {
  std::string id;
  std::string lease;
  Clock::time_point begun = Clock::now();
  std::stop_source stop;
  // The lease was lost or the job handed back: its outcome must never be reported.
  std::atomic<bool> abandoned{false};
  std::atomic<bool> finished{false};
};

// What a crew_report that started nothing said about the next delayed job: crew_next_due's answer
// (-1: none waits) and when it was given.
struct IdleHint {
  Clock::time_point at;
  long long due_ms = -1;
};

// crew_next_due's answer now, from a hint; nothing once the delayed job is due (then crew_take
// must promote it).
std::optional<long long> due_from(const IdleHint& hint) {
  if (hint.due_ms < 0) return -1;
  const auto left = hint.at + milliseconds(hint.due_ms) - Clock::now();
  if (left <= milliseconds(0)) return std::nullopt;
  return std::chrono::duration_cast<milliseconds>(left).count();
}

struct Outcome {
  std::shared_ptr<Running> job;
  std::string result;
  std::optional<ErrorRecord> error;
};

// A job the fetch thread ran itself (WorkerOptions::inline_below): its outcome, reported with the
// next call, and what the take that started it said: of the next delayed job (for a read's block
// time), and whether it found the queue empty otherwise (it started fewer jobs than it asked for).
struct Ran {
  Outcome outcome;
  IdleHint due;
  bool drained = false;
};

// A take's reply, started: how many jobs, and the one to run on this thread, if any.
struct Started {
  std::size_t count = 0;
  std::shared_ptr<Running> job;
  std::string task;
  std::string args;
  IdleHint due;
  bool drained = false;
};

WorkerOptions checked(WorkerOptions o) {
  if (o.lease < milliseconds(1'000)) {
    throw std::invalid_argument("crew::redis::WorkerOptions: lease must be at least 1 s");
  }
  if (o.max_reclaims < 0) {
    throw std::invalid_argument("crew::redis::WorkerOptions: max_reclaims must not be negative");
  }
  if (o.prefetch_window.count() < 0) {
    throw std::invalid_argument(
        "crew::redis::WorkerOptions: prefetch_window must not be negative (0 turns prefetch off)");
  }
  if (o.inline_below.count() < 0) {
    throw std::invalid_argument(
        "crew::redis::WorkerOptions: inline_below must not be negative (0 turns it off)");
  }
  if (o.block.count() < 1) {
    throw std::invalid_argument("crew::redis::WorkerOptions: block must be at least 1 ms");
  }
  if (o.workers == 0) o.workers = default_thread_count();
  return o;
}

}  // namespace

struct Worker::Impl {
  const Tasks& tasks;
  WorkerOptions options;
  Url url;
  std::string prefix;
  std::string id = process_unique_id();
  Connection fetch_connection;
  Connection lease_connection;
  std::array<Connection, kReporters> report_connections;
  std::unique_ptr<ProcessPool> processes;
  std::unique_ptr<ThreadPool> threads;

  mutable std::mutex mutex;
  // One condition each, so that a finished job wakes only the report thread: with one for all,
  // every outcome also woke the fetch and lease threads to find nothing to do (two context
  // switches per job, most of a no-op job's cost).
  std::condition_variable_any outcome_queued;  // report thread: `outcomes` not empty
  std::condition_variable_any slots_changed;   // fetch thread and stop(): `running`/`reserved`
  std::condition_variable_any paused;          // never notified: pause() ends by time or stop
  std::map<std::string, std::shared_ptr<Running>> running;  // by lease token
  // Slots promised to a crew_take or crew_report in flight: with `running`, never more than
  // capacity(), though the fetch and report threads both start jobs.
  std::size_t reserved = 0;
  // Jobs begun whose task has not finished (`running` also holds finished ones until reported).
  std::size_t unfinished = 0;
  // The running estimate of one job's run time (0: no job finished yet), and the last finish.
  double run_seconds = 0;
  Clock::time_point last_finish{};
  // Set by the report thread when its crew_report started nothing: the fetch thread may then
  // block at once instead of asking crew_take first.
  std::optional<IdleHint> idle_hint;
  // A call that may have started jobs in this worker's name failed (its reply may be lost with the
  // connection): the fetch thread asks crew_recover for them, and until it has, the report thread
  // takes no jobs, so that no reply with jobs in it is in flight while crew_recover runs.
  bool recover = false;
  std::size_t reports = 0;        // crew_report calls in flight
  std::size_t report_taking = 0;  // of which start jobs
  std::deque<Outcome> outcomes;
  // The job the fetch thread runs itself (inline_below), while it does.
  std::shared_ptr<Running> running_inline;
  WorkerStats counters;

  // queue_stats(): its own connection, made on first use.
  mutable std::mutex stats_mutex;
  mutable std::unique_ptr<Connection> stats_connection;

  std::mutex stop_mutex;
  bool stopped = false;
  std::atomic<bool> taking{true};           // false once stop() began: no more jobs are started
  std::atomic<long long> fetch_client{-1};  // for CLIENT UNBLOCK
  std::jthread fetcher, leaser;
  std::array<std::jthread, kReporters> reporters;

  Impl(const Tasks& t, WorkerOptions o)
      : tasks(t),
        options(checked(std::move(o))),
        url(parse_url(options.url)),
        prefix(queue_prefix(options.queue, "WorkerOptions::queue")),
        fetch_connection(url,
                         {options.connect_timeout, options.command_timeout + options.block, true}),
        lease_connection(url, {options.connect_timeout, options.command_timeout, false}),
        report_connections{
            Connection(url, {options.connect_timeout, options.command_timeout, false}),
            Connection(url, {options.connect_timeout, options.command_timeout, false})} {
    if (options.isolation == Isolation::process) {
      ProcessPoolOptions p;
      p.tasks = options.executable.empty() ? &tasks : nullptr;
      p.max_workers = options.workers;
      p.name = "crew-redis";
      p.executable = options.executable;
      p.args = options.args;
      p.env = options.env;
      processes = std::make_unique<ProcessPool>(std::move(p));
    } else {
      PoolOptions p;
      p.max_workers = options.workers;
      threads = std::make_unique<ThreadPool>(p);
    }
  }

  Reply fcall(Connection& connection, std::string_view function, std::vector<std::string> args) {
    args.insert(args.begin(), {"FCALL", std::string(function), "1", prefix});
    return connection.command(args);
  }

  // Waits `d` or until `stop` fires.
  void pause(const std::stop_token& stop, milliseconds d) {
    std::unique_lock lock(mutex);
    paused.wait_for(lock, stop, d, [] { return false; });
  }

  // One turn of a thread's loop: reconnects first when needed; a connection error is logged and
  // the next turn reconnects; another error pauses the loop. False once `stop` fired.
  template <class Body>
  bool turn(Connection& connection, const std::stop_token& stop, const char* role, Body&& body) {
    try {
      if (connection.broken()) connection.reconnect(kReconnectBudget, stop);
      body();
    } catch (const Cancelled&) {
      return false;
    } catch (const ConnectionError& e) {
      logger()->warn("crew::redis::Worker {} ({}): {}", options.queue, role, e.what());
    } catch (const std::exception& e) {
      logger()->error("crew::redis::Worker {} ({}): {}", options.queue, role, e.what());
      pause(stop, kErrorPause);
    }
    return !stop.stop_requested();
  }

  // --- fetch thread ---

  void fetch_loop(const std::stop_token& stop) {
    std::optional<Ran> ran;  // an outcome to report with the next read
    for (;;) {
      std::size_t free = 0;
      std::optional<IdleHint> hint;
      std::optional<std::vector<std::string>> recovering;  // the leases this worker runs
      bool handed_over = false;
      {
        std::unique_lock lock(mutex);
        // No read follows while stopping or recovering: the report threads report it.
        if (ran && (recover || !taking)) {
          outcomes.push_back(std::move(ran->outcome));
          ran.reset();
          handed_over = true;
        }
        // The job reported with the next read leaves `running` after it, but its slot is free.
        const std::size_t reporting = ran ? 1 : 0;
        if (!slots_changed.wait(lock, stop, [&] {
              // Free slots, not prefetch room: while its jobs run, the report thread's next
              // crew_report takes more anyway. A crew_take here as well would cost a job that a
              // producer waits for one more call, most of it for nothing.
              return recover ? report_taking == 0
                             : running.size() - reporting + reserved < options.workers;
            })) {
          if (ran) outcomes.push_back(std::move(ran->outcome));
          lock.unlock();
          outcome_queued.notify_all();
          return;
        }
        if (recover) {
          recovering.emplace();
          for (const auto& [lease, job] : running) recovering->push_back(lease);
        } else {
          free = std::min(capacity() - (running.size() - reporting) - reserved, kTakeMax);
          reserved += free;
          hint = std::exchange(idle_hint, std::nullopt);
        }
      }
      if (handed_over) outcome_queued.notify_all();
      bool failed = true;
      const bool go_on = turn(fetch_connection, stop, "fetch", [&] {
        if (recovering) {
          recover_jobs(*recovering);
        } else {
          // fetch() owns it now: on an error it hands it to the report threads.
          std::optional<Ran> reported = std::exchange(ran, std::nullopt);
          ran = fetch(free, hint, std::move(reported));
        }
        failed = false;
      });
      {
        std::lock_guard lock(mutex);
        reserved -= free;
        // A hint given while this turn was in Redis may be older than a `wake` entry the turn
        // consumed: a delayed job it does not know of. Only a crew_take can tell now.
        idle_hint.reset();
        if (failed) {
          recover = true;
        } else if (recovering) {
          recover = false;
        }
      }
      slots_changed.notify_all();
      if (!go_on) {
        if (ran) queue_outcome(std::move(ran->outcome));
        return;
      }
    }
  }

  // One crew_take for up to `free` jobs (it promotes due delayed jobs and starts the jobs,
  // highest priority first); only when it started nothing, one blocking XREADGROUP for the next
  // entry of any stream, or of `wake` (a delayed job was submitted), with a crew_take 'own'
  // pipelined behind it: Redis starts what the read delivered as soon as it delivers it, so a job
  // that arrives while this worker waits costs one round trip, not two. A `hint` from a
  // crew_report that started nothing stands for the first crew_take.
  // `reported`, a job this thread ran, goes first in the same write, as a crew_report that takes
  // nothing. When the take that started it found the queue empty otherwise, the read comes next
  // at once: Redis then tells the producer before any take runs (it answers a blocked read only
  // after the whole function). Otherwise the crew_take does: a read delivers an entry of every
  // stream that has one, which could start more jobs than the worker has slots. Returns a job
  // this thread ran now, if it did.
  std::optional<Ran> fetch(std::size_t free, const std::optional<IdleHint>& hint,
                           std::optional<Ran> reported) {
    std::optional<long long> due =
        reported ? (reported->drained ? due_from(reported->due) : std::nullopt)
                 : (hint ? due_from(*hint) : std::nullopt);
    if (!due) {
      std::vector<std::vector<std::string>> commands;
      std::vector<const Outcome*> reporting = report_first(reported, commands);
      commands.push_back(
          {"FCALL", "crew_take", "1", prefix, id, std::to_string(free), ms_text(options.lease)});
      const std::vector<Reply> replies = send(commands, reported);
      settle_reported(reported, reporting, replies.front());
      reported.reset();
      const Reply& taken = replies.back();
      if (taken.is_error()) throw std::runtime_error("crew_take: " + taken.error());
      Started started = start_taken(taken, free);
      if (started.count > 0) return run_inline(std::move(started));
      due = taken[0].integer();
    }
    // Block no longer than until the next delayed job is due (BLOCK 0 would mean for ever).
    milliseconds block = options.block;
    if (*due >= 0) block = std::clamp(milliseconds(*due), milliseconds(1), block);
    std::vector<std::vector<std::string>> commands;
    std::vector<const Outcome*> reporting = report_first(reported, commands);
    commands.push_back({"XREADGROUP", "GROUP", "workers", id, "COUNT", "1", "BLOCK", ms_text(block),
                        "STREAMS", prefix + "p3", prefix + "p2", prefix + "p1", prefix + "p0",
                        prefix + "wake", ">", ">", ">", ">", ">"});
    commands.push_back({"FCALL", "crew_take", "1", prefix, id, std::to_string(free),
                        ms_text(options.lease), "own"});
    const std::vector<Reply> replies = send(commands, reported, true);
    settle_reported(reported, reporting, replies.front());
    const Reply& read = replies[replies.size() - 2];
    const Reply& own = replies.back();
    // The read's entries are the pipelined crew_take's to start.
    if (own.is_error()) throw std::runtime_error("crew_take: " + own.error());
    std::optional<Ran> ran = run_inline(start_taken(own, free));
    if (read.is_error()) {
      try {
        if (!read.error().starts_with("NOGROUP")) {
          throw std::runtime_error("XREADGROUP: " + read.error());
        }
        // A stream was deleted with its group (`wake`, say, which crew_take does not read).
        const Reply init = fcall(fetch_connection, "crew_init", {});
        if (init.is_error()) throw std::runtime_error("crew_init: " + init.error());
      } catch (...) {
        if (ran) queue_outcome(std::move(ran->outcome));
        throw;
      }
    }
    return ran;
  }

  // Puts the crew_report of `reported` (unless its lease was lost meanwhile) first in `commands`;
  // returns what it reports.
  std::vector<const Outcome*> report_first(const std::optional<Ran>& reported,
                                           std::vector<std::vector<std::string>>& commands) const {
    std::vector<const Outcome*> reporting;
    if (reported && !reported->outcome.job->abandoned) {
      reporting.push_back(&reported->outcome);
      commands.push_back(report_command(reporting, 0));
    }
    return reporting;
  }

  // Sends `commands` on the fetch connection (`blocking`: with a blocking read, which stop()
  // may end with CLIENT UNBLOCK). When that fails, whether the report got there is unknown: the
  // report threads send it again (a repeat is refused by its lease token, never settled twice).
  std::vector<Reply> send(const std::vector<std::vector<std::string>>& commands,
                          std::optional<Ran>& reported, bool blocking = false) {
    try {
      if (blocking) fetch_client = fetch_connection.client_id();
      return fetch_connection.pipeline(commands);
    } catch (...) {
      if (reported) queue_outcome(std::move(reported->outcome));
      reported.reset();
      throw;
    }
  }

  // What Redis answered to the report of `reported`: a server-state error hands the outcome to
  // the report threads, which send it again after a pause; otherwise the job is done with.
  void settle_reported(const std::optional<Ran>& reported,
                       const std::vector<const Outcome*>& reporting, const Reply& reply) {
    if (!reported) return;
    if (!reporting.empty() && reply.is_error() && !reply.error().starts_with("ERR crew_")) {
      queue_outcome(reported->outcome);
      return;
    }
    if (!reporting.empty()) count(reporting, reply);
    std::lock_guard lock(mutex);
    running.erase(reported->outcome.job->lease);
  }

  // Runs what calls whose reply was lost started in this worker's name (crew_recover), at once
  // rather than a lease later.
  void recover_jobs(const std::vector<std::string>& leases) {
    std::vector<std::string> args{id, ms_text(options.lease)};
    args.insert(args.end(), leases.begin(), leases.end());
    const Reply reply = fcall(fetch_connection, "crew_recover", args);
    if (reply.is_error()) throw std::runtime_error("crew_recover: " + reply.error());
    for (const Reply& job : reply.elements()) {
      begin(job[0].str(), job[1].str(), job[2].str(), job[3].str(), milliseconds(job[4].integer()));
    }
    if (!reply.elements().empty()) {
      logger()->info(
          "crew::redis::Worker {}: calls whose reply was lost had started {} jobs; they run now",
          options.queue, reply.elements().size());
    }
  }

  // Starts the jobs of a crew_take reply ({due_ms, {id, lease, task, args, timeout_ms,
  // attempt}...}) that asked for `asked` jobs. With `may_inline`, a lone job that may run on this
  // thread (see inline_below) is registered but not launched: the caller runs it (run_inline).
  Started start_taken(const Reply& taken, std::size_t asked, bool may_inline = true) {
    const auto& elements = taken.elements();
    Started started;
    started.count = elements.size() - 1;
    started.due = IdleHint{Clock::now(), taken[0].integer()};
    started.drained = started.count < asked;
    for (std::size_t i = 1; i < elements.size(); ++i) {
      const Reply& job = elements[i];
      const milliseconds timeout(job[4].integer());
      const bool here = may_inline && started.count == 1 && threads && timeout.count() == 0;
      auto [running_job, inlined] = track(job[0].str(), job[1].str(), here);
      if (inlined) {
        started.job = std::move(running_job);
        started.task = job[2].str();
        started.args = job[3].str();
      } else {
        launch(running_job, job[2].str(), job[3].str(), timeout);
      }
    }
    return started;
  }

  void begin(const std::string& job_id, const std::string& lease, const std::string& task,
             std::string args, milliseconds timeout) {
    launch(track(job_id, lease, false).first, task, std::move(args), timeout);
  }

  // Registers a job begun; with `may_inline`, says whether it runs on the calling thread: only
  // when nothing else runs and the jobs finished so far suggest it is short.
  std::pair<std::shared_ptr<Running>, bool> track(const std::string& job_id,
                                                  const std::string& lease, bool may_inline) {
    auto job = std::make_shared<Running>();
    job->id = job_id;
    job->lease = lease;
    std::lock_guard lock(mutex);
    const bool here = may_inline && running.empty() && run_seconds > 0 &&
                      run_seconds < std::chrono::duration<double>(options.inline_below).count();
    running[job->lease] = job;
    ++unfinished;
    ++counters.started;
    if (here) {
      ++counters.inlined;
      running_inline = job;
    }
    return {std::move(job), here};
  }

  // Runs the job start_taken() left to this thread; nothing when there is none.
  std::optional<Ran> run_inline(Started started) {
    if (!started.job) return std::nullopt;
    Outcome outcome{started.job, {}, std::nullopt};
    try {
      const this_task::StopScope scope(started.job->stop.get_token());
      outcome.result = tasks.invoke_packed(started.task, started.args).bytes;
    } catch (...) {
      outcome.error = record_of(std::current_exception());
    }
    started.job->finished = true;
    {
      std::lock_guard lock(mutex);
      observe_run_time(*started.job);
      running_inline.reset();
    }
    return Ran{std::move(outcome), started.due, started.drained};
  }

  void launch(const std::shared_ptr<Running>& job, const std::string& task, std::string args,
              milliseconds timeout) {
    RunOptions run{.timeout = timeout, .stop = job->stop.get_token()};
    Future<PackedValue> future;
    try {
      if (processes) {
        future = processes->run_packed(run, task, std::move(args));
      } else {
        future = threads->run(run, [this, task, args = std::move(args)](std::stop_token token) {
          const this_task::StopScope scope(std::move(token));
          return tasks.invoke_packed(task, args);
        });
      }
    } catch (...) {
      finish({job, {}, record_of(std::current_exception())});
      return;
    }
    (void)std::move(future).then([this, job](Future<PackedValue> settled) {
      try {
        finish({job, std::move(settled.get().bytes), std::nullopt});
      } catch (...) {
        finish({job, {}, record_of(std::current_exception())});
      }
    });
  }

  void finish(Outcome outcome) {
    outcome.job->finished = true;
    {
      std::lock_guard lock(mutex);
      observe_run_time(*outcome.job);
      outcomes.push_back(std::move(outcome));
    }
    outcome_queued.notify_one();
  }

  // An outcome of a job that finished already, for the report threads.
  void queue_outcome(Outcome outcome) {
    {
      std::lock_guard lock(mutex);
      outcomes.push_back(std::move(outcome));
    }
    outcome_queued.notify_all();
  }

  // --- prefetch ---

  // Jobs this worker may hold: `workers` running, and beyond them as many waiting in the
  // pool's queue as it expects to finish within `prefetch_window`. Short jobs are then taken and
  // reported many to a call (a no-op job costs Redis a fraction of a call), while long ones are
  // not held back from idle workers elsewhere. Until a job has finished nothing is prefetched.
  // Caller holds `mutex`.
  std::size_t capacity() const {
    const double window = std::chrono::duration<double>(options.prefetch_window).count();
    if (run_seconds <= 0 || window <= 0) return options.workers;
    const double more = window * static_cast<double>(options.workers) / run_seconds;
    return options.workers +
           static_cast<std::size_t>(std::min(more, static_cast<double>(kPrefetchMax)));
  }

  // One job's run time, from its task finishing. Taken to finished bounds it, but counts the
  // time it waited in the pool's queue; while the pool was full, `workers` times the time
  // since the previous finish bounds it too. Caller holds `mutex`.
  void observe_run_time(const Running& job) {
    const auto now = Clock::now();
    double seconds = std::chrono::duration<double>(now - job.begun).count();
    if (unfinished > options.workers && last_finish > job.begun) {
      seconds = std::min(seconds, static_cast<double>(options.workers) *
                                      std::chrono::duration<double>(now - last_finish).count());
    }
    --unfinished;
    last_finish = now;
    run_seconds =
        run_seconds <= 0 ? seconds : run_seconds + kRunTimeWeight * (seconds - run_seconds);
  }

  // --- report thread ---

  // Reports every queued outcome in one crew_report, which also starts up to as many jobs as the
  // reported ones free slots: at steady state one round trip finishes jobs and takes the next.
  // While another report thread's call is in flight, only a batch of kSecondReportBatch.
  void report_loop(const std::stop_token& stop, Connection& connection) {
    for (;;) {
      std::vector<Outcome> batch;
      std::size_t take = 0;
      {
        std::unique_lock lock(mutex);
        if (!outcome_queued.wait(lock, stop, [&] {
              return !outcomes.empty() && (reports == 0 || outcomes.size() >= kSecondReportBatch);
            })) {
          return;
        }
        while (!outcomes.empty() && batch.size() < kReportMax) {
          batch.push_back(std::move(outcomes.front()));
          outcomes.pop_front();
        }
        // The batch's jobs leave `running` after the call, so their slots are free for it.
        const std::size_t busy = running.size() - batch.size() + reserved;
        if (taking && !recover && busy < capacity()) {
          take = std::min(capacity() - busy, kTakeMax);
          reserved += take;
          ++report_taking;
        }
        ++reports;
      }
      const bool lost_take = report(batch, take, stop, connection);
      {
        std::lock_guard lock(mutex);
        for (const Outcome& o : batch) running.erase(o.job->lease);
        reserved -= take;
        if (take > 0) --report_taking;
        --reports;
        if (lost_take) recover = true;
      }
      // Outcomes short of a second batch that waited for this call are this thread's next turn.
      slots_changed.notify_all();
    }
  }

  // Retries through reconnects: a repeated report is refused by its lease tokens, never doubled.
  // A retry takes no jobs: the fetch thread takes work meanwhile. True when the call that took
  // jobs failed: it may have started them without its reply getting here (see crew_recover).
  bool report(const std::vector<Outcome>& batch, std::size_t take, const std::stop_token& stop,
              Connection& report_connection) {
    std::vector<const Outcome*> reported;
    for (const Outcome& o : batch) {
      if (!o.job->abandoned) reported.push_back(&o);
    }
    if (reported.empty()) return false;  // the fetch thread fills the slots
    bool lost_take = false;
    for (bool first = true, done = false; !done; first = false) {
      const std::vector<std::string> command = report_command(reported, first ? take : 0);
      const bool go_on = turn(report_connection, stop, "report", [&] {
        const Reply reply = report_connection.command(command);
        // Any error reply but the functions' own argument checks (`ERR crew_...`) is the server's
        // state: LOADING while a restarted Redis reads its AOF back, BUSY, MISCONF, the library
        // not loaded. Nothing was settled, so the outcomes are sent again after a pause (turn());
        // dropped, their jobs would sit out their leases and run again.
        if (reply.is_error() && !reply.error().starts_with("ERR crew_")) {
          throw std::runtime_error("the outcomes wait: " + reply.error());
        }
        done = true;
        count(reported, reply);
        if (reply.is_error() || reply.elements().size() < 2) return;
        const Reply& taken = reply[1];
        if (start_taken(taken, take, false).count == 0) {
          std::lock_guard lock(mutex);
          idle_hint = IdleHint{Clock::now(), taken[0].integer()};
        }
      });
      if (first) lost_take = take > 0 && !done;
      if (!go_on) return lost_take;
    }
    return lost_take;
  }

  // crew_report for `reported`, taking up to `take` jobs.
  std::vector<std::string> report_command(const std::vector<const Outcome*>& reported,
                                          std::size_t take) const {
    std::vector<std::string> args{"FCALL",
                                  "crew_report",
                                  "1",
                                  prefix,
                                  id,
                                  std::to_string(take),
                                  ms_text(options.lease),
                                  std::to_string(reported.size())};
    args.reserve(args.size() + 5 * reported.size());
    for (const Outcome* o : reported) {
      if (o->error) {
        std::string type = o->error->type.empty() ? "unknown" : o->error->type;
        type.resize(std::min(type.size(), kErrorTypeMax));
        args.insert(args.end(), {"fail", o->job->id, o->job->lease, type, o->error->message});
      } else {
        args.insert(args.end(), {"complete", o->job->id, o->job->lease, o->result, ""});
      }
    }
    return args;
  }

  void count(const std::vector<const Outcome*>& reported, const Reply& reply) {
    std::lock_guard lock(mutex);
    if (reply.is_error()) {
      logger()->error("crew::redis::Worker {}: {} outcomes: {}", options.queue, reported.size(),
                      reply.error());
      return;
    }
    const Reply& statuses = reply[0];
    for (std::size_t i = 0; i < reported.size(); ++i) {
      if (statuses[i].str() == "refused") {
        ++counters.refused;
      } else if (reported[i]->error) {
        ++counters.failed;
      } else {
        ++counters.completed;
      }
    }
  }

  // --- lease thread ---

  void lease_loop(const std::stop_token& stop) {
    auto next_reclaim = Clock::now();
    for (;;) {
      pause(stop, options.lease / 3);
      if (stop.stop_requested()) return;
      if (!turn(lease_connection, stop, "lease", [&] {
            renew_all();
            if (Clock::now() >= next_reclaim) {
              const Reply reply =
                  fcall(lease_connection, "crew_reclaim",
                        {"100", std::to_string(options.max_reclaims), ms_text(options.lease)});
              if (reply.is_error()) throw std::runtime_error("crew_reclaim: " + reply.error());
              next_reclaim = Clock::now() + options.lease / 2;
            }
          })) {
        return;
      }
    }
  }

  void renew_all() {
    std::map<std::string, std::shared_ptr<Running>> jobs;  // by lease token
    {
      std::lock_guard lock(mutex);
      for (const auto& [lease, job] : running) {
        if (!job->abandoned && !job->finished) jobs.emplace(lease, job);
      }
    }
    std::vector<std::string> args{ms_text(options.lease)};
    for (auto it = jobs.begin(); it != jobs.end();) {
      args.resize(1);
      for (std::size_t n = 0; it != jobs.end() && n < kRenewMax; ++it, ++n) {
        args.insert(args.end(), {it->second->id, it->first});
      }
      const Reply reply = fcall(lease_connection, "crew_renew_many", args);
      if (reply.is_error()) throw std::runtime_error("crew_renew_many: " + reply.error());
      for (const Reply& lease : reply.elements()) {
        const auto& job = jobs.at(lease.str());
        if (job->finished) continue;
        job->abandoned = true;
        job->stop.request_stop();  // process isolation: kills the task's process
        logger()->warn("crew::redis::Worker {}: lost the lease of job {}; stopped it",
                       options.queue, job->id);
        std::lock_guard lock(mutex);
        ++counters.lost;
      }
    }
  }

  // --- stop ---

  void release(const std::vector<std::shared_ptr<Running>>& jobs) {
    for (const auto& job : jobs) {
      try {
        if (lease_connection.broken()) lease_connection.reconnect(options.command_timeout);
        const Reply reply = fcall(lease_connection, "crew_release", {job->id, job->lease});
        if (!reply.is_error() && reply.str() == "ok") {
          std::lock_guard lock(mutex);
          ++counters.released;
        }
      } catch (const ConnectionError& e) {
        // Its lease expires instead, and crew_reclaim hands it to another worker.
        logger()->warn("crew::redis::Worker {}: job {} not handed back: {}", options.queue, job->id,
                       e.what());
      }
    }
  }

  // Ends the fetch thread's XREADGROUP BLOCK now rather than after `block`; the other
  // connections belong to running threads, so this takes one of its own.
  void unblock_fetcher() {
    if (fetch_client < 0) return;
    try {
      Connection connection(url, {options.connect_timeout, options.command_timeout, false});
      connection.command({"CLIENT", "UNBLOCK", std::to_string(fetch_client.load())});
    } catch (const ConnectionError&) {
      // The thread notices the stop after its block time instead.
    }
  }

  // Stops `jobs` and hands them back (crew_release), but for those handed back already. Uses the
  // lease connection: the lease thread has ended.
  void hand_back(const std::vector<std::shared_ptr<Running>>& jobs) {
    std::vector<std::shared_ptr<Running>> left;
    for (const auto& job : jobs) {
      if (job && !job->abandoned.exchange(true)) left.push_back(job);
    }
    for (const auto& job : left) job->stop.request_stop();
    release(left);
  }

  void stop(milliseconds deadline) {
    std::lock_guard guard(stop_mutex);
    if (stopped) return;
    stopped = true;
    taking = false;
    // The fetch thread's turn ends with a read that starts nothing, or with a job it runs itself
    // (whose outcome then goes to the report threads); it takes no more.
    fetcher.request_stop();
    unblock_fetcher();
    {
      std::unique_lock lock(mutex);
      slots_changed.wait_for(lock, deadline, [&] { return running.empty(); });
    }
    leaser.request_stop();
    leaser.join();
    // A job the fetch thread runs itself goes back before the join, which waits for it: it may
    // outlast the deadline. The others only after: until then the thread may still be reading,
    // and would take them again.
    std::shared_ptr<Running> own;
    {
      std::lock_guard lock(mutex);
      own = running_inline;
    }
    hand_back({own});
    fetcher.join();
    // Outcomes still queued are not reported: their jobs are handed back with the rest. After the
    // joins no call is in flight, so `running` holds every job this worker started.
    for (auto& reporter : reporters) reporter.request_stop();
    for (auto& reporter : reporters) reporter.join();
    std::vector<std::shared_ptr<Running>> left;
    {
      std::lock_guard lock(mutex);
      for (const auto& [lease, job] : running) left.push_back(job);
    }
    hand_back(left);
    processes.reset();
    threads.reset();
  }
};

Worker::Worker(const Tasks& tasks, WorkerOptions options)
    : impl_(std::make_unique<Impl>(tasks, std::move(options))) {
  Impl& i = *impl_;
  // The logger (and spdlog's registry) exist before the worker's threads start, so that their
  // creation happens-before their log calls.
  (void)logger();
  const std::string policy = i.fetch_connection.check_noeviction();
  if (policy != "noeviction") {
    logger()->warn(
        "crew::redis::Worker {}: {} has maxmemory-policy '{}': Redis may evict queue keys and "
        "lose jobs silently; set it to 'noeviction'",
        i.options.queue, i.url.redacted(), policy);
  }
  const Reply init = i.fcall(i.fetch_connection, "crew_init", {});
  if (init.is_error()) throw ConnectionError("crew_init: " + init.error());
  // Named, so that top and perf tell them apart.
  for (std::size_t n = 0; n < kReporters; ++n) {
    i.reporters[n] = std::jthread([&i, n](const std::stop_token& stop) {
      pthread_setname_np(pthread_self(), "crew-rd-report");
      i.report_loop(stop, i.report_connections[n]);
    });
  }
  i.leaser = std::jthread([&i](const std::stop_token& stop) {
    pthread_setname_np(pthread_self(), "crew-rd-lease");
    i.lease_loop(stop);
  });
  i.fetcher = std::jthread([&i](const std::stop_token& stop) {
    pthread_setname_np(pthread_self(), "crew-rd-fetch");
    i.fetch_loop(stop);
  });
}

Worker::~Worker() {
  stop(milliseconds(0));
}

void Worker::stop(milliseconds deadline) {
  impl_->stop(deadline);
}

WorkerStats Worker::stats() const {
  std::lock_guard lock(impl_->mutex);
  WorkerStats stats = impl_->counters;
  stats.prefetch = impl_->capacity() - impl_->options.workers;
  return stats;
}

QueueStats Worker::queue_stats() const {
  Impl& i = *impl_;
  std::lock_guard lock(i.stats_mutex);
  if (!i.stats_connection) {
    i.stats_connection = std::make_unique<Connection>(
        i.url, ConnectionOptions{i.options.connect_timeout, i.options.command_timeout, false});
  } else if (i.stats_connection->broken()) {
    i.stats_connection->reconnect(i.options.command_timeout);
  }
  return read_queue_stats(*i.stats_connection, i.prefix);
}

const std::string& Worker::id() const noexcept {
  return impl_->id;
}

}  // namespace crew::inline v0::redis
