#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include <crew/errors.hpp>
#include <crew/message.hpp>

namespace crew::inline v0 {

// kind() casts the variant index; a valueless variant would break that, and only a throwing move
// could make one.
static_assert(std::is_nothrow_move_constructible_v<Message::Array>);
static_assert(std::is_nothrow_move_constructible_v<Message::Map>);
static_assert(std::is_nothrow_move_constructible_v<SharedBuffer>);

namespace detail {

void throw_integer_range(std::int64_t value, std::int64_t min, std::uint64_t max,
                         std::size_t bits) {
  throw BadArguments(fmt::format(
      "crew::Message: the integer {} does not fit in the requested {}-bit {} type ({} to {})",
      value, bits, min < 0 ? "signed" : "unsigned", min, max));
}

void throw_unsigned_integer_range(std::uint64_t value) {
  throw BadArguments(fmt::format(
      "crew::Message: the integer {} is too large for a message (integers are 64-bit signed, at "
      "most {}); send it as a string or a double",
      value, std::numeric_limits<std::int64_t>::max()));
}

}  // namespace detail

namespace {

constexpr std::size_t kErrorRenderLength = 80;

std::string_view kind_phrase(Message::Kind kind) noexcept {
  switch (kind) {
    case Message::Kind::null:
      return "null";
    case Message::Kind::boolean:
      return "a boolean";
    case Message::Kind::integer:
      return "an integer";
    case Message::Kind::number:
      return "a number";
    case Message::Kind::string:
      return "a string";
    case Message::Kind::buffer:
      return "a Buffer";
    case Message::Kind::shared_buffer:
      return "a SharedBuffer";
    case Message::Kind::port:
      return "a MessagePort";
    case Message::Kind::array:
      return "an array";
    case Message::Kind::map:
      return "a map";
  }
  return "an unknown kind";
}

// `context` says what was being attempted, e.g. `cannot look up key "id"`; it may be empty.
[[noreturn]] void throw_mismatch(const Message& m, std::string_view expected,
                                 std::string_view context) {
  std::string held(kind_phrase(m.kind()));
  if (!m.is_null()) held += fmt::format(" ({})", m.to_string(kErrorRenderLength));
  throw BadArguments(fmt::format("crew::Message: {}{}expected {} but this message holds {}",
                                 context, context.empty() ? "" : ": ", expected, held));
}

void append_quoted(std::string& out, std::string_view text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

std::string quoted(std::string_view text) {
  std::string out;
  append_quoted(out, text);
  return out;
}

bool is_identifier(std::string_view key) noexcept {
  if (key.empty() || (key[0] >= '0' && key[0] <= '9')) return false;
  for (const char c : key) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

// Paths read like C++ or JS member access: `items[2]`, `job.rows`, `headers["content-type"]`.
std::string key_path(const std::string& path, std::string_view key) {
  if (is_identifier(key)) return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
  return fmt::format("{}[{}]", path, quoted(key));
}

std::string index_path(const std::string& path, std::size_t i) {
  return fmt::format("{}[{}]", path, i);
}

std::string describe_path(const std::string& path) {
  return path.empty() ? std::string() : path + ": ";
}

Message clone_at(const Message& m, const std::string& path) {
  switch (m.kind()) {
    case Message::Kind::null:
      return {};
    case Message::Kind::boolean:
      return m.as<bool>();
    case Message::Kind::integer:
      return m.as<std::int64_t>();
    case Message::Kind::number:
      return m.as<double>();
    case Message::Kind::string:
      return m.as<std::string>();
    case Message::Kind::shared_buffer:
      return m.as<SharedBuffer>();
    case Message::Kind::buffer:
      throw BadArguments(fmt::format(
          "crew::Message::clone: {}a Buffer cannot be cloned; move it instead (or copy its bytes "
          "with crew::Buffer::copy_of)",
          describe_path(path)));
    case Message::Kind::port:
      throw BadArguments(fmt::format(
          "crew::Message::clone: {}a MessagePort cannot be cloned; move the message to transfer "
          "it instead",
          describe_path(path)));
    case Message::Kind::array: {
      const auto& items = m.as<Message::Array>();
      Message::Array copy;
      copy.reserve(items.size());
      for (std::size_t i = 0; i < items.size(); ++i) {
        copy.push_back(clone_at(items[i], index_path(path, i)));
      }
      return copy;
    }
    case Message::Kind::map: {
      Message::Map copy;
      for (const auto& [key, value] : m.as<Message::Map>()) {
        copy.emplace_hint(copy.end(), key, clone_at(value, key_path(path, key)));
      }
      return copy;
    }
  }
  return {};
}

// Appends the rendering of `m`, giving up once `out` is longer than `limit` (the caller cuts).
void render(const Message& m, std::string& out, std::size_t limit) {
  if (out.size() > limit) return;
  switch (m.kind()) {
    case Message::Kind::null:
      out += "null";
      return;
    case Message::Kind::boolean:
      out += m.as<bool>() ? "true" : "false";
      return;
    case Message::Kind::integer:
      out += fmt::format("{}", m.as<std::int64_t>());
      return;
    case Message::Kind::number: {
      const double d = m.as<double>();
      if (std::isnan(d)) {
        out += "NaN";
      } else if (std::isinf(d)) {
        out += d < 0 ? "-Infinity" : "Infinity";
      } else {
        std::string text = fmt::format("{}", d);
        // Keep numbers apart from integers in the rendering: 1.0, not 1.
        if (text.find_first_of(".e") == std::string::npos) text += ".0";
        out += text;
      }
      return;
    }
    case Message::Kind::string:
      append_quoted(out, m.as<std::string>());
      return;
    case Message::Kind::buffer: {
      const auto& buffer = m.as<Buffer>();
      if (buffer.detached()) {
        out += "<Buffer detached>";
      } else {
        out += fmt::format("<Buffer {} bytes>", buffer.size());
      }
      return;
    }
    case Message::Kind::shared_buffer:
      out += fmt::format("<SharedBuffer {} bytes>", m.as<SharedBuffer>().size());
      return;
    case Message::Kind::port:
      out += "<MessagePort>";
      return;
    case Message::Kind::array: {
      out += '[';
      bool first = true;
      for (const auto& item : m.as<Message::Array>()) {
        if (out.size() > limit) return;
        if (!first) out += ", ";
        first = false;
        render(item, out, limit);
      }
      out += ']';
      return;
    }
    case Message::Kind::map: {
      out += '{';
      bool first = true;
      for (const auto& [key, value] : m.as<Message::Map>()) {
        if (out.size() > limit) return;
        if (!first) out += ", ";
        first = false;
        append_quoted(out, key);
        out += ": ";
        render(value, out, limit);
      }
      out += '}';
      return;
    }
  }
}

bool find_detached(const Message& m, std::string& path) {
  switch (m.kind()) {
    case Message::Kind::buffer:
      return m.as<Buffer>().detached();
    case Message::Kind::array: {
      const auto& items = m.as<Message::Array>();
      for (std::size_t i = 0; i < items.size(); ++i) {
        std::string inner = index_path(path, i);
        if (find_detached(items[i], inner)) {
          path = std::move(inner);
          return true;
        }
      }
      return false;
    }
    case Message::Kind::map:
      for (const auto& [key, value] : m.as<Message::Map>()) {
        std::string inner = key_path(path, key);
        if (find_detached(value, inner)) {
          path = std::move(inner);
          return true;
        }
      }
      return false;
    default:
      return false;
  }
}

bool has_detached(const Message& m) noexcept {
  switch (m.kind()) {
    case Message::Kind::buffer:
      return m.as<Buffer>().detached();
    case Message::Kind::array:
      for (const auto& item : m.as<Message::Array>()) {
        if (has_detached(item)) return true;
      }
      return false;
    case Message::Kind::map:
      for (const auto& entry : m.as<Message::Map>()) {
        if (has_detached(entry.second)) return true;
      }
      return false;
    default:
      return false;
  }
}

}  // namespace

std::string_view Message::kind_name(Kind kind) noexcept {
  switch (kind) {
    case Kind::null:
      return "null";
    case Kind::boolean:
      return "boolean";
    case Kind::integer:
      return "integer";
    case Kind::number:
      return "number";
    case Kind::string:
      return "string";
    case Kind::buffer:
      return "buffer";
    case Kind::shared_buffer:
      return "shared_buffer";
    case Kind::port:
      return "port";
    case Kind::array:
      return "array";
    case Kind::map:
      return "map";
  }
  return "unknown";
}

Message::Message(const char* text) {
  if (text != nullptr) value_.emplace<std::string>(text);
}

Message::Message(Message&& other) noexcept : value_(std::move(other.value_)) {
  other.value_.emplace<std::monostate>();
}

Message& Message::operator=(Message&& other) noexcept {
  if (this == &other) return *this;
  // `other` may live inside this message (`m = std::move(m["a"])`): take it out first, so that
  // replacing our value cannot destroy it mid-move.
  Message taken(std::move(other));
  value_ = std::move(taken.value_);
  return *this;
}

Message::~Message() = default;

Message Message::clone() const {
  return clone_at(*this, {});
}

void Message::throw_kind(Kind expected) const {
  throw_mismatch(*this, kind_phrase(expected), {});
}

double Message::to_double() const {
  if (const auto* d = std::get_if<double>(&value_)) return *d;
  if (const auto* i = std::get_if<std::int64_t>(&value_)) return static_cast<double>(*i);
  throw_mismatch(*this, "an integer or a number", "to_double");
}

Buffer Message::take_buffer() {
  auto* buffer = std::get_if<Buffer>(&value_);
  if (buffer == nullptr) throw_mismatch(*this, kind_phrase(Kind::buffer), "take_buffer");
  Buffer out(std::move(*buffer));
  value_.emplace<std::monostate>();
  return out;
}

detail::PortHandle& Message::port_handle() {
  auto* port = std::get_if<detail::PortHandle>(&value_);
  if (port == nullptr) throw_kind(Kind::port);
  return *port;
}

const detail::PortHandle& Message::port_handle() const {
  const auto* port = std::get_if<detail::PortHandle>(&value_);
  if (port == nullptr) throw_kind(Kind::port);
  return *port;
}

const Message& Message::operator[](std::string_view key) const {
  const auto* map = std::get_if<Map>(&value_);
  if (map == nullptr) {
    throw_mismatch(*this, kind_phrase(Kind::map),
                   fmt::format("cannot look up key {}", quoted(key)));
  }
  if (auto it = map->find(key); it != map->end()) return it->second;
  if (map->empty()) {
    throw BadArguments(
        fmt::format("crew::Message: no key {} in this map: the map is empty", quoted(key)));
  }
  constexpr std::size_t kListed = 10;
  std::string keys;
  std::size_t listed = 0;
  for (const auto& entry : *map) {
    if (listed == kListed) break;
    if (listed++ != 0) keys += ", ";
    append_quoted(keys, entry.first);
  }
  if (map->size() > kListed) keys += fmt::format(" and {} more", map->size() - kListed);
  throw BadArguments(
      fmt::format("crew::Message: no key {} in this map; its keys are {}", quoted(key), keys));
}

Message& Message::operator[](std::string_view key) {
  return const_cast<Message&>(std::as_const(*this)[key]);
}

const Message& Message::at(std::size_t i) const {
  const auto* items = std::get_if<Array>(&value_);
  if (items == nullptr) {
    throw_mismatch(*this, kind_phrase(Kind::array), fmt::format("cannot read element {}", i));
  }
  if (i >= items->size()) {
    throw BadArguments(
        fmt::format("crew::Message: index {} is out of range for an array of {} element{}", i,
                    items->size(), items->size() == 1 ? "" : "s"));
  }
  return (*items)[i];
}

Message& Message::at(std::size_t i) {
  return const_cast<Message&>(std::as_const(*this).at(i));
}

bool Message::contains(std::string_view key) const noexcept {
  const auto* map = std::get_if<Map>(&value_);
  return map != nullptr && map->find(key) != map->end();
}

std::size_t Message::size() const {
  switch (kind()) {
    case Kind::string:
      return std::get<std::string>(value_).size();
    case Kind::buffer:
      return std::get<Buffer>(value_).size();
    case Kind::shared_buffer:
      return std::get<SharedBuffer>(value_).size();
    case Kind::array:
      return std::get<Array>(value_).size();
    case Kind::map:
      return std::get<Map>(value_).size();
    default:
      throw_mismatch(*this, "an array, a map, a string, a Buffer or a SharedBuffer", "size");
  }
}

bool Message::contains_detached_buffer() const noexcept {
  return has_detached(*this);
}

std::optional<std::string> Message::detached_buffer_path() const {
  std::string path;
  if (find_detached(*this, path)) return path;
  return std::nullopt;
}

std::string Message::to_string(std::size_t max_length) const {
  std::string out;
  render(*this, out, max_length);
  if (out.size() > max_length) {
    std::size_t cut = max_length;
    // Do not split a UTF-8 sequence: back up over continuation bytes.
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
    out.resize(cut);
    out += "...";
  }
  return out;
}

}  // namespace crew::inline v0
