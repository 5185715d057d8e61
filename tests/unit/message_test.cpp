// Tests for crew/message.hpp: construction of every kind, checked access, clone, moves.
// The header under test comes first, so it is known to compile on its own.
#include <crew/message.hpp>
// Everything else.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <gtest/gtest.h>

#include <crew/buffer.hpp>
#include <crew/errors.hpp>
#include <crew/shared_buffer.hpp>

namespace {

using crew::Message;
using Kind = crew::Message::Kind;

// The what() of the BadArguments that `fn` throws; fails the test when it throws nothing.
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const crew::BadArguments& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected crew::BadArguments";
  return {};
}

// A map message {"items": [1, "two", <Buffer 4 bytes>], "name": "job"}.
Message job_with_buffer() {
  Message::Array items;
  items.emplace_back(1);
  items.emplace_back("two");
  items.emplace_back(crew::Buffer::copy_of("abcd"));
  Message::Map map;
  map.emplace("items", std::move(items));
  map.emplace("name", "job");
  return map;
}

static_assert(!std::is_copy_constructible_v<Message>);
static_assert(!std::is_copy_assignable_v<Message>);
static_assert(std::is_nothrow_move_constructible_v<Message>);
static_assert(std::is_nothrow_move_assignable_v<Message>);
static_assert(!std::is_convertible_v<int*, Message>, "pointers must not become booleans");

TEST(Message, DefaultAndNullptrAreNull) {
  Message a;
  Message b = nullptr;
  EXPECT_TRUE(a.is_null());
  EXPECT_EQ(b.kind(), Kind::null);
  EXPECT_EQ(a.to_string(), "null");
  const char* none = nullptr;
  EXPECT_TRUE(Message(none).is_null());
}

TEST(Message, IntegralTypesBecomeInt64) {
  Message i = 42;
  Message c = static_cast<unsigned char>(200);
  Message l = std::numeric_limits<std::int64_t>::min();
  Message u = std::uint64_t{7};
  Message s = std::size_t{9};
  EXPECT_EQ(i.kind(), Kind::integer);
  EXPECT_EQ(i.as<std::int64_t>(), 42);
  EXPECT_EQ(c.as<std::int64_t>(), 200);
  EXPECT_EQ(l.as<std::int64_t>(), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(u.as<std::int64_t>(), 7);
  EXPECT_TRUE(s.is<std::int64_t>());
  EXPECT_FALSE(s.is<double>());
  EXPECT_FALSE(s.is<crew::MessagePort>());
  Message zero = 0;  // an integer, not nullptr nor a null const char*
  Message ch = 'a';
  EXPECT_EQ(zero.kind(), Kind::integer);
  EXPECT_EQ(ch.as<std::int64_t>(), 97);
}

TEST(Message, HeaderExampleWorks) {
  crew::Message::Map job;
  job.emplace("id", 7);
  job.emplace("rows", crew::Message::Array{});
  job["rows"].as<crew::Message::Array>().emplace_back(2.5);
  crew::Message msg = std::move(job);
  EXPECT_EQ(msg["id"].as<std::int64_t>(), 7);
  EXPECT_EQ(msg.to_string(), R"({"id": 7, "rows": [2.5]})");
  const std::string owned = "copy me";
  Message copied = owned;
  EXPECT_EQ(copied.as<std::string>(), owned);
}

TEST(Message, UnsignedAboveInt64MaxIsRejected) {
  const std::string what = error_of([] { Message m = std::numeric_limits<std::uint64_t>::max(); });
  EXPECT_NE(what.find("18446744073709551615"), std::string::npos) << what;
}

TEST(Message, BoolFloatingAndStrings) {
  Message t = true;
  Message f = 1.5f;
  Message d = 2.25;
  Message lit = "text";
  Message str = std::string("owned");
  Message view = std::string_view("viewed");
  EXPECT_EQ(t.kind(), Kind::boolean);
  EXPECT_TRUE(t.as<bool>());
  EXPECT_EQ(f.kind(), Kind::number);
  EXPECT_DOUBLE_EQ(f.as<double>(), 1.5);
  EXPECT_DOUBLE_EQ(d.as<double>(), 2.25);
  EXPECT_EQ(lit.as<std::string>(), "text");
  EXPECT_EQ(str.as<std::string>(), "owned");
  EXPECT_EQ(view.as<std::string>(), "viewed");
  EXPECT_EQ(view.size(), 6U);
}

TEST(Message, AssignmentConvertsToo) {
  Message m;
  m = "text";
  EXPECT_EQ(m.as<std::string>(), "text");
  m = 7;
  EXPECT_EQ(m.as<std::int64_t>(), 7);
  m = false;
  EXPECT_FALSE(m.as<bool>());
  crew::Buffer buffer(16);
  m = std::move(buffer);
  EXPECT_EQ(m.kind(), Kind::buffer);
  EXPECT_TRUE(buffer.detached());  // NOLINT(bugprone-use-after-move): checking the move
  m = nullptr;
  EXPECT_TRUE(m.is_null());
}

TEST(Message, AccessThroughReferencesWrites) {
  Message m = std::string("abc");
  m.as<std::string>() += "def";
  EXPECT_EQ(m.as<std::string>(), "abcdef");
  Message n = 1;
  ++n.as<std::int64_t>();
  EXPECT_EQ(n.as<std::int64_t>(), 2);
}

TEST(Message, SharedBufferIsAnotherHandle) {
  auto shared = crew::SharedBuffer::create(64);
  Message m = shared;
  EXPECT_EQ(m.kind(), Kind::shared_buffer);
  EXPECT_TRUE(m.as<crew::SharedBuffer>() == shared);
  EXPECT_EQ(m.as<crew::SharedBuffer>().data(), shared.data());
  EXPECT_EQ(m.size(), 64U);
  EXPECT_EQ(m.to_string(), "<SharedBuffer 64 bytes>");
}

TEST(Message, BufferMoveKeepsPointerIdentity) {
  crew::Buffer buffer = crew::Buffer::copy_of("hello world!");
  const std::byte* address = buffer.data();
  Message m = std::move(buffer);
  EXPECT_TRUE(buffer.detached());  // NOLINT(bugprone-use-after-move): checking the move
  EXPECT_EQ(m.as<crew::Buffer>().data(), address);
  EXPECT_EQ(m.size(), 12U);
  EXPECT_EQ(m.to_string(), "<Buffer 12 bytes>");
  crew::Buffer out = m.take_buffer();
  EXPECT_EQ(out.data(), address);
  EXPECT_EQ(out.view(), "hello world!");
  EXPECT_TRUE(m.is_null());
  const std::string what = error_of([&] { (void)m.take_buffer(); });
  EXPECT_NE(what.find("expected a Buffer"), std::string::npos) << what;
  EXPECT_NE(what.find("holds null"), std::string::npos) << what;
}

TEST(Message, KindNames) {
  EXPECT_EQ(Message::kind_name(Kind::null), "null");
  EXPECT_EQ(Message::kind_name(Kind::boolean), "boolean");
  EXPECT_EQ(Message::kind_name(Kind::integer), "integer");
  EXPECT_EQ(Message::kind_name(Kind::number), "number");
  EXPECT_EQ(Message::kind_name(Kind::string), "string");
  EXPECT_EQ(Message::kind_name(Kind::buffer), "buffer");
  EXPECT_EQ(Message::kind_name(Kind::shared_buffer), "shared_buffer");
  EXPECT_EQ(Message::kind_name(Kind::port), "port");
  EXPECT_EQ(Message::kind_name(Kind::array), "array");
  EXPECT_EQ(Message::kind_name(Kind::map), "map");
}

TEST(Message, WrongKindNamesExpectedAndActual) {
  const Message m = 42;
  const std::string what = error_of([&] { (void)m.as<std::string>(); });
  EXPECT_NE(what.find("crew::Message: expected a string but this message holds an integer (42)"),
            std::string::npos)
      << what;
  Message s = "hi";
  const std::string what2 = error_of([&] { (void)s.as<Message::Map>(); });
  EXPECT_NE(what2.find("expected a map"), std::string::npos) << what2;
  EXPECT_NE(what2.find("a string (\"hi\")"), std::string::npos) << what2;
  // An integer is not a double under as<>; to_double() converts.
  EXPECT_THROW((void)m.as<double>(), crew::BadArguments);
  EXPECT_DOUBLE_EQ(m.to_double(), 42.0);
  EXPECT_DOUBLE_EQ(Message(0.5).to_double(), 0.5);
  EXPECT_THROW((void)s.to_double(), crew::BadArguments);
}

TEST(Message, LongRenderingsAreCutInErrors) {
  const Message m = std::string(1000, 'x');
  const std::string what = error_of([&] { (void)m.as<bool>(); });
  EXPECT_LT(what.size(), 200U) << what;
  EXPECT_NE(what.find("..."), std::string::npos) << what;
}

TEST(Message, NarrowIntegersAreRangeChecked) {
  const Message m = 300;
  EXPECT_EQ(m.as<int>(), 300);
  static_assert(std::is_same_v<decltype(m.as<int>()), int>);
  static_assert(std::is_same_v<decltype(m.as<std::int64_t>()), const std::int64_t&>);
  EXPECT_EQ(m.as<std::uint16_t>(), 300U);
  const std::string what = error_of([&] { (void)m.as<std::uint8_t>(); });
  EXPECT_NE(what.find("300"), std::string::npos) << what;
  EXPECT_NE(what.find("8-bit unsigned"), std::string::npos) << what;
  EXPECT_NE(what.find("0 to 255"), std::string::npos) << what;
  const Message negative = -1;
  EXPECT_EQ(negative.as<int>(), -1);
  EXPECT_THROW((void)negative.as<unsigned>(), crew::BadArguments);
  EXPECT_THROW((void)negative.as<std::size_t>(), crew::BadArguments);
  EXPECT_THROW((void)Message(1LL << 40).as<std::int32_t>(), crew::BadArguments);
  const std::string what2 = error_of([] { (void)Message("7").as<int>(); });
  EXPECT_NE(what2.find("expected an integer but this message holds a string"), std::string::npos)
      << what2;
}

TEST(Message, NestedArraysAndMaps) {
  Message::Array inner;
  inner.emplace_back(1);
  inner.emplace_back(2.0);
  Message::Map map;
  map.emplace("inner", std::move(inner));
  map.emplace("flag", true);
  map["nested"] = Message::Map{};
  Message m = std::move(map);
  m["nested"].as<Message::Map>().emplace("deep", "value");

  EXPECT_EQ(m.kind(), Kind::map);
  EXPECT_EQ(m.size(), 3U);
  EXPECT_TRUE(m.contains("inner"));
  EXPECT_FALSE(m.contains("missing"));
  EXPECT_FALSE(Message(1).contains("inner"));
  EXPECT_EQ(m["inner"].size(), 2U);
  EXPECT_EQ(m["inner"].at(0).as<std::int64_t>(), 1);
  EXPECT_EQ(m["inner"][1].to_double(), 2.0);
  EXPECT_EQ(m["nested"]["deep"].as<std::string>(), "value");
  EXPECT_EQ(m.to_string(), R"({"flag": true, "inner": [1, 2.0], "nested": {"deep": "value"}})");
}

TEST(Message, MissingKeyNamesKeyAndListsKeys) {
  Message::Map map;
  for (int i = 0; i < 12; ++i) {
    std::string key = "k";
    key += std::to_string(i + 10);
    map.emplace(std::move(key), i);
  }
  const Message m = std::move(map);
  const std::string what = error_of([&] { (void)m["nope"]; });
  EXPECT_NE(what.find("\"nope\""), std::string::npos) << what;
  EXPECT_NE(what.find("\"k10\""), std::string::npos) << what;
  EXPECT_NE(what.find("\"k19\""), std::string::npos) << what;
  EXPECT_EQ(what.find("\"k20\""), std::string::npos) << what;  // only 10 listed
  EXPECT_NE(what.find("2 more"), std::string::npos) << what;

  const std::string what2 = error_of([] { (void)Message(5)["id"]; });
  EXPECT_NE(what2.find("\"id\""), std::string::npos) << what2;
  EXPECT_NE(what2.find("expected a map but this message holds an integer (5)"), std::string::npos)
      << what2;
}

TEST(Message, IndexOutOfRangeNamesIndexAndSize) {
  Message::Array items;
  items.emplace_back(1);
  items.emplace_back(2);
  const Message m = std::move(items);
  const std::string what = error_of([&] { (void)m.at(5); });
  EXPECT_NE(what.find("index 5"), std::string::npos) << what;
  EXPECT_NE(what.find("2 elements"), std::string::npos) << what;
  const std::string what2 = error_of([] { (void)Message("s").at(0); });
  EXPECT_NE(what2.find("expected an array"), std::string::npos) << what2;
  EXPECT_THROW((void)Message(true).size(), crew::BadArguments);
}

TEST(Message, CloneDeepCopies) {
  auto shared = crew::SharedBuffer::create(8);
  Message::Array items;
  items.emplace_back("a");
  items.emplace_back(shared);
  Message::Map map;
  map.emplace("items", std::move(items));
  map.emplace("n", 3.5);
  const Message original = std::move(map);

  Message copy = original.clone();
  EXPECT_EQ(copy.to_string(), original.to_string());
  copy["items"].at(0).as<std::string>() = "changed";
  EXPECT_EQ(original["items"].at(0).as<std::string>(), "a");
  EXPECT_NE(&copy["items"].at(0), &original["items"].at(0));
  // A SharedBuffer clone is another handle to the same block.
  EXPECT_EQ(copy["items"].at(1).as<crew::SharedBuffer>().data(), shared.data());
}

TEST(Message, CloneRefusesBuffersNamingThePath) {
  const Message m = job_with_buffer();
  const std::string what = error_of([&] { (void)m.clone(); });
  EXPECT_NE(what.find("items[2]: a Buffer cannot be cloned; move it instead"), std::string::npos)
      << what;

  const Message bare = crew::Buffer(4);
  const std::string what2 = error_of([&] { (void)bare.clone(); });
  EXPECT_NE(what2.find("a Buffer cannot be cloned"), std::string::npos) << what2;

  Message::Map odd;
  odd.emplace("content-type", crew::Buffer(1));
  const Message odd_key = std::move(odd);
  const std::string what3 = error_of([&] { (void)odd_key.clone(); });
  EXPECT_NE(what3.find(R"(["content-type"]: a Buffer)"), std::string::npos) << what3;
}

TEST(Message, DetachedBufferDetection) {
  Message m = job_with_buffer();
  EXPECT_FALSE(m.contains_detached_buffer());
  EXPECT_FALSE(m.detached_buffer_path().has_value());
  crew::Buffer taken = m["items"].at(2).take_buffer();
  EXPECT_EQ(taken.view(), "abcd");
  EXPECT_FALSE(m.contains_detached_buffer());  // the slot is null now, not a detached buffer

  crew::Buffer source(8);
  crew::Buffer sink = std::move(source);
  m["items"].at(1) = std::move(source);  // NOLINT(bugprone-use-after-move): posting a detached one
  EXPECT_TRUE(m.contains_detached_buffer());
  ASSERT_TRUE(m.detached_buffer_path().has_value());
  EXPECT_EQ(*m.detached_buffer_path(), "items[1]");
  EXPECT_NE(m.to_string().find("<Buffer detached>"), std::string::npos) << m.to_string();

  crew::Buffer gone(1);
  crew::Buffer keep = std::move(gone);
  const Message top = std::move(gone);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(top.contains_detached_buffer());
  EXPECT_EQ(top.detached_buffer_path(), std::string());
}

TEST(Message, LargeNestedMessageMovesWithoutCopying) {
  crew::Buffer buffer(1 << 20);
  const std::byte* address = buffer.data();
  Message::Array rows;
  for (int i = 0; i < 10000; ++i) rows.emplace_back(i);
  Message::Map map;
  map.emplace("rows", std::move(rows));
  map.emplace("payload", std::move(buffer));
  Message a = std::move(map);
  const Message* first_row = &a["rows"].at(0);

  Message b = std::move(a);
  Message c(std::move(b));
  Message d;
  d = std::move(c);
  EXPECT_TRUE(a.is_null());  // NOLINT(bugprone-use-after-move): moved-from messages are null
  EXPECT_TRUE(c.is_null());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(d["payload"].as<crew::Buffer>().data(), address);
  EXPECT_EQ(&d["rows"].at(0), first_row);  // the array's storage moved, not its elements
  EXPECT_EQ(d["rows"].size(), 10000U);
}

TEST(Message, MoveAssignFromOwnChild) {
  Message::Map inner;
  inner.emplace("x", 1);
  Message::Map outer;
  outer.emplace("inner", std::move(inner));
  Message m = std::move(outer);
  m = std::move(m["inner"]);
  EXPECT_EQ(m["x"].as<std::int64_t>(), 1);
  EXPECT_EQ(m.size(), 1U);
}

TEST(Message, RenderingOfScalars) {
  EXPECT_EQ(Message(1.0).to_string(), "1.0");
  EXPECT_EQ(Message(-3).to_string(), "-3");
  EXPECT_EQ(Message(false).to_string(), "false");
  EXPECT_EQ(Message("a\"b\n").to_string(), R"("a\"b\n")");
  EXPECT_EQ(Message(std::numeric_limits<double>::infinity()).to_string(), "Infinity");
  EXPECT_EQ(Message(std::string(10, 'y')).to_string(5), "\"yyyy...");
}

}  // namespace
