#include "job_json.h"

namespace despool::broker {

using nlohmann::json;

json HoldersToJson(const std::vector<msg::Holder>& holders) {
  json a = json::array();
  for (const auto& h : holders) a.push_back({{"pid", h.pid}, {"command", h.command}, {"path", h.path}});
  return a;
}

std::vector<msg::Holder> HoldersFromJson(const json& j) {
  std::vector<msg::Holder> out;
  for (const auto& e : j) {
    out.push_back({e.at("pid").get<std::int64_t>(), e.at("command").get<std::string>(),
                   e.at("path").get<std::string>()});
  }
  return out;
}

json ReportToJson(const msg::VerifyReport& r) {
  return {{"missing", r.missing}, {"extra", r.extra}, {"changed", r.changed}};
}

msg::VerifyReport ReportFromJson(const json& j) {
  msg::VerifyReport r;
  r.missing = j.at("missing").get<std::vector<std::string>>();
  r.extra = j.at("extra").get<std::vector<std::string>>();
  r.changed = j.at("changed").get<std::vector<std::string>>();
  return r;
}

json StatsToJson(const msg::ApplyStats& s) {
  return {{"files_total", s.files_total},   {"files_copied", s.files_copied},
          {"files_linked", s.files_linked}, {"files_removed", s.files_removed},
          {"bytes_copied", s.bytes_copied}, {"bytes_linked", s.bytes_linked},
          {"duration_ms", s.duration_ms}};
}

msg::ApplyStats StatsFromJson(const json& j) {
  msg::ApplyStats s;
  s.files_total = j.value("files_total", std::uint64_t{0});
  s.files_copied = j.value("files_copied", std::uint64_t{0});
  s.files_linked = j.value("files_linked", std::uint64_t{0});
  s.files_removed = j.value("files_removed", std::uint64_t{0});
  s.bytes_copied = j.value("bytes_copied", std::uint64_t{0});
  s.bytes_linked = j.value("bytes_linked", std::uint64_t{0});
  s.duration_ms = j.value("duration_ms", std::uint64_t{0});
  return s;
}

json JobInfoToJson(const msg::JobInfo& job) {
  json j = {{"id", job.id},
            {"kind", msg::ToString(job.kind)},
            {"package", job.package},
            {"version", job.version},
            {"dp", job.dp},
            {"source", job.source},
            {"state", msg::ToString(job.state)},
            {"attempts", job.attempts},
            {"max_attempts", job.max_attempts},
            {"in_use", job.in_use},
            {"created_at_ms", job.created_at_ms},
            {"updated_at_ms", job.updated_at_ms}};
  if (job.next_attempt_at_ms) j["next_attempt_at_ms"] = *job.next_attempt_at_ms;
  if (job.last_error) j["last_error"] = *job.last_error;
  if (!job.holders.empty()) j["holders"] = HoldersToJson(job.holders);
  if (job.worker) j["worker"] = *job.worker;
  if (job.report) j["report"] = ReportToJson(*job.report);
  if (job.stats) j["stats"] = StatsToJson(*job.stats);
  return j;
}

msg::JobInfo JobInfoFromJson(const json& j) {
  msg::JobInfo job;
  job.id = j.at("id").get<std::string>();
  msg::ParseJobKind(j.at("kind").get<std::string>(), &job.kind);
  job.package = j.at("package").get<std::string>();
  job.version = j.at("version").get<std::uint64_t>();
  job.dp = j.at("dp").get<std::string>();
  job.source = j.at("source").get<std::string>();
  msg::ParseJobState(j.at("state").get<std::string>(), &job.state);
  job.attempts = j.at("attempts").get<std::uint32_t>();
  job.max_attempts = j.at("max_attempts").get<std::uint32_t>();
  job.in_use = j.at("in_use").get<std::vector<std::string>>();
  job.created_at_ms = j.at("created_at_ms").get<std::int64_t>();
  job.updated_at_ms = j.at("updated_at_ms").get<std::int64_t>();
  if (j.contains("next_attempt_at_ms")) job.next_attempt_at_ms = j["next_attempt_at_ms"].get<std::int64_t>();
  if (j.contains("last_error")) job.last_error = j["last_error"].get<std::string>();
  if (j.contains("holders")) job.holders = HoldersFromJson(j["holders"]);
  if (j.contains("worker")) job.worker = j["worker"].get<std::string>();
  if (j.contains("report")) job.report = ReportFromJson(j["report"]);
  if (j.contains("stats")) job.stats = StatsFromJson(j["stats"]);
  return job;
}

}  // namespace despool::broker
