#include "despool/ctl/app.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "despool/common/cli.h"
#include "despool/common/config.h"
#include "despool/common/duration.h"
#include "despool/common/logging.h"
#include "despool/common/names.h"
#include "despool/common/time.h"
#include "despool/ctl/batch.h"
#include "despool/ctl/client.h"
#include "despool/ctl/output.h"
#include "progress_view.h"

namespace despool::ctl {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Command-line values

Millis ToDuration(const std::string& s) { return ParseDuration(s).value(); }
std::uint64_t ToUnsigned(const std::string& s) { return std::stoull(s); }

// Bounds an unsigned option (after despool::UnsignedValidator accepted its digits).
CLI::Validator AtMost(std::uint64_t max) {
  return CLI::Validator(
      [max](std::string& s) -> std::string {
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size() || v > max) {
          return "must be at most " + std::to_string(max) + " (got " + s + ")";
        }
        return {};
      },
      "");
}

CLI::Validator NameValidator(Status (*check)(std::string_view)) {
  return CLI::Validator(
      [check](std::string& s) -> std::string {
        auto st = check(s);
        return st.ok() ? std::string() : st.error().message;
      },
      "");
}

// A validator without a description, so --help shows only the option's type name.
CLI::Validator Quiet(CLI::Validator v) {
  v.description("");
  return v;
}

// A usage error found after parsing (e.g. in the config file): exit 2.
struct UsageError {
  std::string message;
};

// ---------------------------------------------------------------------------------------------
// Options

struct Globals {
  std::string broker = kDefaultFrontend;
  std::string events = kDefaultEvents;
  bool json = false;
  std::string timeout = "10s";
  std::string log_level;   // from the config file; flags win (ResolveLogOptions)
  std::string log_format;
  std::string curve_server_key;  // CURVE key files (docs/security.md)
  std::string curve_key;
};

struct SubmitOptions {
  std::string package;
  std::string version;
  std::string source;
  std::vector<std::string> dps;
  std::vector<std::string> dp_groups;
  bool wait = false;
  std::string wait_timeout;
  std::string retry_base;
  std::string retry_max;
  std::string max_attempts;
  std::string on_exhausted;
  std::string file;
  bool checksum = false;
};

struct StatusOptions {
  std::string job_id;
  std::string package;
  std::string dp;
  std::string state;
  std::string limit = "1000";
};

struct WatchOptions {
  std::string dp;
  std::string package;
  std::string since;
};

struct VerifyOptions {
  std::string dp;
  std::string package;
  bool repair = false;
  bool no_wait = false;
  std::string wait_timeout;
};

struct Ctx {
  Io io;
  Globals g;
  Millis timeout{10000};
  Client client;
  const char* command = "";

  int Fail(const std::string& message) {
    io.err << "despoolctl: " << command << ": " << message << '\n';
    io.err.flush();
    return kExitError;
  }
  int Fail(const Error& e) { return Fail(e.message); }
  void PrintJson(const json& j) { io.out << DumpJson(j, 2) << '\n'; }
};

// ---------------------------------------------------------------------------------------------
// The config file (config/despoolctl.toml): broker, events, timeout, json, [log] level and
// format. Flags given on the command line win.

void ApplyConfig(const std::string& path, Globals& g, const CLI::App& app) {
  auto reader = ConfigReader::Load(path);
  if (!reader.ok()) throw UsageError{"config " + reader.error().message};
  auto root = reader->Root();
  std::string broker = g.broker, events = g.events;
  Millis timeout = ToDuration(g.timeout);
  bool json = g.json;
  root.Get("broker", broker);
  root.Get("events", events);
  root.Get("timeout", timeout);
  root.Get("json", json);
  std::string curve_server_key = g.curve_server_key, curve_key = g.curve_key;
  root.Get("curve_server_key", curve_server_key);
  root.Get("curve_key", curve_key);
  auto log = root.Section("log");
  log.Get("level", g.log_level);
  log.Get("format", g.log_format);
  if (auto s = reader->Finish(); !s.ok()) throw UsageError{"config " + s.error().message};
  auto given = [&](const char* flag) { return GivenOnCommandLine(app.get_option(flag)); };
  if (!given("--broker")) g.broker = broker;
  if (!given("--events")) g.events = events;
  if (!given("--timeout")) g.timeout = FormatDuration(timeout);
  if (!given("--json")) g.json = json;
  if (!given("--curve-server-key")) g.curve_server_key = curve_server_key;
  if (!given("--curve-key")) g.curve_key = curve_key;
}

// ---------------------------------------------------------------------------------------------
// Waiting for jobs (submit --wait, verify)

struct WaitResult {
  std::vector<msg::JobInfo> jobs;  // in the order of the refs
  bool timed_out = false;
  bool any_failed = false;          // dead or cancelled
};

std::string WaitLine(const msg::JobInfo& j, std::int64_t now_ms) {
  std::string line = j.id + "\t" + j.dp + "\t" + msg::ToString(j.state);
  std::string detail = JobDetail(j, now_ms);
  if (j.state == msg::JobState::kDeferred && j.next_attempt_at_ms) {
    detail += (detail.empty() ? "" : ", ") + std::string("next attempt at ") + FormatRfc3339Ms(*j.next_attempt_at_ms);
  }
  if (!detail.empty()) line += ": " + detail;
  return line;
}

Result<WaitResult> WaitForJobs(Ctx& ctx, EventFollower& follower, const std::vector<msg::JobRef>& refs,
                               std::optional<Millis> wait_timeout, bool human) {
  const auto start = Clock::now();
  std::map<std::string, std::optional<msg::JobInfo>> latest;
  std::set<std::string> pending;
  for (const auto& r : refs) {
    latest[r.id];
    pending.insert(r.id);
  }
  std::map<std::string, std::pair<msg::JobState, std::uint32_t>> printed;
  // Events arrive in seq order; a status reply is a snapshot that may be ahead of the events
  // still queued, with the same millisecond timestamps. Events drive the report; a snapshot is
  // reported only for states an event might never show (terminal, deferred) and only when
  // strictly newer, so lines never go backwards.
  auto consider = [&](const msg::JobInfo& job, bool from_event) {
    auto it = latest.find(job.id);
    if (it == latest.end()) return;
    if (it->second) {
      if (msg::IsTerminal(it->second->state)) return;  // final for this wait
      if (it->second->updated_at_ms > job.updated_at_ms) return;
      if (!from_event && it->second->updated_at_ms == job.updated_at_ms) return;
    }
    it->second = job;
    const bool report = from_event || msg::IsTerminal(job.state) || job.state == msg::JobState::kDeferred;
    if (human && report) {
      auto key = std::make_pair(job.state, job.attempts);
      auto p = printed.find(job.id);
      if (p == printed.end() || p->second != key) {
        printed[job.id] = key;
        ctx.io.out << WaitLine(job, NowMs()) << '\n';
        ctx.io.out.flush();
      }
    }
    if (msg::IsTerminal(job.state)) pending.erase(job.id);
  };
  auto poll_status = [&]() -> despool::Status {
    for (const auto& id : std::vector<std::string>(pending.begin(), pending.end())) {
      msg::StatusRequest req;
      req.job_id = id;
      auto r = ctx.client.Status(req, ctx.timeout);
      if (!r.ok()) return r.take_error();
      for (const auto& j : *r) consider(j, false);
    }
    return {};
  };
  // Jobs may have moved before the follower saw anything (or a state may never be published
  // for a quick job): one status round first, then events, with a status round on silence.
  DESPOOL_RETURN_IF_ERROR(poll_status());
  auto last_news = Clock::now();
  WaitResult out;
  while (!pending.empty()) {
    auto now = Clock::now();
    if (wait_timeout && now - start >= *wait_timeout) {
      out.timed_out = true;
      break;
    }
    Millis slice{1000};
    if (wait_timeout) {
      slice = std::min(slice, std::chrono::duration_cast<Millis>(*wait_timeout - (now - start)) + Millis{1});
    }
    auto ev = follower.Next(slice);
    if (!ev.ok()) return ev.take_error();
    if (ev->has_value()) {
      const auto& e = **ev;
      if (e.kind == msg::EventKind::kState && latest.count(e.job.id)) {
        consider(e.job, true);
        last_news = Clock::now();
      }
    } else if (Clock::now() - last_news >= Millis{5000}) {
      DESPOOL_RETURN_IF_ERROR(poll_status());
      last_news = Clock::now();
    }
  }
  for (const auto& r : refs) {
    auto& j = latest[r.id];
    if (!j) {
      msg::StatusRequest req;
      req.job_id = r.id;
      auto s = ctx.client.Status(req, ctx.timeout);
      if (!s.ok()) return s.take_error();
      if (!s->empty()) j = s->front();
    }
    if (j) {
      if (j->state == msg::JobState::kDead || j->state == msg::JobState::kCancelled) out.any_failed = true;
      out.jobs.push_back(*j);
    } else {
      msg::JobInfo unknown;
      unknown.id = r.id;
      unknown.dp = r.dp;
      out.jobs.push_back(unknown);
    }
  }
  return out;
}

int WaitExitCode(Ctx& ctx, const WaitResult& w, const std::string& wait_timeout_text) {
  if (w.any_failed) {
    std::vector<std::string> failed;
    for (const auto& j : w.jobs) {
      if (j.state == msg::JobState::kDead || j.state == msg::JobState::kCancelled) {
        failed.push_back(j.id + " on " + j.dp + " " + msg::ToString(j.state) +
                         (j.last_error ? " (" + *j.last_error + ")" : ""));
      }
    }
    std::string msg = "job failed: ";
    for (std::size_t i = 0; i < failed.size(); ++i) msg += (i ? "; " : "") + failed[i];
    ctx.io.err << "despoolctl: " << ctx.command << ": " << msg << '\n';
    return kExitJobFailed;
  }
  if (w.timed_out) {
    std::string msg = "--wait-timeout " + wait_timeout_text + " passed; not finished:";
    for (const auto& j : w.jobs) {
      if (!msg::IsTerminal(j.state)) msg += " " + j.id + " on " + j.dp + " (" + msg::ToString(j.state) + ")";
    }
    ctx.io.err << "despoolctl: " << ctx.command << ": " << msg << '\n';
    return kExitWaitTimeout;
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// Commands

int RunSubmit(Ctx& ctx, const SubmitOptions& o) {
  InstructionDefaults defaults;
  defaults.dps = o.dps;
  defaults.dp_groups = o.dp_groups;
  if (!o.retry_base.empty()) defaults.policy.retry_base_ms = static_cast<std::uint64_t>(ToDuration(o.retry_base).count());
  if (!o.retry_max.empty()) defaults.policy.retry_max_ms = static_cast<std::uint64_t>(ToDuration(o.retry_max).count());
  if (!o.max_attempts.empty()) defaults.policy.max_attempts = static_cast<std::uint32_t>(ToUnsigned(o.max_attempts));
  if (!o.on_exhausted.empty()) {
    msg::OnExhausted p;
    msg::ParseOnExhausted(o.on_exhausted, &p);
    defaults.policy.on_exhausted = p;
  }
  defaults.checksum = o.checksum;

  msg::SubmitRequest req;
  if (!o.file.empty()) {
    auto r = LoadInstructions(o.file, defaults);
    if (!r.ok()) {
      if (r.error().code == ErrorCode::kInvalidArgument) throw UsageError{r.error().message};
      return ctx.Fail(r.error());
    }
    req.instructions = std::move(r.value());
  } else {
    msg::Instruction ins;
    ins.package = o.package;
    ins.version = ToUnsigned(o.version);
    fs::path src(o.source);
    if (src.is_relative()) src = fs::absolute(src);
    ins.source = src.lexically_normal().string();
    if (ins.source.size() > 1 && ins.source.back() == '/') ins.source.pop_back();
    ins.dps = defaults.dps;
    ins.dp_groups = defaults.dp_groups;
    ins.policy = defaults.policy;
    ins.checksum = o.checksum;
    if (auto s = ValidateInstruction(ins); !s.ok()) throw UsageError{s.error().message};
    req.instructions.push_back(std::move(ins));
  }

  std::optional<EventFollower> follower;
  if (o.wait) {
    FollowOptions fo;
    fo.events_endpoint = ctx.g.events;
    // Narrow the subscription when the whole request concerns one DP / one package.
    if (req.instructions.size() == 1) {
      const auto& ins = req.instructions.front();
      if (ins.dps.size() == 1 && ins.dp_groups.empty()) fo.dp = ins.dps.front();
      if (fo.dp) fo.package = ins.package;
    }
    follower.emplace(ctx.client, fo);
    if (auto s = follower->Start(); !s.ok()) return ctx.Fail(s.error());
  }

  auto reply = ctx.client.Submit(req, ctx.timeout);
  if (!reply.ok()) return ctx.Fail(reply.error());
  const auto& refs = reply->jobs;
  if (!o.wait) {
    if (ctx.g.json) {
      ctx.PrintJson(JobRefsJson(refs));
    } else {
      for (const auto& r : refs) ctx.io.out << r.id << '\t' << r.dp << '\n';
    }
    return kExitOk;
  }
  if (!ctx.g.json) {
    for (const auto& r : refs) ctx.io.out << r.id << '\t' << r.dp << '\n';
    ctx.io.out.flush();
  }
  std::optional<Millis> wt;
  if (!o.wait_timeout.empty()) wt = ToDuration(o.wait_timeout);
  auto w = WaitForJobs(ctx, *follower, refs, wt, !ctx.g.json);
  if (!w.ok()) return ctx.Fail(w.error());
  if (ctx.g.json) ctx.PrintJson(JobsJson(w->jobs));
  ctx.io.out.flush();
  return WaitExitCode(ctx, *w, o.wait_timeout);
}

int RunStatus(Ctx& ctx, const StatusOptions& o) {
  msg::StatusRequest req;
  if (!o.job_id.empty()) req.job_id = o.job_id;
  if (!o.package.empty()) req.package = o.package;
  if (!o.dp.empty()) req.dp = o.dp;
  if (!o.state.empty()) {
    msg::JobState st;
    msg::ParseJobState(o.state, &st);
    req.state = st;
  }
  req.limit = static_cast<std::uint32_t>(ToUnsigned(o.limit));
  auto r = ctx.client.Status(req, ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  if (req.job_id && r->empty()) return ctx.Fail("job " + *req.job_id + " not found");
  if (ctx.g.json) {
    ctx.PrintJson(JobsJson(*r));
  } else if (req.job_id) {
    for (const auto& j : *r) PrintJobDetails(ctx.io.out, j, NowMs());
  } else {
    PrintJobsTable(ctx.io.out, *r, NowMs());
  }
  return kExitOk;
}

int TerminalColumns(int fd) {
  winsize ws{};
  if (fd >= 0 && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

int RunWatch(Ctx& ctx, const WatchOptions& o) {
  FollowOptions fo;
  fo.events_endpoint = ctx.g.events;
  if (!o.dp.empty()) fo.dp = o.dp;
  if (!o.package.empty()) fo.package = o.package;
  if (!o.since.empty()) fo.since = ToUnsigned(o.since);
  EventFollower follower(ctx.client, fo);
  if (auto s = follower.Start(); !s.ok()) return ctx.Fail(s.error());
  std::optional<ProgressView> view;
  if (ctx.io.out_is_tty && !ctx.g.json) view.emplace(ctx.io.out, TerminalColumns(ctx.io.out_fd));
  for (;;) {
    auto ev = follower.Next(Millis{1000});
    if (!ev.ok()) {
      if (view) view->Clear();
      return ctx.Fail(ev.error());
    }
    if (!ev->has_value()) continue;
    const auto& e = **ev;
    if (ctx.g.json) {
      ctx.io.out << DumpJson(EventJson(e), -1) << '\n';
    } else if (view) {
      view->OnEvent(e, NowMs());
    } else {
      ctx.io.out << EventLine(e, NowMs()) << '\n';
    }
    ctx.io.out.flush();
    if (!ctx.io.out) return kExitError;  // stdout closed (e.g. a pipe reader went away)
  }
}

int RunVerify(Ctx& ctx, const VerifyOptions& o) {
  msg::VerifyRequest req;
  req.dp = o.dp;
  if (!o.package.empty()) req.package = o.package;
  req.repair = o.repair;
  std::optional<EventFollower> follower;
  if (!o.no_wait) {
    FollowOptions fo;
    fo.events_endpoint = ctx.g.events;
    fo.dp = o.dp;
    if (!o.package.empty()) fo.package = o.package;
    follower.emplace(ctx.client, fo);
    if (auto s = follower->Start(); !s.ok()) return ctx.Fail(s.error());
  }
  auto r = ctx.client.Verify(req, ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  std::vector<msg::JobRef> refs;
  for (const auto& j : *r) refs.push_back({j.id, j.dp});
  if (o.no_wait) {
    if (ctx.g.json) {
      ctx.PrintJson(JobsJson(*r));
    } else {
      for (const auto& ref : refs) ctx.io.out << ref.id << '\t' << ref.dp << '\n';
    }
    return kExitOk;
  }
  std::optional<Millis> wt;
  if (!o.wait_timeout.empty()) wt = ToDuration(o.wait_timeout);
  auto w = WaitForJobs(ctx, *follower, refs, wt, false);
  if (!w.ok()) return ctx.Fail(w.error());
  if (ctx.g.json) {
    ctx.PrintJson(JobsJson(w->jobs));
  } else {
    bool first = true;
    for (const auto& j : w->jobs) {
      if (!first) ctx.io.out << '\n';
      first = false;
      PrintJobDetails(ctx.io.out, j, NowMs());
    }
  }
  ctx.io.out.flush();
  return WaitExitCode(ctx, *w, o.wait_timeout);
}

int RunWorkers(Ctx& ctx) {
  auto r = ctx.client.Workers(ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  if (ctx.g.json) {
    json a = json::array();
    for (const auto& w : *r) a.push_back(WorkerJson(w));
    ctx.PrintJson(a);
  } else {
    PrintWorkersTable(ctx.io.out, *r, NowMs());
  }
  return kExitOk;
}

int RunDead(Ctx& ctx, const std::string& limit) {
  auto r = ctx.client.Dead(static_cast<std::uint32_t>(ToUnsigned(limit)), ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  if (ctx.g.json) {
    ctx.PrintJson(JobsJson(*r));
  } else {
    PrintJobsTable(ctx.io.out, *r, NowMs());
  }
  return kExitOk;
}

int RunRetryOrCancel(Ctx& ctx, const std::string& job_id, bool retry) {
  auto r = retry ? ctx.client.Retry(job_id, ctx.timeout) : ctx.client.Cancel(job_id, ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  if (ctx.g.json) {
    ctx.PrintJson(JobsJson(*r));
  } else {
    for (const auto& j : *r) ctx.io.out << WaitLine(j, NowMs()) << '\n';
  }
  return kExitOk;
}

int RunStats(Ctx& ctx) {
  auto r = ctx.client.Stats(ctx.timeout);
  if (!r.ok()) return ctx.Fail(r.error());
  if (ctx.g.json) {
    ctx.PrintJson(StatsJson(*r));
  } else {
    PrintStats(ctx.io.out, *r, NowMs());
  }
  return kExitOk;
}

}  // namespace

int RunDespoolctl(int argc, const char* const* argv, Io io) {
  Ctx ctx{io, {}, kDefaultTimeout, Client(), ""};
  Globals& g = ctx.g;
  CLI::App app{"despoolctl: publish packages to distribution points, watch and operate despool", "despoolctl"};
  app.fallthrough();  // global flags are accepted after the command too
  CommonOptions common;
  AddCommonOptions(app, common);
  app.require_subcommand(1);
  app.add_option("--broker", g.broker, "Broker frontend endpoint")->type_name("EP")->capture_default_str();
  app.add_option("--events", g.events, "Broker events endpoint (watch, --wait)")->type_name("EP")->capture_default_str();
  app.add_flag("--json", g.json, "Machine-readable output (see docs/despoolctl.md)");
  app.add_option("--timeout", g.timeout, "Bound on each request to the broker")
      ->check(Quiet(DurationValidator()))->type_name("DURATION")
      ->capture_default_str();
  app.add_option("--curve-server-key", g.curve_server_key, "The broker's CURVE public key file (docs/security.md)")
      ->type_name("FILE");
  app.add_option("--curve-key", g.curve_key, "Our CURVE secret key file (mode 0600)")->type_name("FILE");

  const std::uint64_t kU32 = std::numeric_limits<std::uint32_t>::max();
  auto pkg_check = NameValidator(&ValidatePackageId);
  auto dp_check = NameValidator(&ValidateDpName);
  auto group_check = NameValidator(&ValidateDpGroupName);
  auto job_check = NameValidator(&ValidateJobId);

  SubmitOptions so;
  auto* submit = app.add_subcommand("submit", "Publish a package version to DPs (prints JOB_ID<TAB>DP lines)");
  auto* o_package = submit->add_option("--package", so.package, "Package id")->check(pkg_check)->type_name("ID");
  auto* o_version = submit->add_option("--version", so.version, "Version (0 .. 2^53-1)")->check(Quiet(UnsignedValidator()))->type_name("N")->check(AtMost(kMaxVersion));
  auto* o_source = submit->add_option("--source", so.source, "Source directory (absolute on the worker hosts)")->type_name("DIR");
  submit->add_option("--dp", so.dps, "Target DP (repeatable)")->check(dp_check)->type_name("NAME");
  submit->add_option("--dp-group", so.dp_groups, "Target DP group (repeatable)")->check(group_check)->type_name("GROUP");
  submit->add_flag("--wait", so.wait, "Wait until every job ended and report each outcome");
  submit->add_option("--wait-timeout", so.wait_timeout, "Give up waiting after this long (exit 4)")
      ->check(Quiet(DurationValidator()))->type_name("DURATION");
  submit->add_option("--retry-base", so.retry_base, "First retry delay after a deferral (default 30s)")
      ->check(Quiet(DurationValidator()))->type_name("DURATION");
  submit->add_option("--retry-max", so.retry_max, "Longest retry delay (default 1h)")->check(Quiet(DurationValidator()))->type_name("DURATION");
  submit->add_option("--max-attempts", so.max_attempts, "Attempts before on-exhausted applies (default 10)")
      ->check(Quiet(UnsignedValidator()))->type_name("N")->check(AtMost(kU32));
  submit->add_option("--on-exhausted", so.on_exhausted, "What to do when attempts run out")->type_name("dead|force")->check(CLI::IsMember({"dead", "force"}));
  submit->add_flag("--checksum", so.checksum, "Compare every file's content, not size and mtime");
  auto* o_file = submit->add_option("--file", so.file, "Instructions file (TOML, [[instruction]] tables)")
                     ->check(Quiet(CLI::ExistingFile))->type_name("FILE");
  o_file->excludes(o_package)->excludes(o_version)->excludes(o_source);

  StatusOptions sto;
  auto* status = app.add_subcommand("status", "Show jobs (one job with JOB_ID)");
  status->add_option("JOB_ID", sto.job_id, "Job id")->check(job_check)->type_name("JOB_ID");
  status->add_option("--package", sto.package, "Only this package")->check(pkg_check)->type_name("ID");
  status->add_option("--dp", sto.dp, "Only this DP")->check(dp_check)->type_name("NAME");
  status->add_option("--state", sto.state, "Only this state")->type_name("STATE")
      ->check(CLI::IsMember({"queued", "running", "deferred", "applied", "up-to-date", "superseded", "cancelled", "dead"}));
  status->add_option("--limit", sto.limit, "At most N jobs (0 = all)")->check(Quiet(UnsignedValidator()))->type_name("N")->check(AtMost(kU32))->capture_default_str();

  WatchOptions wo;
  auto* watch = app.add_subcommand("watch", "Follow live events (progress bars on a terminal)");
  watch->add_option("--dp", wo.dp, "Only this DP")->check(dp_check)->type_name("NAME");
  watch->add_option("--package", wo.package, "Only this package")->check(pkg_check)->type_name("ID");
  watch->add_option("--since", wo.since, "Replay stored events after SEQ first")->check(Quiet(UnsignedValidator()))->type_name("N")->check(AtMost(~std::uint64_t{0}));

  VerifyOptions vo;
  auto* verify = app.add_subcommand("verify", "Check live packages against their manifests");
  verify->add_option("--dp", vo.dp, "DP to verify")->check(dp_check)->type_name("NAME")->required();
  verify->add_option("--package", vo.package, "Only this package")->check(pkg_check)->type_name("ID");
  verify->add_flag("--repair", vo.repair, "Restore damaged packages from their source");
  verify->add_flag("--no-wait", vo.no_wait, "Print the verify jobs and return without waiting for reports");
  verify->add_option("--wait-timeout", vo.wait_timeout, "Give up waiting after this long (exit 4)")
      ->check(Quiet(DurationValidator()))->type_name("DURATION");

  auto* workers = app.add_subcommand("workers", "List connected workers");
  std::string dead_limit = "1000";
  auto* dead = app.add_subcommand("dead", "List dead jobs");
  dead->add_option("--limit", dead_limit, "At most N jobs (0 = all)")->check(Quiet(UnsignedValidator()))->type_name("N")->check(AtMost(kU32))->capture_default_str();
  std::string retry_id, cancel_id;
  auto* retry = app.add_subcommand("retry", "Requeue a dead job (attempts reset to 0)");
  retry->add_option("JOB_ID", retry_id, "Job id")->required()->check(job_check)->type_name("JOB_ID");
  auto* cancel = app.add_subcommand("cancel", "Cancel a job that has not ended");
  cancel->add_option("JOB_ID", cancel_id, "Job id")->required()->check(job_check)->type_name("JOB_ID");
  auto* stats = app.add_subcommand("stats", "Queue and DP figures");
  std::string keygen_out;
  auto* keygen = app.add_subcommand("keygen", "Write a new CURVE key pair: PREFIX.key (secret, 0600), PREFIX.pub");
  keygen->add_option("--out", keygen_out, "Path prefix of the two files")->required()->type_name("PREFIX");

  return RunCli(app, argc, argv, [&]() -> int {
    try {
      if (*submit && so.file.empty()) {
        if (o_package->count() == 0 || o_version->count() == 0 || o_source->count() == 0) {
          throw UsageError{"submit needs --package, --version and --source (or --file)"};
        }
        if (so.dps.empty() && so.dp_groups.empty()) throw UsageError{"submit needs --dp or --dp-group"};
      }
      if (*submit && !so.wait_timeout.empty() && !so.wait) throw UsageError{"--wait-timeout needs --wait"};
      if (!common.config_path.empty()) ApplyConfig(common.config_path, g, app);
    } catch (const UsageError& e) {
      io.err << "despoolctl: " << e.message << '\n';
      return kExitUsage;
    }
    auto log_options = ResolveLogOptions(common, g.log_level, g.log_format);
    if (!log_options.ok()) {
      io.err << "despoolctl: " << log_options.error().message << '\n';
      return kExitUsage;
    }
    if (auto s = SetupLogging(*log_options); !s.ok()) {
      io.err << "despoolctl: " << s.error().message << '\n';
      return kExitError;
    }
    ctx.timeout = ToDuration(g.timeout);
    if (ctx.timeout.count() == 0) {
      io.err << "despoolctl: --timeout must be greater than 0\n";
      return kExitUsage;
    }
    ctx.client.set_default_timeout(ctx.timeout);
    if (*keygen) {
      auto pair = GenerateCurveKeyPair();
      despool::Status written = pair.ok() ? WriteCurveKeyFiles(keygen_out, *pair) : despool::Status(pair.error());
      if (!written.ok()) {
        io.err << "despoolctl: keygen: " << written.error().message << '\n';
        return kExitError;
      }
      io.out << pair->public_key << '\n';
      return kExitOk;
    }
    if (auto curve = LoadCurveClientConfig(g.curve_server_key, g.curve_key); curve.ok()) {
      ctx.client.set_curve(std::move(curve).value());
    } else {
      io.err << "despoolctl: " << curve.error().message << '\n';
      return kExitUsage;
    }
    if (auto s = ctx.client.Connect(g.broker); !s.ok()) {
      io.err << "despoolctl: " << s.error().message << '\n';
      return kExitUsage;
    }
    try {
      if (*submit) return ctx.command = "submit", RunSubmit(ctx, so);
      if (*status) return ctx.command = "status", RunStatus(ctx, sto);
      if (*watch) return ctx.command = "watch", RunWatch(ctx, wo);
      if (*verify) return ctx.command = "verify", RunVerify(ctx, vo);
      if (*workers) return ctx.command = "workers", RunWorkers(ctx);
      if (*dead) return ctx.command = "dead", RunDead(ctx, dead_limit);
      if (*retry) return ctx.command = "retry", RunRetryOrCancel(ctx, retry_id, true);
      if (*cancel) return ctx.command = "cancel", RunRetryOrCancel(ctx, cancel_id, false);
      if (*stats) return ctx.command = "stats", RunStats(ctx);
    } catch (const UsageError& e) {
      io.err << "despoolctl: " << ctx.command << ": " << e.message << '\n';
      return kExitUsage;
    } catch (const std::exception& e) {
      return ctx.Fail(e.what());
    }
    return kExitUsage;
  }, io.out, io.err);
}

}  // namespace despool::ctl
