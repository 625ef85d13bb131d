// Every decode rule with a failing case. Frames are built from valid encoded samples and then
// edited (testing::Raw), or written byte by byte for malformed msgpack.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "despool/messages/codec.h"
#include "messages/raw.h"
#include "messages/samples.h"

namespace despool::msg {
namespace {

using testing::FromFrame;
using testing::Raw;
using testing::RawArray;
using testing::RawMap;
using testing::ToFrame;

constexpr std::uint64_t kTwoTo53 = std::uint64_t{1} << 53;

// Decode must never throw; every test goes through this.
DecodeResult DecodeNoThrow(std::string_view frame, const DecodeLimits& limits = {}) {
  try {
    return Decode(frame, limits);
  } catch (...) {
    ADD_FAILURE() << "Decode threw";
    return DecodeError{ErrorKind::kInternal, "threw", 0};
  }
}

// The valid, fully populated sample of body type T, as an editable tree.
template <typename T>
Raw SampleOf() {
  for (const Envelope& e : testing::AllSamples()) {
    if (std::holds_alternative<T>(e.body)) return FromFrame(Encode(e));
  }
  ADD_FAILURE() << "no sample";
  return Raw();
}

Raw Minimal(const char* type, RawMap body) {
  return Raw(RawMap{{"v", Raw(std::uint64_t{1})}, {"t", Raw(type)}, {"id", Raw(std::uint64_t{42})},
                    {"b", Raw(std::move(body))}});
}

// Expects a decode failure of `kind` whose message contains `needle`.
void ExpectError(const std::string& frame, ErrorKind kind, std::string_view needle,
                 const DecodeLimits& limits = {}) {
  DecodeResult r = DecodeNoThrow(frame, limits);
  ASSERT_FALSE(r.ok()) << "decoded although it should fail with '" << needle << "'";
  EXPECT_EQ(r.error().kind, kind) << ToString(r.error().kind) << ": " << r.error().message;
  EXPECT_NE(r.error().message.find(needle), std::string::npos)
      << "message '" << r.error().message << "' does not contain '" << needle << "'";
}
void ExpectBad(const Raw& frame, std::string_view needle) {
  ExpectError(ToFrame(frame), ErrorKind::kBadRequest, needle);
}

// ---------------------------------------------------------------------------------------------
// The samples themselves decode (so each failure below is caused by its one edit).

TEST(Validation, UneditedSamplesDecode) {
  for (const Envelope& e : testing::AllSamples()) {
    DecodeResult r = DecodeNoThrow(ToFrame(FromFrame(Encode(e))));
    EXPECT_TRUE(r.ok()) << TypeName(e.body) << ": " << (r.ok() ? "" : r.error().message);
  }
}

// ---------------------------------------------------------------------------------------------
// Identifiers, names and paths

TEST(Validation, BadPackageIdIsRefused) {
  for (const char* bad : {"..", ".", "../etc", "a/b", "-lead", "", "sp ace"}) {
    Raw m = SampleOf<SubmitRequest>();
    m.At("b.instructions.0.kind") = "refresh";
    m.At("b.instructions.0.package") = bad;
    ExpectBad(m, "instructions[0].package");
  }
  Raw status = SampleOf<StatusRequest>();
  status.At("b.package") = "../x";
  ExpectBad(status, "package id");
  Raw verify = SampleOf<VerifyRequest>();
  verify.At("b.package") = std::string(65, 'a');
  ExpectBad(verify, "longer than 64");
}

TEST(Validation, HostileSourcePathIsRefused) {
  for (const char* path : {"/srv/../etc", "../srv", "relative/dir", "/srv/pkg/..", ""}) {
    Raw m = SampleOf<SubmitRequest>();
    m.At("b.instructions.1.kind") = "refresh";
    m.At("b.instructions.1.source") = path;
    ExpectBad(m, "instructions[1].source");
  }
  Raw nul = SampleOf<Dispatch>();
  nul.At("b.source") = std::string("/srv/a\0b", 8);
  ExpectBad(nul, "NUL");
}

TEST(Validation, EscapingRelativePathsAreRefused) {
  for (const char* path : {"../../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "a//b", ""}) {
    Raw result = SampleOf<JobResult>();
    result.At("b.in_use.0") = path;
    ExpectBad(result, "in_use[0]");

    Raw holder = SampleOf<JobResult>();
    holder.At("b.holders.1.path") = path;
    ExpectBad(holder, "holders[1].path");

    Raw report = SampleOf<JobsReply>();
    report.At("b.jobs.1.report.changed.1") = path;
    ExpectBad(report, "jobs[1].report.changed[1]");
  }
}

TEST(Validation, VersionAbove2To53Minus1IsRefused) {
  Raw m = SampleOf<SubmitRequest>();
  m.At("b.instructions.0.version") = kTwoTo53;
  ExpectBad(m, "above 2^53-1");
  Raw d = SampleOf<Dispatch>();
  d.At("b.version") = ~std::uint64_t{0};
  ExpectBad(d, "version");
  Raw r = SampleOf<JobResult>();
  r.At("b.installed_version") = kTwoTo53;
  ExpectBad(r, "installed_version");

  Raw ok = SampleOf<SubmitRequest>();
  ok.At("b.instructions.0.version") = kTwoTo53 - 1;
  EXPECT_TRUE(DecodeNoThrow(ToFrame(ok)).ok());
}

TEST(Validation, BadJobIdsAreRefused) {
  for (const char* bad : {"", "job id", "job/1", "job_1", "../x"}) {
    Raw m = SampleOf<RetryRequest>();
    m.At("b.job_id") = bad;
    ExpectBad(m, "job_id");
  }
  Raw long_id = SampleOf<CancelJob>();
  long_id.At("b.job_id") = std::string(65, 'a');
  ExpectBad(long_id, "job id");
  Raw ref = SampleOf<SubmitReply>();
  ref.At("b.jobs.1.id") = "a.b";
  ExpectBad(ref, "jobs[1].id");
}

TEST(Validation, BadDpAndGroupNamesAreRefused) {
  Raw dp = SampleOf<SubmitRequest>();
  dp.At("b.instructions.0.dps.1") = "a/b";
  ExpectBad(dp, "instructions[0].dps[1]: DP name 'a/b'");
  Raw group = SampleOf<SubmitRequest>();
  group.At("b.instructions.0.dp_groups.0") = "..";
  ExpectBad(group, "DP group name");
  Raw reg = SampleOf<Register>();
  reg.At("b.dps.0") = "";
  ExpectBad(reg, "dps[0]");
  Raw verify = SampleOf<VerifyRequest>();
  verify.At("b.dp") = "dp 1";
  ExpectBad(verify, "dp");
}

TEST(Validation, BadWorkerNamesAreRefused) {
  Raw empty = SampleOf<Register>();
  empty.At("b.name") = "";
  ExpectBad(empty, "worker name");
  Raw control = SampleOf<Register>();
  control.At("b.name") = "host\nINFO forged log line";
  ExpectBad(control, "control character");
  Raw job = SampleOf<JobsReply>();
  job.At("b.jobs.0.worker") = std::string(129, 'w');
  ExpectBad(job, "jobs[0].worker");
}

// ---------------------------------------------------------------------------------------------
// Cross-field rules and limits

TEST(Validation, RefreshNeedsPackageSourceAndADp) {
  Raw no_package = SampleOf<SubmitRequest>();
  no_package.At("b.instructions.0.kind") = "refresh";
  no_package.Erase("b.instructions.0.package");
  ExpectBad(no_package, "instructions[0].package: required for refresh");

  Raw no_source = SampleOf<SubmitRequest>();
  no_source.At("b.instructions.0.kind") = "refresh";
  no_source.At("b.instructions.0.source") = "";
  ExpectBad(no_source, "instructions[0].source: required for refresh");

  Raw no_dp = SampleOf<SubmitRequest>();
  no_dp.Erase("b.instructions.0.dps");
  no_dp.At("b.instructions.0.dp_groups") = RawArray{};
  ExpectBad(no_dp, "instructions[0].dps: at least one DP");

  Raw dispatch = SampleOf<Dispatch>();
  dispatch.At("b.kind") = "refresh";
  dispatch.At("b.package") = "";
  ExpectBad(dispatch, "required for refresh");

  // Verify may leave package and source empty.
  Raw verify = SampleOf<SubmitRequest>();
  verify.At("b.instructions.0.package") = "";
  verify.At("b.instructions.0.source") = "";
  EXPECT_TRUE(DecodeNoThrow(ToFrame(verify)).ok());
}

TEST(Validation, RetryBaseAboveMaxIsRefused) {
  Raw m = SampleOf<SubmitRequest>();
  m.At("b.instructions.0.policy.retry_base_ms") = std::uint64_t{10000};
  m.At("b.instructions.0.policy.retry_max_ms") = std::uint64_t{5000};
  ExpectBad(m, "instructions[0].policy.retry_base_ms: above retry_max_ms");
}

TEST(Validation, SubmitLimits) {
  Raw none = SampleOf<SubmitRequest>();
  none.At("b.instructions") = RawArray{};
  ExpectBad(none, "submit: instructions: at least one instruction");

  Raw many = SampleOf<SubmitRequest>();
  Raw one = many.At("b.instructions.0");
  many.At("b.instructions") = RawArray(10001, one);
  ExpectBad(many, "instructions: more than 10000 items");

  Raw at_limit = SampleOf<SubmitRequest>();
  at_limit.At("b.instructions") = RawArray(10000, one);
  DecodeResult r = DecodeNoThrow(ToFrame(at_limit));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(std::get<SubmitRequest>(r.value().body).instructions.size(), 10000u);

  Raw dps = SampleOf<SubmitRequest>();
  RawArray names;
  for (int i = 0; i < 1001; ++i) names.emplace_back("dp" + std::to_string(i));
  dps.At("b.instructions.0.dps") = names;
  ExpectBad(dps, "instructions[0].dps: more than 1000 items");

  Raw mixed = SampleOf<SubmitRequest>();
  names.resize(999);
  mixed.At("b.instructions.0.dps") = names;  // 999 DPs + 1 group = 1000: fine
  EXPECT_TRUE(DecodeNoThrow(ToFrame(mixed)).ok());
  mixed.At("b.instructions.0.dp_groups") = RawArray{Raw("g1"), Raw("g2")};
  ExpectBad(mixed, "more than 1000 DPs and DP groups");
}

// ---------------------------------------------------------------------------------------------
// Types and required fields

TEST(Validation, WrongFieldTypesAreRefusedNamingTheField) {
  struct Case {
    Raw message;
    const char* path;
    Raw value;
    const char* needle;
  };
  const Case cases[] = {
      {SampleOf<SubmitRequest>(), "b.instructions.0.version", Raw("17"), "instructions[0].version: must be an unsigned integer"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.version", Raw(std::int64_t{-1}), "must be an unsigned integer"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.version", Raw(1.5), "must be an unsigned integer"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.dps", Raw("dp1"), "instructions[0].dps: must be an array"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.dps.0", Raw(std::uint64_t{7}), "dps[0]: must be a string"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.repair", Raw(std::uint64_t{1}), "repair: must be a boolean"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.kind", Raw("upgrade"), "kind: unknown value 'upgrade'"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.policy", Raw(RawArray{}), "policy: must be a map"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.policy.max_attempts", Raw(std::uint64_t{1} << 32), "max_attempts: must be an unsigned integer up to 4294967295"},
      {SampleOf<SubmitRequest>(), "b.instructions", Raw(RawMap{}), "instructions: must be an array"},
      {SampleOf<StatusRequest>(), "b.state", Raw("done"), "state: unknown value"},
      {SampleOf<StatusRequest>(), "b.limit", Raw(std::int64_t{-5}), "limit"},
      {SampleOf<JobsReply>(), "b.jobs.0.created_at_ms", Raw("yesterday"), "jobs[0].created_at_ms: must be a 64-bit signed integer"},
      {SampleOf<JobsReply>(), "b.jobs.0.next_attempt_at_ms", Raw(~std::uint64_t{0}), "next_attempt_at_ms"},
      {SampleOf<JobResult>(), "b.outcome", Raw(std::uint64_t{0}), "outcome: must be a string"},
      {SampleOf<JobResult>(), "b.attempt", Raw(std::int64_t{-1}), "attempt"},
      {SampleOf<ErrorReply>(), "b.kind", Raw("teapot"), "kind: unknown value"},
      {SampleOf<Event>(), "b.job", Raw("job-1"), "job: must be a map"},
      {SampleOf<Heartbeat>(), "b.metrics.refreshes", Raw(true), "metrics.refreshes"},
      {SampleOf<Register>(), "b.capacity", Raw(2.5), "capacity"},
  };
  for (Case c : cases) {
    c.message.At(c.path) = c.value;
    ExpectBad(c.message, c.needle);
  }
}

TEST(Validation, MissingRequiredFieldsAreRefused) {
  struct Case {
    Raw message;
    const char* key;
    const char* needle;
  };
  const Case cases[] = {
      {SampleOf<RetryRequest>(), "b.job_id", "retry: job_id: required"},
      {SampleOf<CancelRequest>(), "b.job_id", "job_id: required"},
      {SampleOf<SubmitRequest>(), "b.instructions", "instructions: required"},
      {SampleOf<SubmitRequest>(), "b.instructions.0.version", "instructions[0].version: required"},
      {SampleOf<VerifyRequest>(), "b.dp", "dp: required"},
      {SampleOf<JobResult>(), "b.outcome", "outcome: required"},
      {SampleOf<JobResult>(), "b.attempt", "attempt: required"},
      {SampleOf<JobResult>(), "b.holders.0.pid", "holders[0].pid: required"},
      {SampleOf<Register>(), "b.name", "name: required"},
      {SampleOf<Dispatch>(), "b.dp", "dp: required"},
      {SampleOf<JobsReply>(), "b.jobs.1.state", "jobs[1].state: required"},
      {SampleOf<ErrorReply>(), "b.message", "message: required"},
      {SampleOf<Event>(), "b.job", "job: required"},
      {SampleOf<RetryRequest>(), "v", "v: required"},
      {SampleOf<RetryRequest>(), "t", "t: required"},
  };
  for (Case c : cases) {
    c.message.Erase(c.key);
    ExpectBad(c.message, c.needle);
  }
  // nil counts as absent.
  Raw nil = SampleOf<RetryRequest>();
  nil.At("b.job_id") = nullptr;
  ExpectBad(nil, "job_id: required");
}

TEST(Validation, OptionalNilIsAbsentAndUnknownKeysAreIgnored) {
  Raw m = SampleOf<StatusRequest>();
  m.At("b.job_id") = nullptr;
  m.At("b.future_field") = RawMap{{"x", Raw(RawArray{Raw(1), Raw("y")})}};
  m.At("future_envelope_key") = "z";
  DecodeResult r = DecodeNoThrow(ToFrame(m));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& status = std::get<StatusRequest>(r.value().body);
  EXPECT_FALSE(status.job_id.has_value());
  EXPECT_EQ(status.dp, "dp1");

  Raw no_body = Minimal("workers", {});
  no_body.Erase("b");
  r = DecodeNoThrow(ToFrame(no_body));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(std::holds_alternative<WorkersRequest>(r.value().body));
}

TEST(Validation, DuplicateKeysAreRefused) {
  Raw m = SampleOf<RetryRequest>();
  m.At("b").map().emplace_back("job_id", Raw("job-9"));
  ExpectBad(m, "job_id: key appears more than once");
}

// ---------------------------------------------------------------------------------------------
// The envelope

TEST(Validation, UnknownTypeKeepsTheRequestId) {
  Raw m = Minimal("launch-missiles", {});
  DecodeResult r = DecodeNoThrow(ToFrame(m));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnknownType);
  EXPECT_EQ(r.error().request_id, 42u);
  EXPECT_NE(r.error().message.find("launch-missiles"), std::string::npos);
  Raw wrong_type = Minimal("status", {});
  wrong_type.At("t") = std::uint64_t{3};
  ExpectBad(wrong_type, "t: must be a string");
}

TEST(Validation, UnsupportedVersionKeepsTheRequestId) {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{2}, ~std::uint64_t{0}}) {
    Raw m = SampleOf<StatsRequest>();
    m.At("v") = v;
    m.At("id") = std::uint64_t{99};
    DecodeResult r = DecodeNoThrow(ToFrame(m));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kUnsupportedVersion) << r.error().message;
    EXPECT_EQ(r.error().request_id, 99u);
  }
  Raw text = SampleOf<StatsRequest>();
  text.At("v") = "1";
  ExpectBad(text, "v: must be an unsigned integer");
}

TEST(Validation, BadBodiesKeepTheRequestId) {
  Raw m = SampleOf<RetryRequest>();
  m.At("id") = std::uint64_t{1234567};
  m.At("b.job_id") = "../x";
  DecodeResult r = DecodeNoThrow(ToFrame(m));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().request_id, 1234567u);
  Raw bad_id = SampleOf<RetryRequest>();
  bad_id.At("id") = "seven";
  ExpectBad(bad_id, "id: must be an unsigned integer");
  Raw body = SampleOf<RetryRequest>();
  body.At("b") = RawArray{};
  ExpectBad(body, "retry: must be a map");
}

TEST(Validation, EnvelopeMustBeOneMap) {
  ExpectBad(Raw(RawArray{Raw(1), Raw("status")}), "envelope: must be a msgpack map");
  ExpectBad(Raw("status"), "envelope: must be a msgpack map");
  ExpectError("", ErrorKind::kBadRequest, "malformed msgpack");
  std::string two = Encode(Envelope{kProtocolVersion, 1, StatsRequest{}});
  two += two;
  ExpectError(two, ErrorKind::kBadRequest, "trailing bytes");
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes

TEST(Validation, OversizedFrameIsTooLarge) {
  Envelope e{kProtocolVersion, 8, Disconnect{std::string(5000, 'x')}};
  const std::string frame = Encode(e);
  DecodeLimits limits;
  limits.max_frame_bytes = frame.size() - 1;
  ExpectError(frame, ErrorKind::kTooLarge, "over the limit", limits);
  limits.max_frame_bytes = frame.size();
  EXPECT_TRUE(DecodeNoThrow(frame, limits).ok());
  // The default application limit is 4 MiB.
  ExpectError(std::string((4u << 20) + 1, '\x90'), ErrorKind::kTooLarge, "over the limit");
}

TEST(Validation, HugeDeclaredSizesAreErrorsNotAllocations) {
  using namespace std::string_literals;
  ExpectError("\xdd\xff\xff\xff\xff"s, ErrorKind::kTooLarge, "decode limit");  // array32 of 2^32-1
  ExpectError("\xdf\xff\xff\xff\xff"s, ErrorKind::kTooLarge, "decode limit");  // map32
  // Strings, bin and ext are copied only once their bytes are there: a huge declared length
  // is simply truncated input.
  ExpectError("\xdb\xff\xff\xff\xff"s, ErrorKind::kBadRequest, "truncated");  // str32
  ExpectError("\xc6\xff\xff\xff\xff"s, ErrorKind::kBadRequest, "truncated");  // bin32
  ExpectError("\xc9\xff\xff\xff\xff\x01"s, ErrorKind::kBadRequest, "truncated");  // ext32
  // Over a limit with the bytes present.
  ExpectError("\xc4\x20"s + std::string(32, 'b'), ErrorKind::kTooLarge, "decode limit",
              DecodeLimits{.max_bin = 16});
  // fixext16: 16 data bytes plus the type byte, over the 16-byte ext limit.
  ExpectError("\xd8\x01"s + std::string(16, 'e'), ErrorKind::kTooLarge, "decode limit");
  // Within the limits but missing bytes: truncated, still no allocation failure.
  ExpectError("\xdd\x00\x01\x00\x00"s, ErrorKind::kBadRequest, "truncated");
  // A string just over the str limit inside a valid envelope.
  Envelope e{kProtocolVersion, 1, Disconnect{std::string((64u << 10) + 1, 'x')}};
  ExpectError(Encode(e), ErrorKind::kTooLarge, "decode limit");
}

TEST(Validation, DeepNestingIsRefused) {
  Raw nested = Raw(RawArray{});
  for (int i = 0; i < 100; ++i) nested = Raw(RawArray{nested});
  Raw m = SampleOf<StatusRequest>();
  m.At("b.ignored") = nested;  // even inside an unknown key
  ExpectError(ToFrame(m), ErrorKind::kTooLarge, "decode limit");

  // Raw bytes: 100 000 x fixarray(1) and no end — no stack exhaustion, no crash.
  ExpectError(std::string(100000, '\x91'), ErrorKind::kTooLarge, "decode limit");
}

TEST(Validation, EveryTruncationOfEveryMessageIsRefused) {
  for (const Envelope& e : testing::AllSamples()) {
    const std::string frame = Encode(e);
    for (std::size_t n = 0; n < frame.size(); ++n) {
      DecodeResult r = DecodeNoThrow(std::string_view(frame).substr(0, n));
      ASSERT_FALSE(r.ok()) << TypeName(e.body) << " cut to " << n << " bytes decoded";
      EXPECT_EQ(r.error().kind, ErrorKind::kBadRequest) << r.error().message;
    }
  }
}

TEST(Validation, GarbageBytesNeverThrow) {
  std::mt19937 rng(20261125);  // fixed seed: reproducible
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> length(0, 300);
  int decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string frame(static_cast<std::size_t>(length(rng)), '\0');
    for (char& c : frame) c = static_cast<char>(byte(rng));
    if (DecodeNoThrow(frame).ok()) ++decoded;
  }
  EXPECT_EQ(decoded, 0) << "random bytes are not a valid envelope";

  // Bit flips of valid frames: mostly still msgpack, exercising the field checks.
  for (const Envelope& e : testing::AllSamples()) {
    const std::string frame = Encode(e);
    for (std::size_t i = 0; i < frame.size(); ++i) {
      std::string flipped = frame;
      flipped[i] = static_cast<char>(flipped[i] ^ (1 << (i % 8)));
      DecodeResult r = DecodeNoThrow(flipped);
      if (!r.ok()) continue;
      // Whatever decodes is a valid message: it survives its own round trip unchanged.
      DecodeResult again = DecodeNoThrow(Encode(r.value()));
      ASSERT_TRUE(again.ok()) << again.error().message;
      EXPECT_TRUE(again.value() == r.value());
    }
  }
}

}  // namespace
}  // namespace despool::msg
