// Reply: an owned copy of a Redis reply.
#include <string>
#include <utility>
#include <vector>

#include "connection.hpp"

namespace crew::inline v0::redis {
Reply Reply::integer(long long value) {
  Reply r;
  r.type_ = Type::integer;
  r.integer_ = value;
  return r;
}

Reply Reply::text(Type type, std::string value) {
  Reply r;
  r.type_ = type;
  r.text_ = std::move(value);
  return r;
}

Reply Reply::array(std::vector<Reply> elements) {
  Reply r;
  r.type_ = Type::array;
  r.elements_ = std::move(elements);
  return r;
}

namespace {

[[noreturn]] void mismatch(const char* expected, const Reply& actual) {
  throw BadArguments(std::string("redis reply: expected ") + expected + ", got " +
                     actual.describe());
}

}  // namespace

const std::string& Reply::str() const {
  if (type_ != Type::string && type_ != Type::status) mismatch("a string", *this);
  return text_;
}

const std::string& Reply::error() const {
  if (type_ != Type::error) mismatch("an error", *this);
  return text_;
}

long long Reply::integer() const {
  if (type_ != Type::integer) mismatch("an integer", *this);
  return integer_;
}

const std::vector<Reply>& Reply::elements() const {
  if (type_ != Type::array) mismatch("an array", *this);
  return elements_;
}

const Reply& Reply::operator[](std::size_t i) const {
  const auto& all = elements();
  if (i >= all.size()) {
    mismatch(("an array of more than " + std::to_string(i) + " elements").c_str(), *this);
  }
  return all[i];
}

std::string Reply::describe() const {
  switch (type_) {
    case Type::nil:
      return "nil";
    case Type::integer:
      return std::to_string(integer_);
    case Type::string:
    case Type::status:
      return '"' + text_.substr(0, 200) + '"';
    case Type::error:
      return "error \"" + text_ + '"';
    case Type::array: {
      std::string out = "[";
      for (std::size_t i = 0; i < elements_.size() && i < 8; ++i) {
        out += (i ? ", " : "") + elements_[i].describe();
      }
      return out + (elements_.size() > 8 ? ", ...]" : "]");
    }
  }
  return "?";
}

}  // namespace crew::inline v0::redis
