// despoolctl's output: the stable --json shapes (documented in docs/despoolctl.md) and the
// human forms (aligned tables, relative times).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "despool/messages/types.h"

namespace despool::ctl {

// A job as `status --json` prints it: id, kind, package, version, dp, source, state, attempts,
// max_attempts, next_attempt_at (RFC 3339 UTC ms "Z" or null), last_error (string or null),
// in_use (array), holders (array of {pid, command, path}), worker (string or null),
// created_at, updated_at, stats (object or null) and, for verify jobs only, report
// ({missing, extra, changed} or null before the job ran).
nlohmann::json JobJson(const msg::JobInfo& job);
nlohmann::json JobsJson(const std::vector<msg::JobInfo>& jobs);
nlohmann::json JobRefsJson(const std::vector<msg::JobRef>& refs);
nlohmann::json WorkerJson(const msg::WorkerInfo& worker);
nlohmann::json StatsJson(const msg::StatsReply& stats);
// One `watch --json` line: {"seq", "kind", "at", "job": JobJson, "progress": {...} | null}.
nlohmann::json EventJson(const msg::Event& event);

// Serialises without ever throwing: invalid UTF-8 (file names are bytes) becomes U+FFFD.
// indent -1 = one line.
std::string DumpJson(const nlohmann::json& j, int indent);

// An aligned text table: columns padded to their widest cell, two spaces apart, the last
// column unpadded.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(std::ostream& out) const;
  bool empty() const { return rows_.empty(); }

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "3 attempts", "1 attempt".
std::string Plural(std::uint64_t n, const char* word);
// "1.5 MiB", "512 B".
std::string HumanBytes(std::uint64_t bytes);
// What a job is waiting for or why it ended, for the DETAIL column and --wait reports:
// "retry in 42s, 3 attempts, in use: bin/app (pid 123 app)", "error: ...".
std::string JobDetail(const msg::JobInfo& job, std::int64_t now_ms);
// "in use: a, b (pid 12 app holds a)" or "" when nothing is in use.
std::string InUseText(const msg::JobInfo& job);

void PrintJobsTable(std::ostream& out, const std::vector<msg::JobInfo>& jobs, std::int64_t now_ms);
// Every field of one job, "key: value" per line.
void PrintJobDetails(std::ostream& out, const msg::JobInfo& job, std::int64_t now_ms);
void PrintWorkersTable(std::ostream& out, const std::vector<msg::WorkerInfo>& workers, std::int64_t now_ms);
void PrintStats(std::ostream& out, const msg::StatsReply& stats, std::int64_t now_ms);
// One human line per event (watch without a terminal).
std::string EventLine(const msg::Event& event, std::int64_t now_ms);

}  // namespace despool::ctl
