#include "connection.hpp"

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "crew_lua.hpp"
#include "process/backoff.hpp"

namespace crew::inline v0::redis {
namespace {

using std::chrono::milliseconds;

timeval to_timeval(milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>(ms.count() % 1000 * 1000)};
}

Reply convert(const redisReply& r) {
  switch (r.type) {
    case REDIS_REPLY_INTEGER:
      return Reply::integer(r.integer);
    case REDIS_REPLY_STRING:
      return Reply::text(Reply::Type::string, std::string(r.str, r.len));
    case REDIS_REPLY_STATUS:
      return Reply::text(Reply::Type::status, std::string(r.str, r.len));
    case REDIS_REPLY_ERROR:
      return Reply::text(Reply::Type::error, std::string(r.str, r.len));
    case REDIS_REPLY_ARRAY: {
      std::vector<Reply> elements;
      elements.reserve(r.elements);
      for (std::size_t i = 0; i < r.elements; ++i) elements.push_back(convert(*r.element[i]));
      return Reply::array(std::move(elements));
    }
    default:
      return Reply{};  // REDIS_REPLY_NIL
  }
}

}  // namespace

void Connection::Free::operator()(redisContext* context) const noexcept {
  redisFree(context);
}

Connection::Connection(Url url, ConnectionOptions options)
    : url_(std::move(url)), options_(options) {
  connect();
}

Connection::~Connection() = default;

void Connection::connect() {
  context_.reset();
  client_id_ = -1;
  std::unique_ptr<redisContext, Free> context(
      redisConnectWithTimeout(url_.host.c_str(), url_.port, to_timeval(options_.connect_timeout)));
  if (!context) throw ConnectionError(url_.redacted() + ": cannot allocate a hiredis context");
  if (context->err) throw ConnectionError(url_.redacted() + ": " + context->errstr);
  if (redisSetTimeout(context.get(), to_timeval(options_.command_timeout)) != REDIS_OK) {
    throw ConnectionError(url_.redacted() + ": cannot set the command timeout: " + context->errstr);
  }
  context_ = std::move(context);
  if (!url_.password.empty()) {
    if (url_.user.empty()) {
      checked({"AUTH", url_.password}, "AUTH");
    } else {
      checked({"AUTH", url_.user, url_.password}, "AUTH");
    }
  }
  if (url_.db != 0) checked({"SELECT", std::to_string(url_.db)}, "SELECT");
  if (options_.functions && functions_version() < detail::kLibraryVersion) load_functions();
}

Reply Connection::checked(std::initializer_list<std::string_view> args, std::string_view what) {
  Reply reply = command(args);
  if (reply.is_error()) broke(std::string(what) + " failed: " + reply.error());
  return reply;
}

void Connection::broke(std::string_view reason) {
  std::string message = url_.redacted() + ": " + std::string(reason);  // reason may be errstr
  context_.reset();
  throw ConnectionError(message);
}

Reply Connection::run(std::size_t argc, const char** argv, const std::size_t* lengths) {
  std::string request;
  append_command(request, argc, argv, lengths);
  send_all(request);
  return read_reply();
}

// Formats with hiredis but sends here: hiredis writes with write(2), which raises SIGPIPE (its
// default action ends the process) when Redis has gone away. send(2) with MSG_NOSIGNAL reports
// EPIPE alone, where blocking and consuming the signal around each call cost four system calls.
void Connection::append_command(std::string& out, std::size_t argc, const char** argv,
                                const std::size_t* lengths) {
  char* formatted = nullptr;
  const int n = redisFormatCommandArgv(&formatted, static_cast<int>(argc), argv, lengths);
  if (n < 0) throw ConnectionError(url_.redacted() + ": cannot format a command (out of memory)");
  out.append(formatted, static_cast<std::size_t>(n));
  redisFreeCommand(formatted);
}

void Connection::send_all(std::string_view bytes) {
  if (!context_) {
    throw ConnectionError(url_.redacted() + ": the connection is broken; reconnect() first");
  }
  while (!bytes.empty()) {
    const ssize_t sent = ::send(context_->fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        broke("could not send within the command timeout (" +
              std::to_string(options_.command_timeout.count()) + " ms)");
      }
      broke(std::string("send failed: ") + std::strerror(errno));
    }
    bytes.remove_prefix(static_cast<std::size_t>(sent));
  }
}

// hiredis's write buffer stays empty (send_all sent the request), so this only reads.
Reply Connection::read_reply() {
  void* raw = nullptr;
  errno = 0;
  if (redisGetReply(context_.get(), &raw) != REDIS_OK || !raw) failed(errno);
  std::unique_ptr<redisReply, void (*)(void*)> reply(static_cast<redisReply*>(raw),
                                                     freeReplyObject);
  return convert(*reply);
}

void Connection::failed(int error_number) {
  if (context_->err == REDIS_ERR_IO && (error_number == EAGAIN || error_number == EWOULDBLOCK)) {
    broke("no reply within the command timeout (" +
          std::to_string(options_.command_timeout.count()) + " ms)");
  }
  broke(context_->errstr);
}

std::vector<Reply> Connection::pipeline(const std::vector<std::vector<std::string>>& commands) {
  std::string request;
  for (const auto& args : commands) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    for (const auto& arg : args) {
      argv.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    append_command(request, argv.size(), argv.data(), lengths.data());
  }
  send_all(request);
  std::vector<Reply> replies;
  replies.reserve(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) replies.push_back(read_reply());
  return replies;
}

Reply Connection::command(std::initializer_list<std::string_view> args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  for (auto arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  return run(argv.size(), argv.data(), lengths.data());
}

Reply Connection::command(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  for (const auto& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  return run(argv.size(), argv.data(), lengths.data());
}

void Connection::reconnect(milliseconds budget, std::stop_token stop) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + budget;
  crew::detail::RestartBackoff backoff(milliseconds(50), milliseconds(2'000));
  std::mutex mutex;
  std::condition_variable_any wake;
  for (;;) {
    if (stop.stop_requested()) throw Cancelled("reconnecting to " + url_.redacted() + " stopped");
    try {
      connect();
      return;
    } catch (const ConnectionError&) {
      const auto now = Clock::now();
      const auto delay = backoff.fail(now);
      if (now + delay >= deadline) throw;
      std::unique_lock lock(mutex);
      wake.wait_for(lock, stop, delay, [] { return false; });
    }
  }
}

long long Connection::functions_version() {
  Reply reply = command({"FCALL_RO", "crew_version", "0"});
  return reply.type() == Reply::Type::integer ? reply.integer() : 0;
}

void Connection::load_functions() {
  checked({"FUNCTION", "LOAD", "REPLACE", detail::kLibrarySource},
          "FUNCTION LOAD of crew (Redis 7.0 or newer needed)");
}

long long Connection::client_id() {
  if (client_id_ < 0) {
    const Reply reply = command({"CLIENT", "ID"});
    if (reply.is_error()) broke("CLIENT ID failed: " + reply.error());
    client_id_ = reply.integer();
  }
  return client_id_;
}

std::string Connection::check_noeviction() {
  // CONFIG may be renamed or forbidden by ACL on a managed Redis; INFO usually is not.
  Reply config = command({"CONFIG", "GET", "maxmemory-policy"});
  if (config.type() == Reply::Type::array && config.elements().size() == 2) return config[1].str();
  const std::string info = command({"INFO", "memory"}).str();
  constexpr std::string_view kField = "maxmemory_policy:";
  auto at = info.find(kField);
  if (at == std::string::npos) {
    throw BadArguments("redis INFO memory has no maxmemory_policy (" + url_.redacted() + ")");
  }
  at += kField.size();
  return info.substr(at, info.find_first_of("\r\n", at) - at);
}

}  // namespace crew::inline v0::redis
