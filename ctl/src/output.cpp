#include "despool/ctl/output.h"

#include <algorithm>
#include <cstdio>

#include "despool/common/duration.h"
#include "despool/common/time.h"

namespace despool::ctl {
namespace {

using nlohmann::json;

json OptTime(const std::optional<std::int64_t>& ms) {
  if (!ms) return nullptr;
  return FormatRfc3339Ms(*ms);
}

json OptString(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return *s;
}

json ReportJson(const msg::VerifyReport& r) {
  return json{{"missing", r.missing}, {"extra", r.extra}, {"changed", r.changed}};
}

json ApplyStatsJson(const msg::ApplyStats& s) {
  return json{{"files_total", s.files_total},     {"files_copied", s.files_copied},
              {"files_linked", s.files_linked},   {"files_removed", s.files_removed},
              {"bytes_copied", s.bytes_copied},   {"bytes_linked", s.bytes_linked},
              {"duration_ms", s.duration_ms},     {"reused_staging", s.reused_staging}};
}

std::string Join(const std::vector<std::string>& items, const char* sep, std::size_t max_items = 5) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < max_items; ++i) {
    if (i) out += sep;
    out += items[i];
  }
  if (items.size() > max_items) out += std::string(sep) + "... (" + std::to_string(items.size()) + " in all)";
  return out;
}

std::string Version(std::uint64_t v) { return "v" + std::to_string(v); }

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

}  // namespace

std::string DumpJson(const json& j, int indent) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

json JobJson(const msg::JobInfo& job) {
  json holders = json::array();
  for (const auto& h : job.holders) {
    holders.push_back(json{{"pid", h.pid}, {"command", h.command}, {"path", h.path}});
  }
  json j{
      {"id", job.id},
      {"kind", msg::ToString(job.kind)},
      {"package", job.package},
      {"version", job.version},
      {"dp", job.dp},
      {"source", job.source},
      {"state", msg::ToString(job.state)},
      {"attempts", job.attempts},
      {"max_attempts", job.max_attempts},
      {"next_attempt_at", OptTime(job.next_attempt_at_ms)},
      {"last_error", OptString(job.last_error)},
      {"in_use", job.in_use},
      {"holders", holders},
      {"worker", OptString(job.worker)},
      {"created_at", FormatRfc3339Ms(job.created_at_ms)},
      {"updated_at", FormatRfc3339Ms(job.updated_at_ms)},
      {"stats", job.stats ? ApplyStatsJson(*job.stats) : json(nullptr)},
  };
  if (job.kind == msg::JobKind::kVerify) j["report"] = job.report ? ReportJson(*job.report) : json(nullptr);
  return j;
}

json JobsJson(const std::vector<msg::JobInfo>& jobs) {
  json a = json::array();
  for (const auto& j : jobs) a.push_back(JobJson(j));
  return a;
}

json JobRefsJson(const std::vector<msg::JobRef>& refs) {
  json a = json::array();
  for (const auto& r : refs) a.push_back(json{{"id", r.id}, {"dp", r.dp}});
  return a;
}

json WorkerJson(const msg::WorkerInfo& w) {
  return json{{"name", w.name},
              {"dps", w.dps},
              {"capacity", w.capacity},
              {"running", w.running},
              {"connected_at", FormatRfc3339Ms(w.connected_at_ms)},
              {"last_heartbeat_at", FormatRfc3339Ms(w.last_heartbeat_ms)},
              {"draining", w.draining}};
}

json StatsJson(const msg::StatsReply& s) {
  json by_state = json::object();
  // Every state is present (0 when the broker did not list it) so scripts can index blindly.
  for (auto st : {msg::JobState::kQueued, msg::JobState::kRunning, msg::JobState::kDeferred,
                  msg::JobState::kApplied, msg::JobState::kUpToDate, msg::JobState::kSuperseded,
                  msg::JobState::kCancelled, msg::JobState::kDead}) {
    by_state[msg::ToString(st)] = 0;
  }
  for (const auto& c : s.jobs_by_state) by_state[msg::ToString(c.state)] = c.count;
  json dps = json::array();
  for (const auto& d : s.dps) {
    dps.push_back(json{{"dp", d.dp},
                       {"online", d.online},
                       {"queued", d.queued},
                       {"running", d.running},
                       {"deferred", d.deferred}});
  }
  return json{{"jobs_by_state", by_state},
              {"dps", dps},
              {"workers", s.workers},
              {"queue_depth", s.queue_depth},
              {"oldest_queued_at", OptTime(s.oldest_queued_at_ms)},
              {"retry_backlog", s.retry_backlog},
              {"last_event_seq", s.last_event_seq}};
}

json EventJson(const msg::Event& e) {
  json progress = nullptr;
  if (e.progress) {
    progress = json{{"files_done", e.progress->files_done},
                    {"files_total", e.progress->files_total},
                    {"bytes_done", e.progress->bytes_done},
                    {"bytes_total", e.progress->bytes_total}};
  }
  return json{{"seq", e.seq},
              {"kind", msg::ToString(e.kind)},
              {"at", FormatRfc3339Ms(e.at_ms)},
              {"job", JobJson(e.job)},
              {"progress", progress}};
}

void Table::Print(std::ostream& out) const {
  std::vector<std::size_t> width(header_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (std::size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
  };
  measure(header_);
  for (const auto& r : rows_) measure(r);
  auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < width.size(); ++i) {
      const std::string cell = i < row.size() ? row[i] : "";
      line += cell;
      if (i + 1 < width.size()) line += std::string(width[i] - cell.size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  print(header_);
  for (const auto& r : rows_) print(r);
}

std::string Plural(std::uint64_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

std::string HumanBytes(std::uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 4) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  }
  return buf;
}

std::string InUseText(const msg::JobInfo& job) {
  if (job.in_use.empty()) return "";
  std::string s = "in use: " + Join(job.in_use, ", ");
  if (!job.holders.empty()) {
    std::vector<std::string> hs;
    for (const auto& h : job.holders) {
      std::string one = "pid " + std::to_string(h.pid);
      if (!h.command.empty()) one += " " + h.command;
      if (!h.path.empty()) one += " holds " + h.path;
      hs.push_back(std::move(one));
    }
    s += " (" + Join(hs, "; ") + ")";
  }
  return OneLine(s);
}

std::string JobDetail(const msg::JobInfo& job, std::int64_t now_ms) {
  // The broker keeps the last deferral's in-use files and error on a job that moved on: show
  // them only where they explain the state (waiting for a retry, or dead).
  const bool waiting = job.state == msg::JobState::kDeferred;
  const bool failed = job.state == msg::JobState::kDead || job.state == msg::JobState::kCancelled;
  std::vector<std::string> parts;
  if (waiting && job.next_attempt_at_ms) {
    const std::int64_t left = *job.next_attempt_at_ms - now_ms;
    parts.push_back(left >= 1000 ? "retry " + FormatRelative(now_ms, *job.next_attempt_at_ms)
                    : left > 0   ? std::string("retry in <1s")
                                 : std::string("retry due now"));
  }
  if (job.attempts > 0 && !msg::IsTerminal(job.state)) parts.push_back(Plural(job.attempts, "attempt"));
  if (job.attempts > 0 && job.state == msg::JobState::kDead) parts.push_back("after " + Plural(job.attempts, "attempt"));
  if (waiting || job.state == msg::JobState::kDead) {
    if (auto in_use = InUseText(job); !in_use.empty()) parts.push_back(in_use);
  }
  if (job.state == msg::JobState::kRunning && job.worker) parts.push_back("on " + *job.worker);
  if ((waiting || failed) && job.last_error && !job.last_error->empty()) {
    parts.push_back("error: " + OneLine(*job.last_error));
  }
  if (job.state == msg::JobState::kApplied && job.stats) {
    if (job.stats->reused_staging) {
      parts.push_back(std::to_string(job.stats->files_total) +
                      " files from the tree staged before the deferral");
    } else {
      parts.push_back(std::to_string(job.stats->files_copied) + " of " +
                      std::to_string(job.stats->files_total) + " files copied (" +
                      HumanBytes(job.stats->bytes_copied) + ")");
    }
  }
  if (job.report) {
    parts.push_back(std::to_string(job.report->missing.size()) + " missing, " +
                    std::to_string(job.report->extra.size()) + " extra, " +
                    std::to_string(job.report->changed.size()) + " changed");
  }
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += ", ";
    out += p;
  }
  return out;
}

void PrintJobsTable(std::ostream& out, const std::vector<msg::JobInfo>& jobs, std::int64_t now_ms) {
  if (jobs.empty()) {
    out << "no jobs\n";
    return;
  }
  Table t({"ID", "KIND", "PACKAGE", "VERSION", "DP", "STATE", "UPDATED", "DETAIL"});
  for (const auto& j : jobs) {
    t.Add({j.id, msg::ToString(j.kind), j.package.empty() ? "*" : j.package,
           j.kind == msg::JobKind::kVerify ? "-" : std::to_string(j.version), j.dp, msg::ToString(j.state),
           j.updated_at_ms ? FormatRelative(now_ms, j.updated_at_ms) : "-", JobDetail(j, now_ms)});
  }
  t.Print(out);
}

void PrintJobDetails(std::ostream& out, const msg::JobInfo& j, std::int64_t now_ms) {
  auto line = [&](const char* key, const std::string& value) { out << key << ": " << value << '\n'; };
  line("id", j.id);
  line("kind", msg::ToString(j.kind));
  line("package", j.package.empty() ? "* (all)" : j.package);
  if (j.kind == msg::JobKind::kRefresh) line("version", std::to_string(j.version));
  line("dp", j.dp);
  if (!j.source.empty()) line("source", j.source);
  line("state", msg::ToString(j.state));
  line("attempts", std::to_string(j.attempts) + (j.max_attempts ? " of " + std::to_string(j.max_attempts) : ""));
  if (j.next_attempt_at_ms) {
    line("next attempt", FormatRfc3339Ms(*j.next_attempt_at_ms) + " (" +
                             FormatRelative(now_ms, *j.next_attempt_at_ms) + ")");
  }
  if (j.last_error) line("last error", OneLine(*j.last_error));
  if (!j.in_use.empty()) line("in use", Join(j.in_use, ", ", 50));
  for (const auto& h : j.holders) {
    line("held by", "pid " + std::to_string(h.pid) + (h.command.empty() ? "" : " " + h.command) +
                        (h.path.empty() ? "" : " (" + h.path + ")"));
  }
  if (j.worker) line("worker", *j.worker);
  if (j.created_at_ms) line("created", FormatRfc3339Ms(j.created_at_ms) + " (" + FormatRelative(now_ms, j.created_at_ms) + ")");
  if (j.updated_at_ms) line("updated", FormatRfc3339Ms(j.updated_at_ms) + " (" + FormatRelative(now_ms, j.updated_at_ms) + ")");
  if (j.stats) {
    line("applied", std::to_string(j.stats->files_total) + " files: " + std::to_string(j.stats->files_copied) +
                        " copied (" + HumanBytes(j.stats->bytes_copied) + "), " +
                        std::to_string(j.stats->files_linked) + " unchanged, " +
                        std::to_string(j.stats->files_removed) + " removed in " +
                        FormatDuration(std::chrono::milliseconds(j.stats->duration_ms)));
  }
  if (j.report) {
    line("missing", j.report->missing.empty() ? "none" : Join(j.report->missing, ", ", 50));
    line("extra", j.report->extra.empty() ? "none" : Join(j.report->extra, ", ", 50));
    line("changed", j.report->changed.empty() ? "none" : Join(j.report->changed, ", ", 50));
  }
}

void PrintWorkersTable(std::ostream& out, const std::vector<msg::WorkerInfo>& workers, std::int64_t now_ms) {
  if (workers.empty()) {
    out << "no workers connected\n";
    return;
  }
  Table t({"NAME", "DPS", "RUNNING", "CAPACITY", "CONNECTED", "HEARTBEAT", "STATE"});
  for (const auto& w : workers) {
    t.Add({w.name, Join(w.dps, ",", 20), std::to_string(w.running), std::to_string(w.capacity),
           FormatRelative(now_ms, w.connected_at_ms), FormatRelative(now_ms, w.last_heartbeat_ms),
           w.draining ? "draining" : "ready"});
  }
  t.Print(out);
}

void PrintStats(std::ostream& out, const msg::StatsReply& s, std::int64_t now_ms) {
  out << "workers: " << s.workers << '\n';
  out << "queue depth: " << s.queue_depth;
  if (s.oldest_queued_at_ms) out << " (oldest queued " << FormatRelative(now_ms, *s.oldest_queued_at_ms) << ")";
  out << '\n';
  out << "retry backlog: " << s.retry_backlog << '\n';
  out << "last event seq: " << s.last_event_seq << '\n';
  out << "jobs by state:";
  const auto by_state = StatsJson(s)["jobs_by_state"];
  for (const auto& [state, count] : by_state.items()) out << ' ' << state << '=' << count.get<std::uint64_t>();
  out << '\n';
  if (!s.dps.empty()) {
    out << '\n';
    Table t({"DP", "ONLINE", "QUEUED", "RUNNING", "DEFERRED"});
    for (const auto& d : s.dps) {
      t.Add({d.dp, d.online ? "yes" : "no", std::to_string(d.queued), std::to_string(d.running),
             std::to_string(d.deferred)});
    }
    t.Print(out);
  }
}

std::string EventLine(const msg::Event& e, std::int64_t now_ms) {
  const auto& j = e.job;
  std::string s = FormatRfc3339Ms(e.at_ms);
  if (e.seq) s += " #" + std::to_string(e.seq);
  s += " " + j.dp + " " + (j.package.empty() ? "*" : j.package);
  if (j.kind == msg::JobKind::kRefresh) s += " " + Version(j.version);
  s += " job " + j.id;
  if (e.kind == msg::EventKind::kProgress && e.progress) {
    const auto& p = *e.progress;
    s += " progress " + std::to_string(p.files_done) + "/" + std::to_string(p.files_total) + " files " +
         HumanBytes(p.bytes_done) + "/" + HumanBytes(p.bytes_total);
    return s;
  }
  s += " ";
  s += msg::ToString(j.state);
  if (j.kind == msg::JobKind::kVerify) s += " (verify)";
  // Relative times are relative to the event, so replayed events read as they did live.
  if (auto d = JobDetail(j, e.at_ms ? e.at_ms : now_ms); !d.empty()) s += ": " + d;
  return s;
}

}  // namespace despool::ctl
