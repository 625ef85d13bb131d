// The msgpack codec. One table per struct (`Fields`) lists its wire keys and validation rules;
// three small visitors walk those tables: Counter (map sizes), Writer (encode) and Reader
// (decode + validate). Adding a field to a message means adding one line to its table.
#include "despool/messages/codec.h"

#include <msgpack.hpp>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "despool/common/names.h"

namespace despool::msg {
namespace {

// ---------------------------------------------------------------------------------------------
// Field rules

using TextCheck = Status (*)(std::string_view);
using NumberCheck = Status (*)(std::uint64_t);

// How a field is validated on decode. Encoding ignores rules.
struct Rule {
  bool required = false;         // the key must be present (and not nil)
  TextCheck text = nullptr;      // strings and each element of string lists
  bool allow_empty = false;      // skip `text` for an empty string
  NumberCheck number = nullptr;  // unsigned integers
  std::size_t max_items = 0;     // lists: 0 = only the unpack limit applies
};

constexpr Rule kRequired{.required = true};
constexpr Rule kPackage{.text = ValidatePackageId};
constexpr Rule kPackageOrAll{.text = ValidatePackageId, .allow_empty = true};
constexpr Rule kDp{.text = ValidateDpName};
constexpr Rule kRequiredDp{.required = true, .text = ValidateDpName};
constexpr Rule kRequiredJobId{.required = true, .text = ValidateJobId};
constexpr Rule kJobId{.text = ValidateJobId};
constexpr Rule kRelPaths{.text = ValidateRelativePath};
constexpr Rule kRequiredRelPath{.required = true, .text = ValidateRelativePath};
constexpr Rule kSourceOrNone{.text = ValidateSourcePath, .allow_empty = true};
constexpr Rule kRequiredVersion{.required = true, .number = ValidateVersion};
constexpr Rule kVersion{.number = ValidateVersion};
constexpr Rule kWorkerName{.text = ValidateWorkerName};
constexpr Rule kRequiredWorkerName{.required = true, .text = ValidateWorkerName};

inline constexpr std::size_t kMaxInstructions = 10000;
inline constexpr std::size_t kMaxDpsPerInstruction = 1000;

// `S` is T or const T, so one table serves both encoding and decoding.
template <typename S, typename T>
concept Is = std::same_as<std::remove_const_t<S>, T>;

// ---------------------------------------------------------------------------------------------
// Field tables: v(key, field, rule) per field, key = the C++ field name.

template <typename V, Is<RetryPolicy> S> void Fields(V& v, S& x) {
  v("retry_base_ms", x.retry_base_ms);
  v("retry_max_ms", x.retry_max_ms);
  v("max_attempts", x.max_attempts);
  v("on_exhausted", x.on_exhausted);
}
template <typename V, Is<Instruction> S> void Fields(V& v, S& x) {
  v("kind", x.kind);
  v("package", x.package, kPackageOrAll);
  v("version", x.version, kRequiredVersion);
  v("source", x.source, kSourceOrNone);
  v("dps", x.dps, {.text = ValidateDpName, .max_items = kMaxDpsPerInstruction});
  v("dp_groups", x.dp_groups, {.text = ValidateDpGroupName, .max_items = kMaxDpsPerInstruction});
  v("policy", x.policy);
  v("repair", x.repair);
  v("checksum", x.checksum);
}
template <typename V, Is<Holder> S> void Fields(V& v, S& x) {
  v("pid", x.pid, kRequired);
  v("command", x.command);
  v("path", x.path, kRequiredRelPath);
}
template <typename V, Is<VerifyReport> S> void Fields(V& v, S& x) {
  v("missing", x.missing, kRelPaths);
  v("extra", x.extra, kRelPaths);
  v("changed", x.changed, kRelPaths);
}
template <typename V, Is<ApplyStats> S> void Fields(V& v, S& x) {
  v("files_total", x.files_total);
  v("files_copied", x.files_copied);
  v("files_linked", x.files_linked);
  v("files_removed", x.files_removed);
  v("bytes_copied", x.bytes_copied);
  v("bytes_linked", x.bytes_linked);
  v("duration_ms", x.duration_ms);
  v("reused_staging", x.reused_staging);
}
template <typename V, Is<JobInfo> S> void Fields(V& v, S& x) {
  v("id", x.id, kRequiredJobId);
  v("kind", x.kind);
  v("package", x.package, kPackageOrAll);
  v("version", x.version, kVersion);
  v("dp", x.dp, kRequiredDp);
  v("source", x.source, kSourceOrNone);
  v("state", x.state, kRequired);
  v("attempts", x.attempts);
  v("max_attempts", x.max_attempts);
  v("next_attempt_at_ms", x.next_attempt_at_ms);
  v("last_error", x.last_error);
  v("in_use", x.in_use, kRelPaths);
  v("holders", x.holders);
  v("worker", x.worker, kWorkerName);
  v("created_at_ms", x.created_at_ms);
  v("updated_at_ms", x.updated_at_ms);
  v("report", x.report);
  v("stats", x.stats);
}
template <typename V, Is<WorkerInfo> S> void Fields(V& v, S& x) {
  v("name", x.name, kRequiredWorkerName);
  v("dps", x.dps, kDp);
  v("capacity", x.capacity);
  v("running", x.running);
  v("connected_at_ms", x.connected_at_ms);
  v("last_heartbeat_ms", x.last_heartbeat_ms);
  v("draining", x.draining);
}
template <typename V, Is<DpStats> S> void Fields(V& v, S& x) {
  v("dp", x.dp, kRequiredDp);
  v("online", x.online);
  v("queued", x.queued);
  v("running", x.running);
  v("deferred", x.deferred);
}
template <typename V, Is<StateCount> S> void Fields(V& v, S& x) {
  v("state", x.state, kRequired);
  v("count", x.count);
}
template <typename V, Is<Progress> S> void Fields(V& v, S& x) {
  v("files_done", x.files_done);
  v("files_total", x.files_total);
  v("bytes_done", x.bytes_done);
  v("bytes_total", x.bytes_total);
}
template <typename V, Is<WorkerMetrics> S> void Fields(V& v, S& x) {
  v("refreshes", x.refreshes);
  v("refresh_ms_total", x.refresh_ms_total);
  v("bytes_copied", x.bytes_copied);
  v("bytes_linked", x.bytes_linked);
  v("inuse_checks", x.inuse_checks);
  v("inuse_check_us_total", x.inuse_check_us_total);
}
template <typename V, Is<JobRef> S> void Fields(V& v, S& x) {
  v("id", x.id, kRequiredJobId);
  v("dp", x.dp, kRequiredDp);
}

// Frontend requests
template <typename V, Is<SubmitRequest> S> void Fields(V& v, S& x) {
  v("instructions", x.instructions, {.required = true, .max_items = kMaxInstructions});
}
template <typename V, Is<StatusRequest> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kJobId);
  v("package", x.package, kPackage);
  v("dp", x.dp, kDp);
  v("state", x.state);
  v("limit", x.limit);
}
template <typename V, Is<WorkersRequest> S> void Fields(V&, S&) {}
template <typename V, Is<DeadRequest> S> void Fields(V& v, S& x) { v("limit", x.limit); }
template <typename V, Is<RetryRequest> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
}
template <typename V, Is<CancelRequest> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
}
template <typename V, Is<StatsRequest> S> void Fields(V&, S&) {}
template <typename V, Is<VerifyRequest> S> void Fields(V& v, S& x) {
  v("dp", x.dp, kRequiredDp);
  v("package", x.package, kPackage);
  v("repair", x.repair);
}
template <typename V, Is<EventsSinceRequest> S> void Fields(V& v, S& x) {
  v("since", x.since);
  v("dp", x.dp, kDp);
  v("package", x.package, kPackage);
  v("limit", x.limit);
}

// Frontend replies
template <typename V, Is<SubmitReply> S> void Fields(V& v, S& x) { v("jobs", x.jobs, kRequired); }
template <typename V, Is<JobsReply> S> void Fields(V& v, S& x) { v("jobs", x.jobs, kRequired); }
template <typename V, Is<WorkersReply> S> void Fields(V& v, S& x) {
  v("workers", x.workers, kRequired);
}
template <typename V, Is<StatsReply> S> void Fields(V& v, S& x) {
  v("jobs_by_state", x.jobs_by_state);
  v("dps", x.dps);
  v("workers", x.workers);
  v("queue_depth", x.queue_depth);
  v("oldest_queued_at_ms", x.oldest_queued_at_ms);
  v("retry_backlog", x.retry_backlog);
  v("last_event_seq", x.last_event_seq);
}
template <typename V, Is<Event> S> void Fields(V& v, S& x) {
  v("kind", x.kind, kRequired);
  v("seq", x.seq);
  v("at_ms", x.at_ms);
  v("job", x.job, kRequired);
  v("progress", x.progress);
}
template <typename V, Is<EventsReply> S> void Fields(V& v, S& x) {
  v("events", x.events, kRequired);
  v("oldest_seq", x.oldest_seq);
  v("last_seq", x.last_seq);
}
template <typename V, Is<ErrorReply> S> void Fields(V& v, S& x) {
  v("kind", x.kind, kRequired);
  v("message", x.message, kRequired);
}

// Backend
template <typename V, Is<Register> S> void Fields(V& v, S& x) {
  v("name", x.name, kRequiredWorkerName);
  v("dps", x.dps, {.required = true, .text = ValidateDpName, .max_items = kMaxDpsPerInstruction});
  v("capacity", x.capacity);
}
template <typename V, Is<RegisterAck> S> void Fields(V& v, S& x) {
  v("heartbeat_interval_ms", x.heartbeat_interval_ms);
}
template <typename V, Is<Heartbeat> S> void Fields(V& v, S& x) {
  v("running", x.running);
  v("metrics", x.metrics);
  v("draining", x.draining);
}
template <typename V, Is<Dispatch> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
  v("kind", x.kind);
  v("dp", x.dp, kRequiredDp);
  v("package", x.package, kPackageOrAll);
  v("version", x.version, kVersion);
  v("source", x.source, kSourceOrNone);
  v("force", x.force);
  v("repair", x.repair);
  v("checksum", x.checksum);
}
template <typename V, Is<CancelJob> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
}
template <typename V, Is<ProgressReport> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
  v("progress", x.progress, kRequired);
}
template <typename V, Is<JobResult> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
  v("outcome", x.outcome, kRequired);
  v("stats", x.stats);
  v("in_use", x.in_use, kRelPaths);
  v("holders", x.holders);
  v("suggested_delay_ms", x.suggested_delay_ms);
  v("error", x.error);
  v("report", x.report);
  v("installed_version", x.installed_version, kVersion);
}
template <typename V, Is<ResultAck> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
}
template <typename V, Is<ReleaseHint> S> void Fields(V& v, S& x) {
  v("job_id", x.job_id, kRequiredJobId);
  v("attempt", x.attempt, kRequired);
}
template <typename V, Is<Disconnect> S> void Fields(V& v, S& x) { v("reason", x.reason); }

// The envelope, decoded in two steps: the request id alone (so errors can echo it), then the
// rest. Encode writes the envelope directly.
struct EnvelopeId {
  std::uint64_t id = 0;
};
struct EnvelopeHead {
  std::uint64_t v = 0;
  std::string t;
  const msgpack::object* b = nullptr;
};
template <typename V, Is<EnvelopeId> S> void Fields(V& v, S& x) { v("id", x.id); }
template <typename V, Is<EnvelopeHead> S> void Fields(V& v, S& x) {
  v("v", x.v, kRequired);
  v("t", x.t, kRequired);
  v("b", x.b);
}

// ---------------------------------------------------------------------------------------------
// Rules that span fields, applied after a struct decoded.

// A failed cross-field rule: the field it blames and why.
struct FieldError {
  std::string field;
  std::string message;
};
using CrossResult = std::optional<FieldError>;

template <typename T>
CrossResult CrossCheck(const T&) { return std::nullopt; }

// A refresh names one package, version and source; a verify may leave package and source empty.
CrossResult CheckJobTarget(JobKind kind, const std::string& package, const std::string& source) {
  if (kind == JobKind::kRefresh && package.empty()) {
    return FieldError{"package", "required for refresh"};
  }
  if (kind == JobKind::kRefresh && source.empty()) return FieldError{"source", "required for refresh"};
  return std::nullopt;
}

CrossResult CrossCheck(const Instruction& x) {
  if (auto error = CheckJobTarget(x.kind, x.package, x.source)) return error;
  if (x.dps.empty() && x.dp_groups.empty()) {
    return FieldError{"dps", "at least one DP or DP group needed"};
  }
  if (x.dps.size() + x.dp_groups.size() > kMaxDpsPerInstruction) {
    return FieldError{"dps", "more than " + std::to_string(kMaxDpsPerInstruction) +
                                 " DPs and DP groups in one instruction"};
  }
  return std::nullopt;
}
CrossResult CrossCheck(const RetryPolicy& x) {
  if (x.retry_base_ms && x.retry_max_ms && *x.retry_base_ms > 0 && *x.retry_max_ms > 0 &&
      *x.retry_base_ms > *x.retry_max_ms) {
    return FieldError{"retry_base_ms", "above retry_max_ms"};
  }
  return std::nullopt;
}
CrossResult CrossCheck(const SubmitRequest& x) {
  if (x.instructions.empty()) return FieldError{"instructions", "at least one instruction needed"};
  return std::nullopt;
}
CrossResult CrossCheck(const JobInfo& x) { return CheckJobTarget(x.kind, x.package, x.source); }
CrossResult CrossCheck(const Dispatch& x) { return CheckJobTarget(x.kind, x.package, x.source); }

// ---------------------------------------------------------------------------------------------
// Wire names of the body types (PROTOCOL.md's message table).

template <typename T> constexpr const char* kWireName = nullptr;
template <> constexpr const char* kWireName<SubmitRequest> = "submit";
template <> constexpr const char* kWireName<StatusRequest> = "status";
template <> constexpr const char* kWireName<WorkersRequest> = "workers";
template <> constexpr const char* kWireName<DeadRequest> = "dead";
template <> constexpr const char* kWireName<RetryRequest> = "retry";
template <> constexpr const char* kWireName<CancelRequest> = "cancel";
template <> constexpr const char* kWireName<StatsRequest> = "stats";
template <> constexpr const char* kWireName<VerifyRequest> = "verify";
template <> constexpr const char* kWireName<EventsSinceRequest> = "events-since";
template <> constexpr const char* kWireName<SubmitReply> = "submit-reply";
template <> constexpr const char* kWireName<JobsReply> = "jobs-reply";
template <> constexpr const char* kWireName<WorkersReply> = "workers-reply";
template <> constexpr const char* kWireName<StatsReply> = "stats-reply";
template <> constexpr const char* kWireName<EventsReply> = "events-reply";
template <> constexpr const char* kWireName<ErrorReply> = "error";
template <> constexpr const char* kWireName<Register> = "register";
template <> constexpr const char* kWireName<RegisterAck> = "register-ack";
template <> constexpr const char* kWireName<Heartbeat> = "heartbeat";
template <> constexpr const char* kWireName<Dispatch> = "dispatch";
template <> constexpr const char* kWireName<CancelJob> = "cancel-job";
template <> constexpr const char* kWireName<ProgressReport> = "progress";
template <> constexpr const char* kWireName<JobResult> = "result";
template <> constexpr const char* kWireName<ResultAck> = "result-ack";
template <> constexpr const char* kWireName<ReleaseHint> = "release-hint";
template <> constexpr const char* kWireName<Disconnect> = "disconnect";
template <> constexpr const char* kWireName<Event> = "event";

template <std::size_t... I>
constexpr bool WireNamesUnique(std::index_sequence<I...>) {
  std::array<std::string_view, sizeof...(I)> names{
      (kWireName<std::variant_alternative_t<I, Body>> ? kWireName<std::variant_alternative_t<I, Body>>
                                                      : "")...};
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) return false;
    for (std::size_t j = i + 1; j < names.size(); ++j) {
      if (names[i] == names[j]) return false;
    }
  }
  return true;
}
static_assert(WireNamesUnique(std::make_index_sequence<std::variant_size_v<Body>>()),
              "every Body alternative needs a unique kWireName");

// Replaces `body` with the alternative named `name`; false when no alternative has that name.
template <std::size_t... I>
bool EmplaceByName(std::string_view name, Body& body, std::index_sequence<I...>) {
  return ((name == kWireName<std::variant_alternative_t<I, Body>>
               ? (body.template emplace<I>(), true)
               : false) ||
          ...);
}

// ---------------------------------------------------------------------------------------------
// Type traits for the visitors

template <typename T> struct IsOptionalT : std::false_type {};
template <typename T> struct IsOptionalT<std::optional<T>> : std::true_type {};
template <typename T> struct IsVectorT : std::false_type {};
template <typename T> struct IsVectorT<std::vector<T>> : std::true_type {};
template <typename T> concept Optional = IsOptionalT<T>::value;
template <typename T> concept Vector = IsVectorT<T>::value;

bool ParseWire(std::string_view s, JobKind* out) { return ParseJobKind(s, out); }
bool ParseWire(std::string_view s, JobState* out) { return ParseJobState(s, out); }
bool ParseWire(std::string_view s, OnExhausted* out) { return ParseOnExhausted(s, out); }
bool ParseWire(std::string_view s, EventKind* out) { return ParseEventKind(s, out); }
bool ParseWire(std::string_view s, ErrorKind* out) { return ParseErrorKind(s, out); }
bool ParseWire(std::string_view s, Outcome* out) { return ParseOutcome(s, out); }

// ---------------------------------------------------------------------------------------------
// Encoding

// Packs straight into the std::string Encode returns: msgpack::sbuffer would malloc 8 KiB for
// every message and then be copied out (both showed in the broker's profile).
// The packer writes one token at a time (a header byte, a key, a value): write() is a memcpy
// into room made in steps, not an out-of-line std::string::append per token; Finish() trims.
class StringSink {
 public:
  explicit StringSink(std::string& out) : out_(out) { out_.resize(512); }
  void write(const char* data, std::size_t size) {
    if (size_ + size > out_.size()) out_.resize(std::max(out_.size() * 2, size_ + size));
    std::memcpy(out_.data() + size_, data, size);
    size_ += size;
  }
  void Finish() { out_.resize(size_); }

 private:
  std::string& out_;
  std::size_t size_ = 0;
};

using Packer = msgpack::packer<StringSink>;

// Counts the keys a struct will write (empty optionals are omitted).
struct Counter {
  std::uint32_t keys = 0;
  template <typename T>
  void operator()(const char*, const T& field, const Rule& = {}) {
    if constexpr (Optional<T>) {
      keys += field.has_value() ? 1 : 0;
    } else {
      ++keys;
    }
  }
};

class Writer {
 public:
  Writer(Packer& packer, StringSink& sink) : pk_(packer), sink_(sink) {}

  // Keys are the tables' string literals: header and text go out in one write, with the length
  // known at compile time (no strlen, no packer call per key).
  template <typename T, std::size_t N>
  void operator()(const char (&key)[N], const T& field, const Rule& = {}) {
    if constexpr (Optional<T>) {
      if (!field) return;
      PutKey(key);
      Put(*field);
    } else {
      PutKey(key);
      Put(field);
    }
  }

  template <std::size_t N>
  void PutKey(const char (&key)[N]) {
    static_assert(N >= 1 && N - 1 < 32, "keys are msgpack fixstr (under 32 bytes)");
    std::array<char, N> packed{};  // fixstr header byte, then the text without its NUL
    packed[0] = static_cast<char>(0xa0 | (N - 1));
    std::memcpy(packed.data() + 1, key, N - 1);
    sink_.write(packed.data(), N);
  }

  template <typename S>
  void PutStruct(const S& s) {
    Counter counter;
    Fields(counter, s);
    pk_.pack_map(counter.keys);
    Fields(*this, s);
  }

  void PutString(std::string_view s) {
    pk_.pack_str(static_cast<std::uint32_t>(s.size()));
    pk_.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
  }

  template <typename T>
  void Put(const T& value) {
    if constexpr (std::is_same_v<T, std::string>) {
      PutString(value);
    } else if constexpr (std::is_same_v<T, bool>) {
      if (value) {
        pk_.pack_true();
      } else {
        pk_.pack_false();
      }
    } else if constexpr (std::is_enum_v<T>) {
      PutString(ToString(value));
    } else if constexpr (std::is_integral_v<T>) {
      pk_.pack(value);
    } else if constexpr (Vector<T>) {
      pk_.pack_array(static_cast<std::uint32_t>(value.size()));
      for (const auto& element : value) Put(element);
    } else {
      PutStruct(value);
    }
  }

 private:
  Packer& pk_;
  StringSink& sink_;
};

// ---------------------------------------------------------------------------------------------
// Decoding

// Reads a struct from a msgpack map, type-checking and validating every field. The first
// failure stops it; error() then names the field path ("instructions[2].package: ...").
class Reader {
 public:
  bool failed() const { return failed_; }
  const std::string& error() const { return error_; }

  template <typename S>
  void ReadStruct(const msgpack::object& o, S& s) {
    if (o.type != msgpack::type::MAP) return Fail("must be a map");
    const msgpack::object_map* outer = map_;
    map_ = &o.via.map;
    Fields(*this, s);
    map_ = outer;
    if (failed_) return;
    if (CrossResult error = CrossCheck(s)) {
      path_ += path_.empty() ? "" : ".";
      path_ += error->field;
      Fail(error->message);
    }
  }

  template <typename T>
  void operator()(const char* key, T& field, const Rule& rule = {}) {
    if (failed_) return;
    const std::size_t path_length = path_.size();
    if (!path_.empty()) path_ += '.';
    path_ += key;
    const msgpack::object* value = Find(key);
    if (value == nullptr || value->type == msgpack::type::NIL) {
      if (rule.required && !failed_) Fail("required");
    } else {
      Get(*value, field, rule);
    }
    if (!failed_) path_.resize(path_length);
  }

 private:
  // The value for `key`, or nullptr. A key present twice is an error (which value would win
  // differs between msgpack implementations).
  const msgpack::object* Find(std::string_view key) {
    const msgpack::object* found = nullptr;
    for (std::uint32_t i = 0; i < map_->size; ++i) {
      const msgpack::object& k = map_->ptr[i].key;
      if (k.type != msgpack::type::STR || std::string_view(k.via.str.ptr, k.via.str.size) != key) {
        continue;
      }
      if (found != nullptr) {
        Fail("key appears more than once");
        return nullptr;
      }
      found = &map_->ptr[i].val;
    }
    return found;
  }

  template <typename T>
  void Get(const msgpack::object& o, T& out, const Rule& rule) {
    using msgpack::type::object_type;
    if constexpr (std::is_same_v<T, const msgpack::object*>) {
      out = &o;  // read later, by the caller
    } else if constexpr (Optional<T>) {
      out.emplace();
      Get(o, *out, rule);
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (o.type != object_type::STR) return Fail("must be a string");
      out.assign(o.via.str.ptr, o.via.str.size);
      if (rule.text != nullptr && !(rule.allow_empty && out.empty())) Check(rule.text(out));
    } else if constexpr (std::is_same_v<T, bool>) {
      if (o.type != object_type::BOOLEAN) return Fail("must be a boolean");
      out = o.via.boolean;
    } else if constexpr (std::is_enum_v<T>) {
      if (o.type != object_type::STR) return Fail("must be a string");
      std::string_view name(o.via.str.ptr, o.via.str.size);
      if (!ParseWire(name, &out)) Fail("unknown value '" + Shown(name) + "'");
    } else if constexpr (std::is_unsigned_v<T>) {
      if (o.type != object_type::POSITIVE_INTEGER || o.via.u64 > std::numeric_limits<T>::max()) {
        return Fail("must be an unsigned integer up to " +
                    std::to_string(std::numeric_limits<T>::max()));
      }
      out = static_cast<T>(o.via.u64);
      if (rule.number != nullptr) Check(rule.number(out));
    } else if constexpr (std::is_same_v<T, std::int64_t>) {
      if (o.type == object_type::NEGATIVE_INTEGER) {
        out = o.via.i64;
      } else if (o.type == object_type::POSITIVE_INTEGER &&
                 o.via.u64 <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())) {
        out = static_cast<T>(o.via.u64);
      } else {
        Fail("must be a 64-bit signed integer");
      }
    } else if constexpr (Vector<T>) {
      if (o.type != object_type::ARRAY) return Fail("must be an array");
      if (rule.max_items != 0 && o.via.array.size > rule.max_items) {
        return Fail("more than " + std::to_string(rule.max_items) + " items");
      }
      out.clear();  // no reserve(): a hostile count of tiny elements must not size the vector
      const std::size_t path_length = path_.size();
      for (std::uint32_t i = 0; i < o.via.array.size && !failed_; ++i) {
        path_ += '[' + std::to_string(i) + ']';
        Get(o.via.array.ptr[i], out.emplace_back(), rule);
        if (!failed_) path_.resize(path_length);
      }
    } else {
      ReadStruct(o, out);
    }
  }

  void Check(const Status& status) {
    if (!status.ok()) Fail(status.error().message);
  }

  void Fail(const std::string& message) {
    if (failed_) return;
    failed_ = true;
    error_ = path_.empty() ? message : path_ + ": " + message;
  }

  static std::string Shown(std::string_view v) {
    std::string s(v.substr(0, 40));
    for (char& c : s) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return v.size() > 40 ? s + "..." : s;
  }

  const msgpack::object_map* map_ = nullptr;
  std::string path_;
  bool failed_ = false;
  std::string error_;
};

DecodeError Bad(ErrorKind kind, std::string message, std::uint64_t request_id = 0) {
  return DecodeError{kind, std::move(message), request_id};
}

DecodeResult DecodeEnvelope(const msgpack::object& root) {
  if (root.type != msgpack::type::MAP) {
    return Bad(ErrorKind::kBadRequest, "envelope: must be a msgpack map");
  }
  // "id" first and on its own, so that every later error can carry it.
  EnvelopeId id;
  Reader id_reader;
  id_reader.ReadStruct(root, id);
  if (id_reader.failed()) return Bad(ErrorKind::kBadRequest, "envelope: " + id_reader.error());

  EnvelopeHead head;
  Reader head_reader;
  head_reader.ReadStruct(root, head);
  if (head_reader.failed()) {
    return Bad(ErrorKind::kBadRequest, "envelope: " + head_reader.error(), id.id);
  }
  if (head.v != kProtocolVersion) {
    return Bad(ErrorKind::kUnsupportedVersion,
               "protocol version " + std::to_string(head.v) + " is not supported (this side speaks " +
                   std::to_string(kProtocolVersion) + ")",
               id.id);
  }
  Envelope envelope;
  envelope.version = kProtocolVersion;
  envelope.request_id = id.id;
  if (!EmplaceByName(head.t, envelope.body, std::make_index_sequence<std::variant_size_v<Body>>())) {
    std::string shown = head.t.substr(0, 40);
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return Bad(ErrorKind::kUnknownType, "unknown message type '" + shown + "'", id.id);
  }
  // A body without fields ("workers", "stats") may omit "b".
  msgpack::object empty_map;
  empty_map.type = msgpack::type::MAP;
  empty_map.via.map = msgpack::object_map{0, nullptr};
  const msgpack::object& body = head.b != nullptr ? *head.b : empty_map;

  Reader body_reader;
  std::visit([&](auto& b) { body_reader.ReadStruct(body, b); }, envelope.body);
  if (body_reader.failed()) {
    return Bad(ErrorKind::kBadRequest, head.t + ": " + body_reader.error(), id.id);
  }
  return envelope;
}

std::string_view AsText(std::span<const std::byte> frame) {
  return {reinterpret_cast<const char*>(frame.data()), frame.size()};
}

}  // namespace

const char* TypeName(const Body& body) {
  return std::visit([](const auto& b) { return kWireName<std::decay_t<decltype(b)>>; }, body);
}

std::string Encode(const Envelope& envelope) {
  std::string out;
  StringSink sink(out);  // most messages fit its first 512 bytes: one allocation
  Packer packer(sink);
  Writer writer(packer, sink);
  packer.pack_map(4);
  writer.PutString("v");
  packer.pack(envelope.version);
  writer.PutString("t");
  writer.PutString(TypeName(envelope.body));
  writer.PutString("id");
  packer.pack(envelope.request_id);
  writer.PutString("b");
  std::visit([&](const auto& b) { writer.PutStruct(b); }, envelope.body);
  sink.Finish();
  return out;
}

namespace {

// Under glibc's tcache limit (1032 bytes with the zone's chunk header), so a decode reuses a
// cached block; larger messages simply get more chunks.
constexpr std::size_t kDecodeZoneChunk = 960;

bool ReferenceFrame(msgpack::type::object_type, std::size_t, void*) { return true; }

}  // namespace

DecodeResult Decode(std::span<const std::byte> frame, const DecodeLimits& limits) {
  return Decode(AsText(frame), limits);
}

DecodeResult Decode(std::string_view frame, const DecodeLimits& limits) {
  if (frame.size() > limits.max_frame_bytes) {
    return Bad(ErrorKind::kTooLarge, "frame of " + std::to_string(frame.size()) +
                                         " bytes is over the limit of " +
                                         std::to_string(limits.max_frame_bytes) + " bytes");
  }
  try {
    // Without these limits a 5-byte frame declaring 2^32 array elements makes msgpack
    // allocate before it notices the bytes are missing. Extensions are not used: tiny limit.
    const msgpack::unpack_limit unpack_limits(limits.max_array, limits.max_map, limits.max_str,
                                              limits.max_bin, /*ext=*/16, limits.max_depth);
    std::size_t offset = 0;
    // Strings and bins refer into `frame` (it outlives the decode, and DecodeEnvelope copies
    // what it keeps) instead of being copied into the zone; the zone's first chunk is sized
    // for an ordinary message rather than msgpack's 8 KiB default (one malloc per decode).
    msgpack::zone zone(kDecodeZoneChunk);
    const msgpack::object root =
        msgpack::unpack(zone, frame.data(), frame.size(), offset, ReferenceFrame, nullptr, unpack_limits);
    if (offset != frame.size()) {
      return Bad(ErrorKind::kBadRequest, "envelope: " + std::to_string(frame.size() - offset) +
                                             " trailing bytes after the msgpack map");
    }
    return DecodeEnvelope(root);
  } catch (const msgpack::size_overflow& e) {
    return Bad(ErrorKind::kTooLarge, std::string("over a decode limit: ") + e.what());
  } catch (const msgpack::insufficient_bytes&) {
    return Bad(ErrorKind::kBadRequest, "malformed msgpack: truncated");
  } catch (const msgpack::unpack_error& e) {
    return Bad(ErrorKind::kBadRequest, std::string("malformed msgpack: ") + e.what());
  } catch (const msgpack::type_error&) {
    return Bad(ErrorKind::kBadRequest, "malformed msgpack: unexpected type");
  } catch (const std::bad_alloc&) {
    return Bad(ErrorKind::kTooLarge, "message too large to decode");
  } catch (const std::exception& e) {
    return Bad(ErrorKind::kBadRequest, std::string("undecodable message: ") + e.what());
  } catch (...) {
    return Bad(ErrorKind::kInternal, "undecodable message");
  }
}

Envelope ErrorEnvelope(std::uint64_t request_id, ErrorKind kind, std::string message) {
  Envelope envelope;
  envelope.request_id = request_id;
  envelope.body = ErrorReply{kind, std::move(message)};
  return envelope;
}

Envelope ErrorEnvelope(const DecodeError& error) {
  return ErrorEnvelope(error.request_id, error.kind, error.message);
}

std::string EncodeError(const DecodeError& error) { return Encode(ErrorEnvelope(error)); }

}  // namespace despool::msg
