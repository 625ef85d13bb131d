// Fully populated instances of every message body: every optional set, every list non-empty,
// every number non-zero, every flag true, every enum off its default. Shared by the round-trip
// tests and the fuzz corpus generator.
//
// AllSamples() builds one envelope per std::variant alternative of Body: a new alternative
// without a Fill() overload here does not compile.
#pragma once

#include <cstddef>
#include <ostream>
#include <utility>
#include <variant>
#include <vector>

#include "despool/messages/types.h"

namespace despool::msg {

// GoogleTest prints parameters through this (found by ADL): the type name, not raw bytes.
inline void PrintTo(const Envelope& e, std::ostream* os) {
  *os << TypeName(e.body) << " id=" << e.request_id;
}

}  // namespace despool::msg

namespace despool::msg::testing {

inline RetryPolicy FullPolicy() { return {30000, 3600000, 7, OnExhausted::kForce}; }
inline Holder FullHolder() { return {4242, "smbd", "bin/tool.exe"}; }
inline VerifyReport FullReport() { return {{"lib/a.so"}, {"tmp/extra.txt"}, {"etc/conf", "x y/z"}}; }
inline ApplyStats FullStats() { return {120, 10, 100, 3, 1 << 20, 5 << 20, 1500, true}; }
inline Progress FullProgress() { return {5, 120, 4096, 1 << 20}; }
inline WorkerMetrics FullMetrics() { return {9, 9000, 1 << 30, 1 << 20, 77, 123456}; }

inline Instruction FullInstruction() {
  Instruction i;
  i.kind = JobKind::kVerify;
  i.package = "pkg.tools_1-x";
  i.version = (std::uint64_t{1} << 53) - 1;
  i.source = "/srv/src/pkg.tools/v9";
  i.dps = {"dp1", "DP-2"};
  i.dp_groups = {"site.a"};
  i.policy = FullPolicy();
  i.repair = true;
  i.checksum = true;
  return i;
}

inline JobInfo FullJob() {
  JobInfo j;
  j.id = "job-0001-abc";
  j.kind = JobKind::kVerify;
  j.package = "pkg.tools_1-x";
  j.version = 17;
  j.dp = "dp1";
  j.source = "/srv/src/pkg.tools/v17";
  j.state = JobState::kDeferred;
  j.attempts = 2;
  j.max_attempts = 10;
  j.next_attempt_at_ms = 1764100000123;
  j.last_error = "in use: bin/tool.exe";
  j.in_use = {"bin/tool.exe", "lib/libx.so"};
  j.holders = {FullHolder()};
  j.worker = "host-a worker #1";
  j.created_at_ms = -5;  // negative times round-trip too
  j.updated_at_ms = 1764100000999;
  j.report = FullReport();
  j.stats = FullStats();
  return j;
}

inline void Fill(SubmitRequest& m) { m.instructions = {FullInstruction(), FullInstruction()}; }
inline void Fill(StatusRequest& m) {
  m.job_id = "job-1";
  m.package = "pkg";
  m.dp = "dp1";
  m.state = JobState::kRunning;
  m.limit = 50;
}
inline void Fill(WorkersRequest&) {}
inline void Fill(DeadRequest& m) { m.limit = 3; }
inline void Fill(RetryRequest& m) { m.job_id = "job-2"; }
inline void Fill(CancelRequest& m) { m.job_id = "job-3"; }
inline void Fill(StatsRequest&) {}
inline void Fill(VerifyRequest& m) {
  m.dp = "dp1";
  m.package = "pkg";
  m.repair = true;
}
inline void Fill(EventsSinceRequest& m) {
  m.since = 99;
  m.dp = "dp1";
  m.package = "pkg";
  m.limit = 10;
}
inline void Fill(SubmitReply& m) { m.jobs = {{"job-1", "dp1"}, {"job-2", "DP-2"}}; }
inline void Fill(JobsReply& m) { m.jobs = {FullJob(), FullJob()}; }
inline void Fill(WorkersReply& m) {
  m.workers = {{"host-a worker #1", {"dp1", "dp2"}, 4, 2, 1764100000000, 1764100000500, true}};
}
inline void Fill(StatsReply& m) {
  m.jobs_by_state = {{JobState::kQueued, 4}, {JobState::kDead, 1}};
  m.dps = {{"dp1", true, 4, 1, 2}};
  m.workers = 3;
  m.queue_depth = 4;
  m.oldest_queued_at_ms = 1764100000000;
  m.retry_backlog = 2;
  m.last_event_seq = 1234;
}
inline void Fill(EventsReply& m) {
  m.events = {{EventKind::kProgress, 7, 1764100000001, FullJob(), FullProgress()}};
  m.oldest_seq = 3;
  m.last_seq = 9;
}
inline void Fill(ErrorReply& m) {
  m.kind = ErrorKind::kNotAuthorized;
  m.message = "client key not allowed";
}
inline void Fill(Register& m) {
  m.name = "host-a worker #1";
  m.dps = {"dp1", "dp2"};
  m.capacity = 4;
}
inline void Fill(RegisterAck& m) { m.heartbeat_interval_ms = 250; }
inline void Fill(Heartbeat& m) {
  m.running = 1;
  m.metrics = FullMetrics();
  m.draining = true;
}
inline void Fill(Dispatch& m) {
  m.job_id = "job-4";
  m.attempt = 3;
  m.kind = JobKind::kVerify;
  m.dp = "dp1";
  m.package = "pkg";
  m.version = 8;
  m.source = "/srv/src/pkg/8";
  m.force = true;
  m.repair = true;
  m.checksum = true;
}
inline void Fill(CancelJob& m) {
  m.job_id = "job-5";
  m.attempt = 2;
}
inline void Fill(ProgressReport& m) {
  m.job_id = "job-6";
  m.attempt = 1;
  m.progress = FullProgress();
}
inline void Fill(JobResult& m) {
  m.job_id = "job-7";
  m.attempt = 4;
  m.outcome = Outcome::kDeferred;
  m.stats = FullStats();
  m.in_use = {"bin/tool.exe"};
  m.holders = {FullHolder(), {77, "python3", "lib/x.py"}};
  m.suggested_delay_ms = 5000;
  m.error = "text with \"quotes\" and \n newline";
  m.report = FullReport();
  m.installed_version = 6;
}
inline void Fill(ResultAck& m) {
  m.job_id = "job-7";
  m.attempt = 4;
}
inline void Fill(ReleaseHint& m) {
  m.job_id = "job-7";
  m.attempt = 4;
}
inline void Fill(Disconnect& m) { m.reason = "shutting down"; }
inline void Fill(Event& m) {
  m.kind = EventKind::kProgress;
  m.seq = 12;
  m.at_ms = 1764100000002;
  m.job = FullJob();
  m.progress = FullProgress();
}

template <std::size_t... I>
std::vector<Envelope> AllSamplesImpl(std::index_sequence<I...>) {
  std::vector<Envelope> out;
  (
      [&] {
        Envelope e;
        e.request_id = 1000 + I;
        Fill(e.body.emplace<I>());
        out.push_back(std::move(e));
      }(),
      ...);
  return out;
}

// One fully populated envelope per Body alternative, in variant order.
inline std::vector<Envelope> AllSamples() {
  return AllSamplesImpl(std::make_index_sequence<std::variant_size_v<Body>>());
}

}  // namespace despool::msg::testing
