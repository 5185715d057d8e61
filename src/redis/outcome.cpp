#include "outcome.hpp"

#include <atomic>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>

#include <crew/errors.hpp>
#include <crew/process/detail/type_name.hpp>
#include <crew/process/errors.hpp>
#include <crew/redis.hpp>

namespace crew::inline v0::redis {

ErrorRecord record_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const WorkerCrashed& e) {
    return {"WorkerCrashed", e.what()};
  } catch (const TimedOut& e) {
    return {"TimedOut", e.what()};
  } catch (const BadArguments& e) {
    return {"BadArguments", e.what()};
  } catch (const Cancelled& e) {
    return {"Cancelled", e.what()};
  } catch (const MemoryLimitExceeded& e) {
    return {"MemoryLimitExceeded", e.what()};
  } catch (const RemoteError& e) {
    return {e.type_name(), e.remote_what()};
  } catch (const std::exception& e) {
    return {crew::detail::demangle(typeid(e)), e.what()};
  } catch (...) {
    return {"unknown", "a task threw something that is not a std::exception"};
  }
}

std::exception_ptr error_of(std::string_view job_id, const ErrorRecord& record) {
  const std::string what = fmt::format("job {}: {}", job_id, record.message);
  const std::string_view type = record.type;
  if (type == "WorkerCrashed")
    return std::make_exception_ptr(WorkerCrashed(what, "", 0, 0, -1, {}));
  if (type == "TimedOut") return std::make_exception_ptr(TimedOut(what));
  if (type == "BadArguments") return std::make_exception_ptr(BadArguments(what));
  if (type == "Cancelled") return std::make_exception_ptr(Cancelled(what));
  if (type == "MemoryLimitExceeded") return std::make_exception_ptr(MemoryLimitExceeded(what, 0));
  return std::make_exception_ptr(
      RemoteError(fmt::format("job {} threw {}: {}", job_id, record.type, record.message),
                  record.type, record.message));
}

std::string queue_prefix(std::string_view name, std::string_view field) {
  if (name.empty() || name.size() > 200 || name.find_first_of("{}") != std::string_view::npos) {
    throw std::invalid_argument(
        fmt::format("crew::redis: {} must be 1..200 bytes without braces, got '{}'", field, name));
  }
  return fmt::format("crew:{{{}}}:", name);
}

namespace {
// Bumped in a forked child: its pid differs, and its generators must not repeat the parent's.
std::atomic<unsigned> fork_generation{0};
}  // namespace

std::string process_unique_id() {
  static const int registered =
      pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1); });
  (void)registered;
  // `<host>-<pid>-` is made once per thread and process: gethostname and getpid were two system
  // calls for every job submitted.
  struct Cache {
    unsigned generation = ~0U;
    std::string prefix;
    std::mt19937_64 random;
  };
  thread_local Cache cache;
  if (cache.generation != fork_generation.load()) {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    cache.prefix = fmt::format("{}-{}-", host, ::getpid());
    cache.random.seed(std::random_device{}());
    cache.generation = fork_generation.load();
  }
  return fmt::format("{}{:016x}", cache.prefix, cache.random());
}

const char* to_string(JobState state) noexcept {
  switch (state) {
    case JobState::waiting:
      return "waiting";
    case JobState::delayed:
      return "delayed";
    case JobState::active:
      return "active";
    case JobState::completed:
      return "completed";
    case JobState::dead:
      return "dead";
    case JobState::unknown:
      break;
  }
  return "unknown";
}

std::exception_ptr JobStatus::exception() const {
  if (error_type.empty()) return nullptr;
  return error_of(id, {error_type, error});
}

namespace detail {
std::exception_ptr job_error(const JobOutcome& outcome) {
  return error_of(outcome.id, {outcome.error_type, outcome.error});
}

void throw_result_type(std::string_view expected, const std::exception& cause) {
  throw BadArguments(
      fmt::format("crew::redis: a job's result does not decode as {}: {}", expected, cause.what()));
}
}  // namespace detail

}  // namespace crew::inline v0::redis
