// Round trip of every message type, fully populated, plus the envelope's wire shape.
#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <set>
#include <span>
#include <string>
#include <string_view>

#include "despool/messages/codec.h"
#include "messages/samples.h"

namespace despool::msg {
namespace {

using testing::AllSamples;

std::string Key(const msgpack::object& o) {
  return o.type == msgpack::type::STR ? std::string(o.via.str.ptr, o.via.str.size) : "<non-string>";
}

const msgpack::object* Lookup(const msgpack::object& map, std::string_view key) {
  for (std::uint32_t i = 0; i < map.via.map.size; ++i) {
    if (Key(map.via.map.ptr[i].key) == key) return &map.via.map.ptr[i].val;
  }
  return nullptr;
}

// Every value on the wire differs from its type's default, so a field the codec drops or
// misreads cannot hide behind a default that happens to match.
void ExpectNoDefaults(const msgpack::object& o, const std::string& path) {
  switch (o.type) {
    case msgpack::type::STR:
      EXPECT_NE(o.via.str.size, 0u) << path << " is an empty string";
      break;
    case msgpack::type::POSITIVE_INTEGER:
      EXPECT_NE(o.via.u64, 0u) << path << " is 0";
      break;
    case msgpack::type::BOOLEAN:
      EXPECT_TRUE(o.via.boolean) << path << " is false";
      break;
    case msgpack::type::ARRAY:
      EXPECT_NE(o.via.array.size, 0u) << path << " is an empty array";
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) {
        ExpectNoDefaults(o.via.array.ptr[i], path + "[" + std::to_string(i) + "]");
      }
      break;
    case msgpack::type::MAP:
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        ExpectNoDefaults(o.via.map.ptr[i].val, path + "." + Key(o.via.map.ptr[i].key));
      }
      break;
    case msgpack::type::NEGATIVE_INTEGER:
      break;
    default:
      ADD_FAILURE() << path << " has an unexpected msgpack type " << static_cast<int>(o.type);
  }
}

class RoundTrip : public ::testing::TestWithParam<Envelope> {};

TEST_P(RoundTrip, DecodesToTheSameMessage) {
  const Envelope& original = GetParam();
  const std::string frame = Encode(original);
  DecodeResult decoded = Decode(frame);
  ASSERT_TRUE(decoded.ok()) << TypeName(original.body) << ": " << decoded.error().message;
  EXPECT_EQ(decoded.value().request_id, original.request_id);
  EXPECT_EQ(decoded.value().version, kProtocolVersion);
  EXPECT_EQ(decoded.value().body.index(), original.body.index());
  EXPECT_TRUE(decoded.value() == original) << TypeName(original.body);
  EXPECT_EQ(Encode(decoded.value()), frame) << "re-encoding changed the bytes";
}

TEST_P(RoundTrip, EnvelopeHasVersionTypeIdAndBody) {
  const Envelope& original = GetParam();
  const std::string frame = Encode(original);
  msgpack::object_handle handle = msgpack::unpack(frame.data(), frame.size());
  const msgpack::object& root = handle.get();
  ASSERT_EQ(root.type, msgpack::type::MAP);
  EXPECT_EQ(root.via.map.size, 4u);
  const msgpack::object* v = Lookup(root, "v");
  const msgpack::object* t = Lookup(root, "t");
  const msgpack::object* id = Lookup(root, "id");
  const msgpack::object* b = Lookup(root, "b");
  ASSERT_TRUE(v && t && id && b);
  EXPECT_EQ(v->as<std::uint64_t>(), kProtocolVersion);
  EXPECT_EQ(t->as<std::string>(), TypeName(original.body));
  EXPECT_EQ(id->as<std::uint64_t>(), original.request_id);
  ASSERT_EQ(b->type, msgpack::type::MAP);
  ExpectNoDefaults(*b, TypeName(original.body));
}

std::string ParamName(const ::testing::TestParamInfo<Envelope>& info) {
  std::string name = TypeName(info.param.body);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(EveryMessage, RoundTrip, ::testing::ValuesIn(AllSamples()), ParamName);

TEST(RoundTripShape, EmptyOptionalsAreOmittedAndEnumsAreNames) {
  Envelope e;
  e.request_id = 5;
  e.body = StatusRequest{};
  const std::string frame = Encode(e);
  msgpack::object_handle handle = msgpack::unpack(frame.data(), frame.size());
  const msgpack::object* b = Lookup(handle.get(), "b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->via.map.size, 1u) << "only 'limit' is written";
  EXPECT_NE(Lookup(*b, "limit"), nullptr);
  EXPECT_EQ(Lookup(*b, "job_id"), nullptr);

  e.body = StatusRequest{std::nullopt, std::nullopt, std::nullopt, JobState::kUpToDate, 0};
  const std::string frame2 = Encode(e);
  msgpack::object_handle handle2 = msgpack::unpack(frame2.data(), frame2.size());
  const msgpack::object* state = Lookup(*Lookup(handle2.get(), "b"), "state");
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->as<std::string>(), "up-to-date");
}

TEST(RoundTripShape, SpanOverloadDecodesTheSameBytes) {
  Envelope e;
  e.body = RetryRequest{"job-1"};
  const std::string frame = Encode(e);
  DecodeResult decoded =
      Decode(std::span<const std::byte>(reinterpret_cast<const std::byte*>(frame.data()), frame.size()));
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_TRUE(decoded.value() == e);
}

TEST(RoundTripShape, WireNamesAreUniqueAndNonEmpty) {
  std::set<std::string> names;
  for (const Envelope& e : AllSamples()) {
    std::string name = TypeName(e.body);
    EXPECT_FALSE(name.empty());
    EXPECT_TRUE(names.insert(name).second) << name << " used twice";
  }
  EXPECT_EQ(names.size(), std::variant_size_v<Body>);
}

TEST(ErrorHelpers, ErrorEnvelopeCarriesKindMessageAndRequestId) {
  DecodeError error{ErrorKind::kUnknownType, "unknown message type 'x'", 77};
  DecodeResult decoded = Decode(EncodeError(error));
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(decoded.value().request_id, 77u);
  const auto* reply = std::get_if<ErrorReply>(&decoded.value().body);
  ASSERT_NE(reply, nullptr);
  EXPECT_EQ(reply->kind, ErrorKind::kUnknownType);
  EXPECT_EQ(reply->message, "unknown message type 'x'");
}

}  // namespace
}  // namespace despool::msg
