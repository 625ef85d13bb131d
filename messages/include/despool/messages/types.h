// Every message despool exchanges, as plain C++ types. The wire format (msgpack maps inside
// one envelope frame) and the rules are written down in messages/PROTOCOL.md; codec.h turns
// these types into bytes and back, validating everything it decodes.
//
// Conventions:
//  - times are milliseconds since the Unix epoch (UTC), durations are milliseconds;
//  - optional fields use std::optional and are omitted from the wire when empty;
//  - new fields may be added to a message without a protocol version bump (decoders ignore
//    unknown keys); removing or retyping a field bumps kProtocolVersion.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace despool::msg {

inline constexpr std::uint32_t kProtocolVersion = 1;

// ---------------------------------------------------------------------------------------------
// Shared value types

enum class JobKind { kRefresh, kVerify };
enum class JobState { kQueued, kRunning, kDeferred, kApplied, kUpToDate, kSuperseded, kCancelled, kDead };
enum class OnExhausted { kDead, kForce };

const char* ToString(JobKind k);
const char* ToString(JobState s);
const char* ToString(OnExhausted p);
bool ParseJobKind(std::string_view s, JobKind* out);
bool ParseJobState(std::string_view s, JobState* out);
bool ParseOnExhausted(std::string_view s, OnExhausted* out);
bool IsTerminal(JobState s);

// Retry policy of an instruction (CONTRACT.md "Behaviour promised"). Zero/empty = broker default.
struct RetryPolicy {
  std::optional<std::uint64_t> retry_base_ms;   // default 30 000
  std::optional<std::uint64_t> retry_max_ms;    // default 3 600 000
  std::optional<std::uint32_t> max_attempts;    // default 10
  std::optional<OnExhausted> on_exhausted;      // default dead
  bool operator==(const RetryPolicy&) const = default;
};

// "Bring package P to version V from source S on these DPs."
struct Instruction {
  JobKind kind = JobKind::kRefresh;
  std::string package;                // verify: empty means every package on the DP
  std::uint64_t version = 0;          // verify: ignored
  std::string source;                 // absolute path on the worker hosts; verify: empty
  std::vector<std::string> dps;
  std::vector<std::string> dp_groups;
  RetryPolicy policy;
  bool repair = false;                // verify only
  bool checksum = false;              // refresh: compare content of every file, not size+mtime
  bool operator==(const Instruction&) const = default;
};

// A process holding a file open, as far as the worker could see.
struct Holder {
  std::int64_t pid = 0;
  std::string command;                // comm / cmdline[0], may be empty
  std::string path;                   // relative to the package directory
  bool operator==(const Holder&) const = default;
};

struct VerifyReport {
  std::vector<std::string> missing;
  std::vector<std::string> extra;
  std::vector<std::string> changed;
  bool operator==(const VerifyReport&) const = default;
};

// What a worker reports about a refresh that changed the DP.
struct ApplyStats {
  std::uint64_t files_total = 0;
  std::uint64_t files_copied = 0;
  std::uint64_t files_linked = 0;
  std::uint64_t files_removed = 0;
  std::uint64_t bytes_copied = 0;
  std::uint64_t bytes_linked = 0;
  std::uint64_t duration_ms = 0;
  // The new tree was staged by an earlier attempt (kept across a deferral): this attempt
  // copied nothing; the files were copied when it was staged.
  bool reused_staging = false;
  bool operator==(const ApplyStats&) const = default;
};

// A job as reported to clients (status, events, submit --wait). Shaped like `status --json`.
struct JobInfo {
  std::string id;
  JobKind kind = JobKind::kRefresh;
  std::string package;
  std::uint64_t version = 0;
  std::string dp;
  std::string source;
  JobState state = JobState::kQueued;
  std::uint32_t attempts = 0;
  std::uint32_t max_attempts = 0;
  std::optional<std::int64_t> next_attempt_at_ms;
  std::optional<std::string> last_error;
  std::vector<std::string> in_use;
  std::vector<Holder> holders;
  std::optional<std::string> worker;
  std::int64_t created_at_ms = 0;
  std::int64_t updated_at_ms = 0;
  std::optional<VerifyReport> report;  // verify jobs, once they ran
  std::optional<ApplyStats> stats;     // applied refreshes
  bool operator==(const JobInfo&) const = default;
};

struct WorkerInfo {
  std::string name;
  std::vector<std::string> dps;
  std::uint32_t capacity = 0;
  std::uint32_t running = 0;
  std::int64_t connected_at_ms = 0;
  std::int64_t last_heartbeat_ms = 0;
  bool draining = false;
  bool operator==(const WorkerInfo&) const = default;
};

struct DpStats {
  std::string dp;
  bool online = false;                // at least one live worker serves it
  std::uint64_t queued = 0;
  std::uint64_t running = 0;
  std::uint64_t deferred = 0;
  bool operator==(const DpStats&) const = default;
};

struct StateCount {
  JobState state = JobState::kQueued;
  std::uint64_t count = 0;
  bool operator==(const StateCount&) const = default;
};

// ---------------------------------------------------------------------------------------------
// Frontend: publishers and despoolctl (DEALER) -> broker (ROUTER), each request answered by
// exactly one reply carrying the same request id.

// All instructions are acknowledged together, by one durable write.
struct SubmitRequest {
  std::vector<Instruction> instructions;
  bool operator==(const SubmitRequest&) const = default;
};
struct StatusRequest {
  std::optional<std::string> job_id;
  std::optional<std::string> package;
  std::optional<std::string> dp;
  std::optional<JobState> state;
  std::uint32_t limit = 1000;         // 0 = all
  bool operator==(const StatusRequest&) const = default;
};
struct WorkersRequest {
  bool operator==(const WorkersRequest&) const = default;
};
struct DeadRequest {
  std::uint32_t limit = 1000;
  bool operator==(const DeadRequest&) const = default;
};
struct RetryRequest {
  std::string job_id;
  bool operator==(const RetryRequest&) const = default;
};
struct CancelRequest {
  std::string job_id;
  bool operator==(const CancelRequest&) const = default;
};
struct StatsRequest {
  bool operator==(const StatsRequest&) const = default;
};
struct VerifyRequest {
  std::string dp;
  std::optional<std::string> package;
  bool repair = false;
  bool operator==(const VerifyRequest&) const = default;
};
struct EventsSinceRequest {
  std::uint64_t since = 0;            // events with seq > since
  std::optional<std::string> dp;
  std::optional<std::string> package;
  std::uint32_t limit = 10000;
  bool operator==(const EventsSinceRequest&) const = default;
};

struct JobRef {
  std::string id;
  std::string dp;
  bool operator==(const JobRef&) const = default;
};
// Jobs in instruction order, then DP order.
struct SubmitReply {
  std::vector<JobRef> jobs;
  bool operator==(const SubmitReply&) const = default;
};
// The reply to status, dead, retry, cancel and verify.
struct JobsReply {
  std::vector<JobInfo> jobs;
  bool operator==(const JobsReply&) const = default;
};
struct WorkersReply {
  std::vector<WorkerInfo> workers;
  bool operator==(const WorkersReply&) const = default;
};
struct StatsReply {
  std::vector<StateCount> jobs_by_state;
  std::vector<DpStats> dps;
  std::uint32_t workers = 0;
  std::uint64_t queue_depth = 0;      // queued jobs
  std::optional<std::int64_t> oldest_queued_at_ms;
  std::uint64_t retry_backlog = 0;    // deferred jobs
  std::uint64_t last_event_seq = 0;
  bool operator==(const StatsReply&) const = default;
};

// ---------------------------------------------------------------------------------------------
// Events: published on the PUB socket and returned by events-since.

enum class EventKind { kState, kProgress };
const char* ToString(EventKind k);
bool ParseEventKind(std::string_view s, EventKind* out);

struct Progress {
  std::uint64_t files_done = 0;
  std::uint64_t files_total = 0;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  bool operator==(const Progress&) const = default;
};

struct Event {
  EventKind kind = EventKind::kState;
  std::uint64_t seq = 0;              // state events: store sequence; progress events: 0
  std::int64_t at_ms = 0;
  JobInfo job;                        // the job after the change
  std::optional<Progress> progress;   // progress events
  bool operator==(const Event&) const = default;
};

struct EventsReply {
  std::vector<Event> events;
  std::uint64_t oldest_seq = 0;       // oldest retained
  std::uint64_t last_seq = 0;         // newest stored
  bool operator==(const EventsReply&) const = default;
};

// Error reply to any request (frontend) or message (backend).
enum class ErrorKind {
  kBadRequest,       // malformed, failed validation
  kUnknownType,
  kUnsupportedVersion,
  kTooLarge,
  kNotFound,         // unknown job id
  kUnknownDp,
  kNotAuthorized,
  kConflict,         // e.g. retry of a job that is not dead
  kUnavailable,      // broker shutting down, store failing
  kInternal,
};
const char* ToString(ErrorKind k);
bool ParseErrorKind(std::string_view s, ErrorKind* out);

struct ErrorReply {
  ErrorKind kind = ErrorKind::kBadRequest;
  std::string message;
  bool operator==(const ErrorReply&) const = default;
};

// ---------------------------------------------------------------------------------------------
// Backend: workers (DEALER) <-> broker (ROUTER).

struct WorkerMetrics {
  std::uint64_t refreshes = 0;
  std::uint64_t refresh_ms_total = 0;
  std::uint64_t bytes_copied = 0;
  std::uint64_t bytes_linked = 0;
  std::uint64_t inuse_checks = 0;
  std::uint64_t inuse_check_us_total = 0;
  bool operator==(const WorkerMetrics&) const = default;
};

struct Register {
  std::string name;
  std::vector<std::string> dps;
  std::uint32_t capacity = 2;
  bool operator==(const Register&) const = default;
};
struct RegisterAck {
  std::uint32_t heartbeat_interval_ms = 1000;
  bool operator==(const RegisterAck&) const = default;
};
struct Heartbeat {
  std::uint32_t running = 0;
  std::optional<WorkerMetrics> metrics;
  // Worker -> broker: the worker is shutting down; dispatch nothing more to it.
  bool draining = false;
  bool operator==(const Heartbeat&) const = default;
};

// attempt: a token the broker increments on every dispatch of a job; results carry it back and
// a result for a stale attempt never moves the job's state.
struct Dispatch {
  std::string job_id;
  std::uint64_t attempt = 0;
  JobKind kind = JobKind::kRefresh;
  std::string dp;
  std::string package;                // verify: empty = all packages
  std::uint64_t version = 0;
  std::string source;
  bool force = false;                 // skip the in-use veto (on-exhausted = force)
  bool repair = false;
  bool checksum = false;
  bool operator==(const Dispatch&) const = default;
};
struct CancelJob {
  std::string job_id;
  std::uint64_t attempt = 0;
  bool operator==(const CancelJob&) const = default;
};
struct ProgressReport {
  std::string job_id;
  std::uint64_t attempt = 0;
  Progress progress;
  bool operator==(const ProgressReport&) const = default;
};

enum class Outcome { kApplied, kUpToDate, kDeferred, kRetryableError, kPermanentError, kCancelled, kVerified };
const char* ToString(Outcome o);
bool ParseOutcome(std::string_view s, Outcome* out);

struct JobResult {
  std::string job_id;
  std::uint64_t attempt = 0;
  Outcome outcome = Outcome::kApplied;
  std::optional<ApplyStats> stats;              // applied
  std::vector<std::string> in_use;              // deferred
  std::vector<Holder> holders;                  // deferred, where known
  std::optional<std::uint64_t> suggested_delay_ms;
  std::optional<std::string> error;             // errors, cancelled
  std::optional<VerifyReport> report;           // verified
  std::optional<std::uint64_t> installed_version;
  bool operator==(const JobResult&) const = default;
};
struct ResultAck {
  std::string job_id;
  std::uint64_t attempt = 0;
  bool operator==(const ResultAck&) const = default;
};
struct ReleaseHint {
  std::string job_id;
  std::uint64_t attempt = 0;
  bool operator==(const ReleaseHint&) const = default;
};
struct Disconnect {
  std::string reason;
  bool operator==(const Disconnect&) const = default;
};

// ---------------------------------------------------------------------------------------------
// The envelope: every message on every socket.

using Body = std::variant<
    // frontend requests
    SubmitRequest, StatusRequest, WorkersRequest, DeadRequest, RetryRequest, CancelRequest,
    StatsRequest, VerifyRequest, EventsSinceRequest,
    // frontend replies
    SubmitReply, JobsReply, WorkersReply, StatsReply, EventsReply, ErrorReply,
    // backend
    Register, RegisterAck, Heartbeat, Dispatch, CancelJob, ProgressReport, JobResult,
    ResultAck, ReleaseHint, Disconnect,
    // events
    Event>;

struct Envelope {
  std::uint32_t version = kProtocolVersion;
  std::uint64_t request_id = 0;       // frontend: echoed in the reply; 0 elsewhere
  Body body;
  bool operator==(const Envelope&) const = default;
};

// The wire name of a body type ("submit", "status", ...) as PROTOCOL.md lists it.
const char* TypeName(const Body& body);

}  // namespace despool::msg
