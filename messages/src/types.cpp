#include "despool/messages/types.h"

#include <array>
#include <string_view>
#include <utility>

namespace despool::msg {
namespace {

template <typename E, std::size_t N>
bool ParseEnum(const std::array<std::pair<E, const char*>, N>& table, std::string_view s, E* out) {
  for (const auto& [value, name] : table) {
    if (s == name) {
      *out = value;
      return true;
    }
  }
  return false;
}

template <typename E, std::size_t N>
const char* NameOf(const std::array<std::pair<E, const char*>, N>& table, E e) {
  for (const auto& [value, name] : table) {
    if (value == e) return name;
  }
  return "?";
}

constexpr std::array<std::pair<JobKind, const char*>, 2> kJobKinds{{
    {JobKind::kRefresh, "refresh"}, {JobKind::kVerify, "verify"}}};
constexpr std::array<std::pair<JobState, const char*>, 8> kJobStates{{
    {JobState::kQueued, "queued"},         {JobState::kRunning, "running"},
    {JobState::kDeferred, "deferred"},     {JobState::kApplied, "applied"},
    {JobState::kUpToDate, "up-to-date"},   {JobState::kSuperseded, "superseded"},
    {JobState::kCancelled, "cancelled"},   {JobState::kDead, "dead"}}};
constexpr std::array<std::pair<OnExhausted, const char*>, 2> kOnExhausted{{
    {OnExhausted::kDead, "dead"}, {OnExhausted::kForce, "force"}}};
constexpr std::array<std::pair<EventKind, const char*>, 2> kEventKinds{{
    {EventKind::kState, "state"}, {EventKind::kProgress, "progress"}}};
constexpr std::array<std::pair<ErrorKind, const char*>, 10> kErrorKinds{{
    {ErrorKind::kBadRequest, "bad-request"},
    {ErrorKind::kUnknownType, "unknown-type"},
    {ErrorKind::kUnsupportedVersion, "unsupported-version"},
    {ErrorKind::kTooLarge, "too-large"},
    {ErrorKind::kNotFound, "not-found"},
    {ErrorKind::kUnknownDp, "unknown-dp"},
    {ErrorKind::kNotAuthorized, "not-authorized"},
    {ErrorKind::kConflict, "conflict"},
    {ErrorKind::kUnavailable, "unavailable"},
    {ErrorKind::kInternal, "internal"}}};
constexpr std::array<std::pair<Outcome, const char*>, 7> kOutcomes{{
    {Outcome::kApplied, "applied"},
    {Outcome::kUpToDate, "up-to-date"},
    {Outcome::kDeferred, "deferred"},
    {Outcome::kRetryableError, "retryable-error"},
    {Outcome::kPermanentError, "permanent-error"},
    {Outcome::kCancelled, "cancelled"},
    {Outcome::kVerified, "verified"}}};

}  // namespace

const char* ToString(JobKind k) { return NameOf(kJobKinds, k); }
const char* ToString(JobState s) { return NameOf(kJobStates, s); }
const char* ToString(OnExhausted p) { return NameOf(kOnExhausted, p); }
const char* ToString(EventKind k) { return NameOf(kEventKinds, k); }
const char* ToString(ErrorKind k) { return NameOf(kErrorKinds, k); }
const char* ToString(Outcome o) { return NameOf(kOutcomes, o); }
bool ParseJobKind(std::string_view s, JobKind* out) { return ParseEnum(kJobKinds, s, out); }
bool ParseJobState(std::string_view s, JobState* out) { return ParseEnum(kJobStates, s, out); }
bool ParseOnExhausted(std::string_view s, OnExhausted* out) { return ParseEnum(kOnExhausted, s, out); }
bool ParseEventKind(std::string_view s, EventKind* out) { return ParseEnum(kEventKinds, s, out); }
bool ParseErrorKind(std::string_view s, ErrorKind* out) { return ParseEnum(kErrorKinds, s, out); }
bool ParseOutcome(std::string_view s, Outcome* out) { return ParseEnum(kOutcomes, s, out); }

bool IsTerminal(JobState s) {
  switch (s) {
    case JobState::kApplied: case JobState::kUpToDate: case JobState::kSuperseded:
    case JobState::kCancelled: case JobState::kDead:
      return true;
    default:
      return false;
  }
}

}  // namespace despool::msg
