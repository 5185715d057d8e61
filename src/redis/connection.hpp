// crew::redis (internal): one connection to Redis, its URL and its replies.
//
// A Connection owns a hiredis *blocking* context and is used from one dedicated thread. hiredis
// 0.14 has no Asio adapter, and its async API would need an event loop of its own; a blocking
// context on a thread that does nothing else keeps every call's timeout explicit (the socket's
// send/receive timeout) and the code straight-line. Queue and Worker use one Connection per
// blocking role (submitting, reading results, fetching, renewing leases, reporting).
#pragma once

#include <chrono>
#include <initializer_list>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <crew/errors.hpp>
#include <crew/redis/errors.hpp>

struct redisContext;

namespace crew::inline v0::redis {

/// `redis://[[user]:password@]host[:port][/db]`.
struct Url {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string user;
  std::string password;

  /// The URL without its password, for messages and logs.
  [[nodiscard]] std::string redacted() const;
};

/// Throws std::invalid_argument naming the part that is wrong. User and password may be
/// percent-encoded; an IPv6 host is written in brackets.
Url parse_url(std::string_view url);

/// An owned copy of one reply, so no hiredis type leaks. An error reply is a value (is_error()),
/// not an exception: only the caller knows whether it is expected.
class Reply {
 public:
  enum class Type { nil, integer, string, status, error, array };

  Reply() = default;
  static Reply integer(long long value);
  static Reply text(Type type, std::string value);  // string, status or error
  static Reply array(std::vector<Reply> elements);

  [[nodiscard]] Type type() const noexcept { return type_; }
  [[nodiscard]] bool is_nil() const noexcept { return type_ == Type::nil; }
  [[nodiscard]] bool is_error() const noexcept { return type_ == Type::error; }

  // The accessors throw crew::BadArguments naming the expected and the actual reply.
  /// A string or status reply's bytes.
  [[nodiscard]] const std::string& str() const;
  /// An error reply's message.
  [[nodiscard]] const std::string& error() const;
  [[nodiscard]] long long integer() const;
  [[nodiscard]] const std::vector<Reply>& elements() const;
  /// One element of an array reply, bounds-checked.
  [[nodiscard]] const Reply& operator[](std::size_t i) const;

  /// For messages: `nil`, `42`, `"text"`, `error "ERR ..."`, `[...]`.
  [[nodiscard]] std::string describe() const;

 private:
  Type type_ = Type::nil;
  long long integer_ = 0;
  std::string text_;
  std::vector<Reply> elements_;
};

struct ConnectionOptions {
  std::chrono::milliseconds connect_timeout{2'000};
  /// How long one command may wait for its reply. A blocking command (XREADGROUP BLOCK) needs
  /// a timeout longer than its own block time.
  std::chrono::milliseconds command_timeout{5'000};
  /// Make sure the `crew` function library (at least this build's version) is loaded on every
  /// connect, so a Redis that restarted without persistence gets it back.
  bool functions = true;
};

/// How long one reconnect attempt of a Queue's or a Worker's thread may take before the thread
/// logs and tries again (stoppable).
inline constexpr std::chrono::milliseconds kReconnectBudget{10'000};
/// After an error reply (LOADING after a restart, say), before a thread asks again.
inline constexpr std::chrono::milliseconds kErrorPause{200};

/// A duration as a command argument: whole milliseconds.
inline std::string ms_text(std::chrono::milliseconds ms) {
  return std::to_string(ms.count());
}

class Connection {
 public:
  /// Connects (AUTH, SELECT, the function library); throws ConnectionError.
  explicit Connection(Url url, ConnectionOptions options = {});
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Runs one command; binary-safe. Throws ConnectionError on an I/O error or a timeout, and the
  /// connection is broken until reconnect().
  Reply command(std::initializer_list<std::string_view> args);
  Reply command(const std::vector<std::string>& args);
  /// Sends `commands` at once and returns their replies in order: Redis runs each as soon as the
  /// one before it answered, with no round trip between (a blocking read and what follows it).
  /// Errors as command().
  std::vector<Reply> pipeline(const std::vector<std::vector<std::string>>& commands);

  [[nodiscard]] bool broken() const noexcept { return !context_; }

  /// Connects again, retrying with exponential backoff (50 ms growing to 2 s) for up to
  /// `budget`; throws the last ConnectionError after it, or crew::Cancelled once `stop` fires.
  void reconnect(std::chrono::milliseconds budget, std::stop_token stop = {});

  /// FUNCTION LOAD REPLACE of the library built into crew. A Redis that refuses it is of no
  /// use to crew: ConnectionError, and the connection is broken.
  void load_functions();
  /// The version of the loaded `crew` library, 0 when none is loaded.
  long long functions_version();

  /// The server's maxmemory-policy. Anything but `noeviction` lets Redis evict queue keys under
  /// memory pressure (jobs lost silently), so callers warn about it.
  std::string check_noeviction();

  /// This connection's CLIENT ID (asked once per connect), for another connection's
  /// `CLIENT UNBLOCK` to end a blocking read early.
  long long client_id();

  [[nodiscard]] const Url& url() const noexcept { return url_; }

 private:
  struct Free {
    void operator()(redisContext* context) const noexcept;
  };

  void connect();
  Reply run(std::size_t argc, const char** argv, const std::size_t* lengths);
  void append_command(std::string& out, std::size_t argc, const char** argv,
                      const std::size_t* lengths);
  void send_all(std::string_view bytes);
  Reply read_reply();
  [[noreturn]] void failed(int error_number);
  Reply checked(std::initializer_list<std::string_view> args, std::string_view what);
  [[noreturn]] void broke(std::string_view reason);

  Url url_;
  ConnectionOptions options_;
  std::unique_ptr<redisContext, Free> context_;
  long long client_id_ = -1;
};

}  // namespace crew::inline v0::redis
