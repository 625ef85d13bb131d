#include "despool/workers/service/executor.h"

#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <exception>

#include "despool/common/names.h"

namespace despool::workers::service {
namespace {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

msg::ApplyStats ToApplyStats(const RefreshStats& s) {
  msg::ApplyStats a;
  a.files_total = s.files_total;
  a.files_copied = s.files_copied;
  a.files_linked = s.files_linked;
  a.files_removed = s.files_removed;
  a.bytes_copied = s.bytes_copied;
  a.bytes_linked = s.bytes_linked;
  a.duration_ms = static_cast<std::uint64_t>(duration_cast<milliseconds>(s.total).count());
  a.reused_staging = s.reused_staging;
  return a;
}

std::string Prefixed(const std::string& prefix, const std::string& path) {
  return prefix.empty() ? path : prefix + "/" + path;
}

void NoteEngineWork(const RefreshOutcome& o, JobEffects* fx) {
  if (fx == nullptr) return;
  fx->refreshed = true;
  fx->refresh_ms += static_cast<std::uint64_t>(duration_cast<milliseconds>(o.stats.total).count());
  fx->bytes_copied += o.stats.bytes_copied;
  fx->bytes_linked += o.stats.bytes_linked;
  if (o.stats.in_use_check.count() > 0 || o.kind == OutcomeKind::kDeferred) {
    fx->inuse_checks += 1;
    fx->inuse_check_us += static_cast<std::uint64_t>(duration_cast<microseconds>(o.stats.in_use_check).count());
  }
}

// Adds a deferral's paths and holders (relative to the package dir; `prefix` = the package id
// for a verify over every package) to a result, capped, and every path to the effects.
void AddInUse(const RefreshOutcome& o, const std::string& prefix, msg::JobResult* r, JobEffects* fx) {
  for (const auto& p : o.in_use.in_use) {
    std::string rel = Prefixed(prefix, p);
    if (r->in_use.size() < kMaxResultPaths) r->in_use.push_back(rel);
    if (fx != nullptr) fx->in_use_all.push_back(std::move(rel));
  }
  for (const auto& h : o.in_use.holders) {
    if (r->holders.size() < kMaxResultPaths && ValidateRelativePath(h.path).ok()) {
      r->holders.push_back(msg::Holder{h.pid, h.command, Prefixed(prefix, h.path)});
    }
    if (fx != nullptr) fx->holders_all.push_back(InUseHolder{h.pid, h.command, Prefixed(prefix, h.path)});
  }
}

msg::JobResult Base(const msg::Dispatch& d, msg::Outcome outcome) {
  msg::JobResult r;
  r.job_id = d.job_id;
  r.attempt = d.attempt;
  r.outcome = outcome;
  return r;
}

msg::JobResult ErrorResult(const msg::Dispatch& d, msg::Outcome outcome, std::string message) {
  msg::JobResult r = Base(d, outcome);
  r.error = std::move(message);
  return r;
}

std::string OutcomeMessage(const RefreshOutcome& o) {
  if (!o.message.empty()) return o.message;
  if (!o.error.message.empty()) return o.error.message;
  return OutcomeKindName(o.kind);
}

msg::Progress ToMsgProgress(const Progress& p) {
  return msg::Progress{p.files_done, p.files_total, p.bytes_done, p.bytes_total};
}

RefreshOptions MakeOptions(const msg::Dispatch& d, const JobContext& c) {
  RefreshOptions o;
  o.checksum = d.checksum;
  o.force = d.force;
  o.rate_limiter = c.rate_limiter;
  o.lock_wait = c.lock_wait;
  return o;
}

void SortUnique(std::vector<std::string>* v) {
  std::sort(v->begin(), v->end());
  v->erase(std::unique(v->begin(), v->end()), v->end());
}

// verify (and repair) of one package; `prefix` is prepended to reported paths.
struct PackageVerify {
  enum class Kind { kClean, kFound, kRepaired, kDeferred, kRetryable, kPermanent, kCancelled } kind = Kind::kClean;
  msg::VerifyReport report;
  std::string message;
};

msg::JobResult RunVerify(Engine& engine, const msg::Dispatch& d, const JobContext& c, const JobProgressFn& progress,
                         const CancelToken& cancel, JobEffects* fx) {
  std::vector<std::string> packages;
  const bool all = d.package.empty();
  if (all) {
    auto listed = InstalledPackages(c.dp_root);
    if (!listed.ok()) {
      return ErrorResult(d, msg::Outcome::kRetryableError, "cannot list installed packages: " + listed.error().message);
    }
    packages = std::move(listed).value();
  } else {
    packages.push_back(d.package);
  }
  msg::JobResult out = Base(d, msg::Outcome::kVerified);
  msg::VerifyReport report;
  msg::ApplyStats stats;
  bool repaired = false, deferred = false, retryable = false, permanent = false, cancelled = false;
  std::vector<std::string> errors;
  for (const std::string& pkg : packages) {
    if (cancel.cancelled()) {
      cancelled = true;
      break;
    }
    const std::string prefix = all ? pkg : std::string();
    auto verified = engine.Verify(c.dp_root, pkg);
    if (!verified.ok()) {
      if (verified.error().code == ErrorCode::kNotFound) {
        if (all) continue;  // removed since listed
        permanent = true;
        errors.push_back("package '" + pkg + "' is not installed on DP '" + d.dp + "'");
      } else {
        retryable = true;
        errors.push_back("verify '" + pkg + "': " + verified.error().message);
      }
      continue;
    }
    const VerifyReport& v = verified.value();
    for (const auto& p : v.missing) report.missing.push_back(Prefixed(prefix, p));
    for (const auto& p : v.extra) report.extra.push_back(Prefixed(prefix, p));
    for (const auto& p : v.changed) report.changed.push_back(Prefixed(prefix, p));
    if (!d.repair || v.clean()) continue;
    RefreshOptions options = MakeOptions(d, c);
    ProgressFn engine_progress;
    if (progress) engine_progress = [&](const Progress& p) { progress(ToMsgProgress(p)); };
    RefreshOutcome o = engine.Repair(c.dp_root, pkg, options, engine_progress, cancel);
    NoteEngineWork(o, fx);
    switch (o.kind) {
      case OutcomeKind::kApplied: {
        repaired = true;
        const msg::ApplyStats s = ToApplyStats(o.stats);
        stats.files_total += s.files_total;
        stats.files_copied += s.files_copied;
        stats.files_linked += s.files_linked;
        stats.files_removed += s.files_removed;
        stats.bytes_copied += s.bytes_copied;
        stats.bytes_linked += s.bytes_linked;
        stats.duration_ms += s.duration_ms;
        if (!all && o.installed_version) out.installed_version = o.installed_version;
        break;
      }
      case OutcomeKind::kUpToDate:
        break;
      case OutcomeKind::kDeferred:
        deferred = true;
        AddInUse(o, prefix, &out, fx);
        if (o.suggested_delay.count() > 0) out.suggested_delay_ms = static_cast<std::uint64_t>(o.suggested_delay.count());
        errors.push_back("repair '" + pkg + "' deferred: " + OutcomeMessage(o));
        break;
      case OutcomeKind::kRetryableError:
        retryable = true;
        errors.push_back("repair '" + pkg + "': " + OutcomeMessage(o));
        break;
      case OutcomeKind::kPermanentError:
        permanent = true;
        errors.push_back("repair '" + pkg + "': " + OutcomeMessage(o));
        break;
      case OutcomeKind::kCancelled:
        cancelled = true;
        break;
    }
    if (cancelled) break;
  }
  SortUnique(&report.missing);
  SortUnique(&report.extra);
  SortUnique(&report.changed);
  auto cap = [](std::vector<std::string>* v) {
    if (v->size() > kMaxResultPaths) v->resize(kMaxResultPaths);
  };
  cap(&report.missing);
  cap(&report.extra);
  cap(&report.changed);
  out.report = std::move(report);
  std::string joined;
  for (const auto& e : errors) joined += (joined.empty() ? "" : "; ") + e;
  if (joined.size() > 4000) joined.resize(4000);
  if (cancelled) {
    out.outcome = msg::Outcome::kCancelled;
    out.error = joined.empty() ? std::string("cancelled") : joined;
  } else if (permanent) {
    out.outcome = msg::Outcome::kPermanentError;
    out.error = joined;
  } else if (retryable) {
    out.outcome = msg::Outcome::kRetryableError;
    out.error = joined;
  } else if (deferred) {
    out.outcome = msg::Outcome::kDeferred;
    out.error = joined;
  } else if (repaired) {
    out.outcome = msg::Outcome::kApplied;
    out.stats = stats;
  } else {
    out.outcome = msg::Outcome::kVerified;
  }
  if (out.outcome != msg::Outcome::kDeferred) {
    out.in_use.clear();
    out.holders.clear();
    if (fx != nullptr) {
      fx->in_use_all.clear();
      fx->holders_all.clear();
    }
  }
  return out;
}

}  // namespace

msg::JobResult ResultFromOutcome(const msg::Dispatch& d, const RefreshOutcome& o, JobEffects* fx) {
  msg::JobResult r = Base(d, msg::Outcome::kPermanentError);
  r.installed_version = o.installed_version;
  switch (o.kind) {
    case OutcomeKind::kApplied:
      r.outcome = msg::Outcome::kApplied;
      r.stats = ToApplyStats(o.stats);
      break;
    case OutcomeKind::kUpToDate:
      r.outcome = msg::Outcome::kUpToDate;
      break;
    case OutcomeKind::kDeferred:
      r.outcome = msg::Outcome::kDeferred;
      AddInUse(o, "", &r, fx);
      if (o.suggested_delay.count() > 0) r.suggested_delay_ms = static_cast<std::uint64_t>(o.suggested_delay.count());
      r.error = OutcomeMessage(o);
      break;
    case OutcomeKind::kRetryableError:
      r.outcome = msg::Outcome::kRetryableError;
      r.error = OutcomeMessage(o);
      break;
    case OutcomeKind::kPermanentError:
      r.outcome = msg::Outcome::kPermanentError;
      r.error = OutcomeMessage(o);
      break;
    case OutcomeKind::kCancelled:
      r.outcome = msg::Outcome::kCancelled;
      r.error = OutcomeMessage(o);
      break;
  }
  if (r.error && r.error->size() > 4000) r.error->resize(4000);
  return r;
}

msg::JobResult RunJob(Engine& engine, const msg::Dispatch& d, const JobContext& c, const JobProgressFn& progress,
                      const CancelToken& cancel, JobEffects* fx) {
  try {
    if (d.kind == msg::JobKind::kVerify) return RunVerify(engine, d, c, progress, cancel, fx);
    RefreshRequest req;
    req.dp_root = c.dp_root;
    req.package_id = d.package;
    req.version = d.version;
    req.source_dir = d.source;
    req.options = MakeOptions(d, c);
    ProgressFn engine_progress;
    if (progress) engine_progress = [&](const Progress& p) { progress(ToMsgProgress(p)); };
    RefreshOutcome o = engine.Refresh(req, engine_progress, cancel);
    NoteEngineWork(o, fx);
    return ResultFromOutcome(d, o, fx);
  } catch (const std::exception& e) {
    return ErrorResult(d, msg::Outcome::kRetryableError, std::string("internal error: ") + e.what());
  } catch (...) {
    return ErrorResult(d, msg::Outcome::kRetryableError, "internal error");
  }
}

Result<std::vector<std::string>> InstalledPackages(const std::string& dp_root) {
  const std::string dir = dp_root + "/.despool/state";
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return SysError("opendir " + dir, errno);
  }
  static constexpr std::string_view kSuffix = ".manifest";
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name.size() <= kSuffix.size() || name.substr(name.size() - kSuffix.size()) != kSuffix) continue;
    std::string pkg(name.substr(0, name.size() - kSuffix.size()));
    if (ValidatePackageId(pkg).ok()) out.push_back(std::move(pkg));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace despool::workers::service
