// crew::Message — a structured-clone value, what Node's postMessage carries: null, booleans,
// numbers, strings, transferred Buffers, SharedBuffers, MessagePorts, arrays and maps of them.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <crew/buffer.hpp>
#include <crew/shared_buffer.hpp>

namespace crew {
inline namespace v0 {

class MessagePort;  // <crew/port.hpp>

namespace detail {
// Owns a MessagePort without message.hpp seeing its definition: the code that stores a port (which
// does see it) records how to destroy it, so destroying a Message never needs the complete type.
struct PortDeleter {
  void (*destroy)(MessagePort*) noexcept = nullptr;
  void operator()(MessagePort* port) const noexcept { destroy(port); }
};
using PortHandle = std::unique_ptr<MessagePort, PortDeleter>;

[[noreturn]] void throw_integer_range(std::int64_t value, std::int64_t min, std::uint64_t max,
                                      std::size_t bits);
[[noreturn]] void throw_unsigned_integer_range(std::uint64_t value);
}  // namespace detail

/// One value of a message: null, a boolean, a 64-bit integer, a double, a UTF-8 string, a
/// move-only Buffer, a SharedBuffer handle, a move-only MessagePort, or an array or string-keyed
/// map of further Messages. Messages convert implicitly from those types:
///
///     crew::Message m = 42;                    // integer (any integral type but bool)
///     m = "text";                              // string
///     m = std::move(buffer);                   // buffer: the same bytes, `buffer` is detached
///     crew::Message::Map job;
///     job.emplace("id", 7);
///     job.emplace("rows", crew::Message::Array{});
///     job["rows"].as<crew::Message::Array>().emplace_back(2.5);
///     crew::Message msg = std::move(job);
///     std::int64_t id = msg["id"].as<std::int64_t>();
///
/// A Message is move-only, because Buffers and ports are: moving one (or posting it) never copies
/// the bytes of a Buffer or the elements of an array or map. `clone()` makes a deep copy when the
/// message holds no Buffer and no port.
///
/// Every checked accessor throws crew::BadArguments naming the kind it expected and the kind (and
/// a short rendering) of what the message holds.
///
/// Thread safety: a Message is a value: use one object from one thread at a time. Moving it to
/// another thread through a crew queue or port publishes its contents.
class Message {
 public:
  /// The elements of an array message.
  using Array = std::vector<Message>;
  /// The entries of a map message, ordered by key; lookups accept std::string_view.
  using Map = std::map<std::string, Message, std::less<>>;

  /// What a message holds. The order is that of the alternatives inside a Message.
  enum class Kind {
    null,           ///< no value (a default-constructed or moved-from message)
    boolean,        ///< bool
    integer,        ///< std::int64_t
    number,         ///< double
    string,         ///< std::string (UTF-8 by convention; not checked)
    buffer,         ///< crew::Buffer, possibly detached
    shared_buffer,  ///< crew::SharedBuffer
    port,           ///< crew::MessagePort
    array,          ///< Message::Array
    map             ///< Message::Map
  };

  /// The name of a kind, as spelled in the enum: "null", "integer", "shared_buffer", ...
  [[nodiscard]] static std::string_view kind_name(Kind kind) noexcept;

  /// A null message.
  Message() noexcept = default;
  /// A null message.
  Message(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)
  /// A boolean. (A template, so that pointers do not silently convert to bool.)
  template <class T>
  requires std::same_as<T, bool> Message(T value)
  noexcept : value_(std::in_place_index<1>, value) {}  // NOLINT
  /// An integer, from any integral type but bool. Throws crew::BadArguments for an unsigned value
  /// above INT64_MAX.
  template <std::integral T>
  requires(!std::same_as<T, bool>) Message(T value)  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<2>, to_int64(value)) {}
  /// A number (double), from any floating-point type.
  template <std::floating_point T>
  Message(T value) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<3>, static_cast<double>(value)) {}
  /// A string. A null `text` pointer gives a null message.
  Message(const char* text);  // NOLINT(google-explicit-constructor)
  /// A string.
  Message(std::string text) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<4>, std::move(text)) {}
  /// A string (copied).
  Message(std::string_view text)  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<4>, text) {}
  /// A buffer: takes over the bytes (same address); `buffer` is left detached.
  Message(Buffer&& buffer) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<5>, std::move(buffer)) {}
  /// A shared buffer: the message holds another handle to the same block.
  Message(SharedBuffer buffer) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<6>, std::move(buffer)) {}
  /// A port, moved into the message. Defined next to MessagePort (src/core/message_port_glue.cpp).
  Message(MessagePort&& port);  // NOLINT(google-explicit-constructor)
  /// An array.
  Message(Array items) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<8>, std::move(items)) {}
  /// A map.
  Message(Map entries) noexcept  // NOLINT(google-explicit-constructor)
      : value_(std::in_place_index<9>, std::move(entries)) {}

  /// Moves never copy bytes or elements; the source is left null.
  Message(Message&& other) noexcept;
  Message& operator=(Message&& other) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message();

  /// A deep copy. Strings, arrays and maps are copied; a SharedBuffer copy is another handle to
  /// the same block. Throws crew::BadArguments, naming the path (`items[2]`, `job.rows`), when the
  /// message holds a Buffer or a MessagePort anywhere: those are moved, never cloned.
  [[nodiscard]] Message clone() const;

  [[nodiscard]] Kind kind() const noexcept { return static_cast<Kind>(value_.index()); }
  [[nodiscard]] bool is_null() const noexcept { return kind() == Kind::null; }
  /// True when the message holds a T, one of bool, std::int64_t, double, std::string, Buffer,
  /// SharedBuffer, MessagePort, Array, Map (exact kind: `is<double>()` is false for an integer).
  template <class T>
  [[nodiscard]] bool is() const noexcept {
    return kind() == kind_of<T>();
  }

  /// Checked access.
  /// - T one of bool, std::int64_t, double, std::string, Buffer, SharedBuffer, Array, Map: a
  ///   reference to the value inside; the message must hold exactly that kind (an integer is not
  ///   a double: read numbers of either kind with to_double()).
  /// - T any other integral type (int, std::uint32_t, std::size_t, ...): the integer by value,
  ///   converted; throws crew::BadArguments when it does not fit in T.
  /// Throws crew::BadArguments naming the expected and the actual kind otherwise, e.g.
  /// `crew::Message: expected a string but this message holds an integer (42)`.
  template <class T>
  [[nodiscard]] decltype(auto) as() {
    if constexpr (kStored<T>) {
      if (auto* value = std::get_if<T>(&value_)) return static_cast<T&>(*value);
      throw_kind(kind_of<T>());
    } else {
      return integer_as<T>();
    }
  }
  template <class T>
  [[nodiscard]] decltype(auto) as() const {
    if constexpr (kStored<T>) {
      if (const auto* value = std::get_if<T>(&value_)) return static_cast<const T&>(*value);
      throw_kind(kind_of<T>());
    } else {
      return integer_as<T>();
    }
  }

  /// The value of an integer or number message as a double (an integer beyond 2^53 rounds).
  /// Throws crew::BadArguments for any other kind.
  [[nodiscard]] double to_double() const;

  /// The port inside. Defined next to MessagePort (src/core/message_port_glue.cpp). Throws
  /// crew::BadArguments when the message holds no port.
  [[nodiscard]] MessagePort& as_port();
  [[nodiscard]] const MessagePort& as_port() const;
  /// Moves the port out; the message becomes null. Defined next to MessagePort. Throws
  /// crew::BadArguments when the message holds no port.
  [[nodiscard]] MessagePort take_port();

  /// Moves the Buffer out (same bytes, same address); the message becomes null. Throws
  /// crew::BadArguments when the message holds no Buffer.
  [[nodiscard]] Buffer take_buffer();

  /// The entry `key` of a map message. Throws crew::BadArguments when the message is not a map,
  /// or has no such key (the error lists up to 10 keys it does have).
  [[nodiscard]] Message& operator[](std::string_view key);
  [[nodiscard]] const Message& operator[](std::string_view key) const;
  /// The same as at(i); also keeps `m[0]` from meaning `m[std::string_view(nullptr)]`.
  [[nodiscard]] Message& operator[](std::size_t i) { return at(i); }
  [[nodiscard]] const Message& operator[](std::size_t i) const { return at(i); }
  /// Element `i` of an array message. Throws crew::BadArguments when the message is not an array
  /// or `i` is out of range (naming the index and the size).
  [[nodiscard]] Message& at(std::size_t i);
  [[nodiscard]] const Message& at(std::size_t i) const;
  /// True when the message is a map with an entry `key` (false for any other kind).
  [[nodiscard]] bool contains(std::string_view key) const noexcept;
  /// Elements of an array, entries of a map, bytes of a string, Buffer or SharedBuffer. Throws
  /// crew::BadArguments for any other kind.
  [[nodiscard]] std::size_t size() const;

  /// True when the message, or any array element or map entry inside it, is a detached Buffer
  /// (one whose bytes were moved elsewhere). Ports refuse to post such a message.
  [[nodiscard]] bool contains_detached_buffer() const noexcept;
  /// The path of the first detached Buffer (`""` for the message itself, `items[2]`, `a.b`), or
  /// nothing when there is none. For error messages.
  [[nodiscard]] std::optional<std::string> detached_buffer_path() const;

  /// A debug rendering close to JSON: `{"id": 7, "rows": [2.5, null]}`; doubles always show a
  /// fraction or exponent (`1.0`), Buffers render as `<Buffer 12 bytes>`, SharedBuffers as
  /// `<SharedBuffer 64 bytes>`, ports as `<MessagePort>`. A rendering longer than `max_length`
  /// characters is cut and ends in "...".
  [[nodiscard]] std::string to_string(std::size_t max_length = std::string::npos) const;

 private:
  template <class T>
  static constexpr bool kStored =
      std::same_as<T, bool> || std::same_as<T, std::int64_t> || std::same_as<T, double> ||
      std::same_as<T, std::string> || std::same_as<T, Buffer> || std::same_as<T, SharedBuffer> ||
      std::same_as<T, Array> || std::same_as<T, Map>;

  template <class T>
  static constexpr Kind kind_of() noexcept {
    static_assert(kStored<T> || std::same_as<T, MessagePort>, "crew::Message holds no such type");
    if constexpr (std::same_as<T, bool>) {
      return Kind::boolean;
    } else if constexpr (std::same_as<T, std::int64_t>) {
      return Kind::integer;
    } else if constexpr (std::same_as<T, double>) {
      return Kind::number;
    } else if constexpr (std::same_as<T, std::string>) {
      return Kind::string;
    } else if constexpr (std::same_as<T, Buffer>) {
      return Kind::buffer;
    } else if constexpr (std::same_as<T, SharedBuffer>) {
      return Kind::shared_buffer;
    } else if constexpr (std::same_as<T, MessagePort>) {
      return Kind::port;
    } else if constexpr (std::same_as<T, Array>) {
      return Kind::array;
    } else {
      return Kind::map;
    }
  }

  template <class T>
  static std::int64_t to_int64(T value) {
    static_assert(sizeof(T) <= sizeof(std::int64_t), "crew::Message: integers are 64-bit at most");
    if constexpr (std::is_unsigned_v<T> && sizeof(T) == sizeof(std::int64_t)) {
      if (value > static_cast<T>(std::numeric_limits<std::int64_t>::max())) {
        detail::throw_unsigned_integer_range(static_cast<std::uint64_t>(value));
      }
    }
    return static_cast<std::int64_t>(value);
  }

  template <class T>
  T integer_as() const {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>,
                  "crew::Message::as<T>: T must be a stored type or an integral type");
    static_assert(sizeof(T) <= sizeof(std::int64_t), "crew::Message: integers are 64-bit at most");
    const std::int64_t value = as<std::int64_t>();
    constexpr auto kMin = static_cast<std::int64_t>(std::numeric_limits<T>::min());
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<T>::max());
    if (value < kMin || (value > 0 && static_cast<std::uint64_t>(value) > kMax)) {
      detail::throw_integer_range(value, kMin, kMax, sizeof(T) * 8);
    }
    return static_cast<T>(value);
  }

  // For the port glue: the port inside, or throw naming `Kind::port` as expected.
  [[nodiscard]] detail::PortHandle& port_handle();
  [[nodiscard]] const detail::PortHandle& port_handle() const;
  [[noreturn]] void throw_kind(Kind expected) const;

  std::variant<std::monostate, bool, std::int64_t, double, std::string, Buffer, SharedBuffer,
               detail::PortHandle, Array, Map>
      value_;
};

}  // namespace v0
}  // namespace crew
