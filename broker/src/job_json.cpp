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
          {"duration_ms", s.duration_ms},   {"reused_staging", s.reused_staging}};
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
  s.reused_staging = j.value("reused_staging", false);
  return s;
}

}  // namespace despool::broker
