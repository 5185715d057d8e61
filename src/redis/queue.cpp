// crew::redis::Queue: submissions on one connection, group-committed: a submitting thread that
// finds no call in flight sends everything queued meanwhile as one crew_submit_many (a lone
// caller sends its own at once), the others wait for its reply. Results on a thread of their own
// that blocks in XREAD on this producer's notification stream and settles the waiting Futures.
// Waiters are kept per job id, so any number of Futures for one job settle from one
// notification.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <crew/redis.hpp>

#include "connection.hpp"
#include "logger.hpp"
#include "outcome.hpp"
#include "stats_reader.hpp"

namespace crew::inline v0::redis {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

void check_job_options(const JobOptions& o) {
  auto bad = [](std::string_view field, std::string_view rule) {
    throw std::invalid_argument(fmt::format("crew::redis::JobOptions: {} {}", field, rule));
  };
  if (o.priority < 0 || o.priority > 3) bad("priority", "must be in 0..3");
  if (o.delay.count() < 0) bad("delay", "must not be negative");
  if (o.attempts < 1) bad("attempts", "must be at least 1");
  if (o.backoff.delay.count() < 0) bad("backoff.delay", "must not be negative");
  if (!(o.backoff.jitter >= 0.0 && o.backoff.jitter <= 1.0)) {  // NaN too
    bad("backoff.jitter", "must be in 0..1");
  }
  if (o.timeout.count() < 0) bad("timeout", "must not be negative");
  if (o.retain.count() < 0) bad("retain", "must not be negative");
  if (o.job_id.size() > 256) bad("job_id", "must be at most 256 bytes");
}

void check_task_name(std::string_view name) {
  if (name.empty() || name.size() > 256) {
    throw std::invalid_argument("crew::redis::Queue: the task name must be 1..256 bytes");
  }
}

// The outcome recorded in a job hash (HMGET state result error_type error ...), or nothing while
// the job has not settled.
std::optional<detail::JobOutcome> settled_outcome(const std::string& id, const Reply& fields) {
  const Reply& state = fields[0];
  if (state.is_nil()) {
    return detail::JobOutcome{
        id, {}, "BadArguments", "does not exist (never submitted, or its record expired)"};
  }
  if (state.str() == "completed") return detail::JobOutcome{id, fields[1].str(), {}, {}};
  if (state.str() == "dead") return detail::JobOutcome{id, {}, fields[2].str(), fields[3].str()};
  return std::nullopt;
}

// Throws std::invalid_argument unless `args` is exactly one msgpack array.
void check_packed_args(std::string_view args) {
  try {
    std::size_t offset = 0;
    const msgpack::object_handle handle = msgpack::unpack(args.data(), args.size(), offset);
    if (handle.get().type == msgpack::type::ARRAY && offset == args.size()) return;
  } catch (const std::exception&) {
    // Not msgpack at all: the same answer.
  }
  throw std::invalid_argument(
      "crew::redis::Queue: packed arguments must be one msgpack array (the task's arguments in "
      "order)");
}

std::optional<JobStatus::Time> time_of(const std::map<std::string, std::string>& fields,
                                       const std::string& name) {
  auto it = fields.find(name);
  if (it == fields.end() || it->second.empty()) return std::nullopt;
  // A zset score (due_ms) may come back in floating-point notation.
  return JobStatus::Time(milliseconds(static_cast<long long>(std::stod(it->second))));
}

JobState state_of(const std::string& name) {
  for (JobState s : {JobState::waiting, JobState::delayed, JobState::active, JobState::completed,
                     JobState::dead}) {
    if (name == to_string(s)) return s;
  }
  throw BadArguments("crew::redis: a job record has the unexpected state '" + name + "'");
}

// Submissions sent in one crew_submit_many at most: bounds the call's time in Redis.
constexpr std::size_t kBatchMax = 1'000;
// How long a results stream lives without a notification or a renewal: crew.lua's RESULTS_TTL_MS.
constexpr std::chrono::milliseconds kResultsTtl = std::chrono::hours(1);

// One job's crew_submit arguments and, once its batch was sent, its reply or the exception.
struct Submission {
  std::vector<std::string> args;
  Reply reply;
  std::exception_ptr error;
  bool done = false;
};

// An error reply that says the server cannot serve now (LOADING, BUSY, MISCONF, OOM ...).
ConnectionError unavailable(const Connection& connection, const Reply& reply) {
  return ConnectionError(connection.url().redacted() + ": " + reply.error());
}

}  // namespace

struct Queue::Impl {
  struct Waiter {
    std::uint64_t token = 0;
    detail::Settle settle;
  };
  struct Waiting {
    std::vector<Waiter> waiters;
    bool ours = false;       // created by this producer: its notification comes to us
    bool submitted = false;  // the job exists in Redis (a missing record means it is gone)
  };

  QueueOptions options;
  Url url;
  std::string prefix;
  std::string producer = process_unique_id();
  std::string results_key;

  std::mutex submit_mutex;  // the submitter connection
  Connection submitter;

  // Group commit: submissions wait here until a thread sends them.
  std::mutex batch_mutex;
  std::condition_variable batch_done;
  std::vector<Submission*> queued;
  bool sending = false;
  Connection reader_connection;

  std::mutex waiting_mutex;
  std::unordered_map<std::string, Waiting> waiting;
  std::uint64_t next_token = 0;

  std::mutex pause_mutex;
  std::condition_variable_any pause_cv;
  std::atomic<long long> reader_client{-1};  // for CLIENT UNBLOCK
  std::jthread reader;

  explicit Impl(QueueOptions o)
      : options(std::move(o)),
        url(parse_url(options.url)),
        prefix(queue_prefix(options.name, "QueueOptions::name")),
        results_key(prefix + "results:" + producer),
        submitter(url, {options.connect_timeout, options.command_timeout, true}),
        reader_connection(
            url, {options.connect_timeout, options.command_timeout + options.block, false}) {}

  // Runs `call` on the submit connection (the caller holds submit_mutex). A connection that
  // dropped while idle shows only on its next command, so a ConnectionError is retried once on a
  // fresh connection: every call made here is idempotent (crew_submit_many by job id, or a
  // read).
  template <class Call>
  auto on_submitter(Call&& call) {
    if (submitter.broken()) submitter.reconnect(options.command_timeout);
    try {
      return call();
    } catch (const ConnectionError&) {
      submitter.reconnect(options.command_timeout);
      return call();
    }
  }

  // Sends `batch` as one crew_submit_many and gives each submission its reply (or the error).
  void send(const std::vector<Submission*>& batch) {
    std::vector<std::string> args{"FCALL", "crew_submit_many", "1", prefix,
                                  std::to_string(batch.size())};
    for (const Submission* s : batch) args.insert(args.end(), s->args.begin(), s->args.end());
    try {
      std::lock_guard lock(submit_mutex);
      const Reply reply = on_submitter([&] { return submitter.command(args); });
      for (std::size_t i = 0; i < batch.size(); ++i) {
        batch[i]->reply = reply.is_error() ? reply : reply[i];
      }
    } catch (const ConnectionError& e) {
      // One exception object per submission: each caller rethrows and drops its own on its own
      // thread, which ThreadSanitizer cannot see ordered through libstdc++'s uninstrumented count.
      for (Submission* s : batch) s->error = std::make_exception_ptr(ConnectionError(e.what()));
    } catch (...) {
      for (Submission* s : batch) s->error = std::current_exception();
    }
  }

  // Queues `mine` and returns once they were sent: by this thread when no call is in flight
  // (with whatever else is queued), or by the thread whose call is.
  void commit(const std::vector<Submission*>& mine) {
    std::unique_lock lock(batch_mutex);
    queued.insert(queued.end(), mine.begin(), mine.end());
    while (!std::ranges::all_of(mine, &Submission::done)) {
      if (sending) {
        batch_done.wait(lock);
        continue;
      }
      sending = true;
      const std::size_t n = std::min(queued.size(), kBatchMax);
      std::vector<Submission*> batch(queued.begin(), queued.begin() + static_cast<long>(n));
      queued.erase(queued.begin(), queued.begin() + static_cast<long>(n));
      lock.unlock();
      send(batch);
      lock.lock();
      for (Submission* s : batch) s->done = true;
      sending = false;
      batch_done.notify_all();
    }
  }

  std::uint64_t add_waiter(const std::string& id, detail::Settle settle) {
    std::lock_guard lock(waiting_mutex);
    const std::uint64_t token = ++next_token;
    waiting[id].waiters.push_back({token, std::move(settle)});
    return token;
  }

  void remove_waiter(const std::string& id, std::uint64_t token) {
    std::lock_guard lock(waiting_mutex);
    auto it = waiting.find(id);
    if (it == waiting.end()) return;
    std::erase_if(it->second.waiters, [&](const Waiter& w) { return w.token == token; });
    if (it->second.waiters.empty()) waiting.erase(it);
  }

  void mark_submitted(const std::string& id, bool ours) {
    std::lock_guard lock(waiting_mutex);
    auto it = waiting.find(id);
    if (it == waiting.end()) return;  // settled already
    it->second.submitted = true;
    it->second.ours = it->second.ours || ours;
  }

  // Settles every Future waiting for `id`, outside the lock (continuations run inline).
  void settle(const std::string& id, const detail::JobOutcome& outcome) {
    std::vector<Waiter> waiters;
    {
      std::lock_guard lock(waiting_mutex);
      auto it = waiting.find(id);
      if (it == waiting.end()) return;
      waiters = std::move(it->second.waiters);
      waiting.erase(it);
    }
    for (auto& w : waiters) w.settle(outcome);
  }

  Reply job_fields(Connection& connection, const std::string& id) {
    Reply reply = connection.command(
        {"HMGET", prefix + "job:" + id, "state", "result", "error_type", "error", "producer"});
    if (reply.is_error()) throw unavailable(connection, reply);
    return reply;
  }

  // Called after submitting to a job that already existed, or to watch one: its notification
  // goes to the producer that created it, so its record says whether it has settled.
  void attach(const std::string& id) {
    const Reply fields = job_fields(submitter, id);
    if (auto outcome = settled_outcome(id, fields)) {
      settle(id, *outcome);
      return;
    }
    mark_submitted(id, !fields[4].is_nil() && fields[4].str() == producer);
  }

  void recheck(Connection& connection, bool all) {
    std::vector<std::string> ids;
    {
      std::lock_guard lock(waiting_mutex);
      for (const auto& [id, w] : waiting) {
        if (w.submitted && (all || !w.ours)) ids.push_back(id);
      }
    }
    for (const auto& id : ids) {
      if (auto outcome = settled_outcome(id, job_fields(connection, id))) settle(id, *outcome);
    }
  }

  // One notification entry carries one or more jobs' outcomes (a worker reports a batch in one
  // entry), each a group of fields from its `id` on.
  void on_notification(const Reply& fields) {
    std::map<std::string, std::string> f;
    const auto settle_one = [&] {
      const std::string& id = f["id"];
      if (f["state"] == "completed") {
        settle(id, {id, f["result"], {}, {}});
      } else if (f["state"] == "dead") {
        settle(id, {id, {}, f["error_type"], f["error"]});
      }
      f.clear();
    };
    for (std::size_t i = 0; i + 1 < fields.elements().size(); i += 2) {
      const std::string& name = fields[i].str();
      if (name == "id" && !f.empty()) settle_one();
      f[name] = fields[i + 1].str();
    }
    if (!f.empty()) settle_one();
  }

  void pause(const std::stop_token& stop) {
    std::unique_lock lock(pause_mutex);
    pause_cv.wait_for(lock, stop, kErrorPause, [] { return false; });
  }

  void read_results(const std::stop_token& stop) {
    Connection& connection = reader_connection;
    std::string last = "0-0";
    bool recheck_all = false;
    auto next_foreign_check = Clock::now();
    auto next_renewal = Clock::now();
    while (!stop.stop_requested()) {
      try {
        if (connection.broken()) {
          connection.reconnect(kReconnectBudget, stop);
          reader_client = connection.client_id();
          recheck_all = true;
        }
        if (recheck_all || Clock::now() >= next_foreign_check) {
          recheck(connection, recheck_all);
          recheck_all = false;
          next_foreign_check = Clock::now() + options.block;
        }
        if (Clock::now() >= next_renewal) {
          // The functions give a results stream an hour to live (crew.lua's RESULTS_TTL_MS), so
          // that a producer gone for good leaves nothing behind; this one is alive.
          (void)connection.command({"PEXPIRE", results_key, std::to_string(kResultsTtl.count())});
          next_renewal = Clock::now() + kResultsTtl / 12;
        }
        const Reply reply =
            connection.command({"XREAD", "COUNT", "1000", "BLOCK", ms_text(options.block),
                                "STREAMS", results_key, last});
        if (reply.is_error()) throw unavailable(connection, reply);
        if (reply.is_nil()) continue;
        for (const Reply& entry : reply[0][1].elements()) {
          last = entry[0].str();
          on_notification(entry[1]);
        }
      } catch (const Cancelled&) {
        return;
      } catch (const ConnectionError& e) {
        logger()->warn("crew::redis::Queue {}: results: {}", options.name, e.what());
        recheck_all = true;
        // A server that answers with errors (LOADING after a restart) is asked again shortly.
        if (!connection.broken()) pause(stop);
      } catch (const std::exception& e) {  // a reply of an unexpected shape
        logger()->error("crew::redis::Queue {}: results: {}", options.name, e.what());
        recheck_all = true;
        pause(stop);
      }
    }
  }
};

Queue::Queue(QueueOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& i = *impl_;
  // The logger (and spdlog's registry) exist before the results thread starts, so that their
  // creation happens-before its log calls.
  (void)logger();
  if (i.options.block.count() < 1) {
    throw std::invalid_argument("crew::redis::QueueOptions: block must be at least 1 ms");
  }
  const std::string policy = i.submitter.check_noeviction();
  if (policy != "noeviction") {
    logger()->warn(
        "crew::redis::Queue {}: {} has maxmemory-policy '{}': under memory pressure Redis may "
        "evict queue keys and lose jobs silently; set it to 'noeviction'",
        i.options.name, i.url.redacted(), policy);
  }
  // Asked here, before the thread owns the connection, so that the destructor always has it
  // (it was never set, and the destructor waited out a whole `block`).
  i.reader_client = i.reader_connection.client_id();
  i.reader = std::jthread([&i](const std::stop_token& stop) { i.read_results(stop); });
}

Queue::~Queue() {
  Impl& i = *impl_;
  i.reader.request_stop();
  {
    // Ends the results thread's XREAD BLOCK now rather than after `block`.
    std::lock_guard lock(i.submit_mutex);
    try {
      if (!i.submitter.broken() && i.reader_client >= 0) {
        i.submitter.command({"CLIENT", "UNBLOCK", std::to_string(i.reader_client.load())});
      }
    } catch (const ConnectionError&) {
      // The thread notices the stop after its block time instead.
    }
  }
  i.reader.join();
  std::unordered_map<std::string, Impl::Waiting> left;
  {
    std::lock_guard lock(i.waiting_mutex);
    left.swap(i.waiting);
  }
  for (auto& [id, w] : left) {
    const detail::JobOutcome cancelled{
        id, {}, "Cancelled", "crew::redis::Queue destroyed before it settled (the job carries on)"};
    for (auto& waiter : w.waiters) waiter.settle(cancelled);
  }
  try {
    if (!i.submitter.broken()) i.submitter.command({"DEL", i.results_key});
  } catch (const ConnectionError&) {
    // The notification stream is only clutter now; MAXLEN bounds it.
  }
}

QueueStats Queue::stats() {
  Impl& i = *impl_;
  std::lock_guard lock(i.submit_mutex);
  return i.on_submitter([&] { return read_queue_stats(i.submitter, i.prefix); });
}

const std::string& Queue::producer_id() const noexcept {
  return impl_->producer;
}

std::vector<std::string> Queue::enqueue_many(const JobOptions& options, std::string_view name,
                                             std::vector<std::string> args,
                                             std::vector<detail::Settle> settles) {
  check_job_options(options);
  check_task_name(name);
  if (args.size() > 1 && !options.job_id.empty()) {
    throw std::invalid_argument(
        "crew::redis::Queue: job_id names one job; submit_many gives each job an id of its own");
  }
  Impl& i = *impl_;
  const std::vector<std::string> fixed = {
      i.producer,
      std::string(name),
      "",  // the job's arguments
      std::to_string(options.priority),
      ms_text(options.delay),
      std::to_string(options.attempts),
      options.backoff.kind == BackoffKind::exponential ? "exponential" : "fixed",
      ms_text(options.backoff.delay),
      fmt::format("{}", options.backoff.jitter),
      ms_text(options.timeout),
      ms_text(options.retain)};
  std::vector<std::string> ids;
  std::vector<Submission> submissions(args.size());
  std::vector<Submission*> mine;
  std::vector<std::uint64_t> tokens(args.size(), 0);
  for (std::size_t n = 0; n < args.size(); ++n) {
    ids.push_back(options.job_id.empty() ? process_unique_id() : options.job_id);
    // Registered before submitting: the notification may arrive before crew_submit_many returns.
    if (settles[n]) tokens[n] = i.add_waiter(ids[n], std::move(settles[n]));
    Submission& s = submissions[n];
    s.args.reserve(12);
    s.args.push_back(ids[n]);
    s.args.insert(s.args.end(), fixed.begin(), fixed.end());
    s.args[3] = std::move(args[n]);
    mine.push_back(&s);
  }
  auto forget = [&](std::size_t from) {
    for (std::size_t n = from; n < ids.size(); ++n) {
      if (tokens[n] != 0) i.remove_waiter(ids[n], tokens[n]);
    }
  };
  try {
    i.commit(mine);
  } catch (...) {
    forget(0);
    throw;
  }
  for (std::size_t n = 0; n < ids.size(); ++n) {
    try {
      const Submission& s = submissions[n];
      if (s.error) std::rethrow_exception(s.error);
      if (s.reply.is_error()) {
        // crew_submit_many's own checks say `ERR crew_submit_many: ...`; anything else is the
        // server's state.
        if (s.reply.error().starts_with("ERR crew_submit")) {
          throw std::invalid_argument("crew::redis::Queue: " + s.reply.error());
        }
        throw unavailable(i.submitter, s.reply);
      }
      if (tokens[n] == 0) continue;
      if (s.reply[0].str() == "created") {
        i.mark_submitted(ids[n], true);
      } else {
        std::lock_guard lock(i.submit_mutex);
        i.on_submitter([&] { i.attach(ids[n]); });
      }
    } catch (...) {
      forget(n);
      throw;
    }
  }
  return ids;
}

std::string Queue::enqueue(const JobOptions& options, std::string_view name, std::string args,
                           detail::Settle settle) {
  std::vector<std::string> one;
  one.push_back(std::move(args));
  std::vector<detail::Settle> settles;
  settles.push_back(std::move(settle));
  return std::move(enqueue_many(options, name, std::move(one), std::move(settles)).front());
}

Future<PackedValue> Queue::run_packed(const JobOptions& options, std::string_view name,
                                      std::string args) {
  check_packed_args(args);
  Future<PackedValue> future;
  enqueue(options, name, std::move(args), detail::settler(future));
  return future;
}

std::string Queue::submit_packed(const JobOptions& options, std::string_view name,
                                 std::string args) {
  check_packed_args(args);
  return enqueue(options, name, std::move(args), nullptr);
}

JobStatus Queue::status(std::string_view job_id) {
  if (job_id.empty() || job_id.size() > 256) {
    throw std::invalid_argument(fmt::format(
        "crew::redis::Queue::status: job_id must be 1..256 bytes, got {}", job_id.size()));
  }
  Impl& i = *impl_;
  JobStatus out;
  out.id = job_id;
  Reply reply;
  {
    std::lock_guard lock(i.submit_mutex);
    reply = i.on_submitter([&] {
      return i.submitter.command({"FCALL_RO", "crew_job", "1", i.prefix, job_id});
    });
  }
  if (reply.is_error()) throw unavailable(i.submitter, reply);
  if (reply.is_nil()) return out;
  std::map<std::string, std::string> f;
  for (std::size_t k = 0; k + 1 < reply.elements().size(); k += 2) {
    f[reply[k].str()] = reply[k + 1].str();
  }
  auto number = [&](const std::string& name) {
    auto it = f.find(name);
    return it == f.end() ? 0 : std::stoi(it->second);
  };
  out.state = state_of(f["state"]);
  out.task = f["task"];
  out.priority = number("priority");
  out.attempt = number("attempt");
  out.attempts = number("attempts");
  out.created = time_of(f, "created_ms").value_or(JobStatus::Time{});
  out.started = time_of(f, "started_ms");
  out.finished = time_of(f, "finished_ms");
  out.due = time_of(f, "due_ms");
  out.result = std::move(f["result"]);
  out.error_type = std::move(f["error_type"]);
  out.error = std::move(f["error"]);
  return out;
}

void Queue::watch(std::string_view job_id, detail::Settle settle) {
  Impl& i = *impl_;
  const std::string id(job_id);
  const std::uint64_t token = i.add_waiter(id, std::move(settle));
  try {
    std::lock_guard lock(i.submit_mutex);
    i.on_submitter([&] { i.attach(id); });
  } catch (...) {
    i.remove_waiter(id, token);
    throw;
  }
}

}  // namespace crew::inline v0::redis
