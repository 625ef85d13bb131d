#include "despool/broker/core.h"

#include <algorithm>
#include <charconv>
#include <limits>

#include "despool/broker/backoff.h"
#include "despool/common/logging.h"
#include "despool/common/names.h"

namespace despool::broker {
namespace {

using msg::JobState;

// Due retries moved to queued per Tick: each is a store read (~10-20 us), so a burst (a restart
// after a long stop finds every deferred job past due) must not stall the loop; the rest wait
// for the next round, which follows at once (NextDeadline is then in the past). Small enough
// that one Tick stays within a few milliseconds (lateness is measured at the Tick's time).
constexpr std::size_t kMaxDuePerTick = 256;

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) {
    if (!s.empty()) s += ", ";
    s += e;
  }
  return s;
}

}  // namespace

Core::Core(CoreOptions options, Store* store)
    : opts_(std::move(options)),
      store_(store),
      rng_(opts_.rng_seed != 0 ? opts_.rng_seed : std::random_device{}()) {
  if (opts_.orphan_grace_ms <= 0) {
    opts_.orphan_grace_ms = 2 * static_cast<std::int64_t>(opts_.liveness) * opts_.heartbeat_interval_ms;
  }
  for (const auto& dp : opts_.dps) NoteDp(dp);
  for (const auto& [group, members] : opts_.dp_groups) {
    for (const auto& dp : members) NoteDp(dp);
  }
  batch_.new_dps.clear();  // config DPs are not persisted as "seen"
}

// ---------------------------------------------------------------------------------------------
// Recovery

void Core::Recover(LoadedState st, std::int64_t now_ms) {
  if (!st.store_id.empty()) store_id_ = st.store_id;
  next_job_seq_ = std::max(next_job_seq_, st.next_job_seq);
  last_event_seq_ = std::max(last_event_seq_, st.last_event_seq);
  for (const auto& dp : st.dps) {
    if (known_dp_set_.insert(dp).second) known_dps_.push_back(dp);
  }
  for (auto& job : st.active_jobs) RecoverJob(std::move(job), now_ms);
  // The store counted every job, terminal ones included (RecoverJob's counts were partial).
  counts_ = st.jobs_by_state;
  dispatch_dirty_ = true;
}

void Core::RecoverJob(JobRecord job, std::int64_t now_ms) {
  next_job_seq_ = std::max(next_job_seq_, job.seq + 1);
  const std::string id = job.info.id;
  const JobState state = job.info.state;
  if (active_.count(id) != 0 || parked_.count(job.seq) != 0) return;
  job.counted_state = state;
  switch (state) {
    case JobState::kQueued:
      LaneFor(job).AddPending(job.seq);
      ready_order_[id] = ++ready_counter_;
      ready_[job.info.dp].insert({ready_counter_, id});
      break;
    case JobState::kDeferred: {
      // Parked straight away: only what the timers, hints and superseding need stays here.
      LaneFor(job).AddPending(job.seq);
      if (!job.info.next_attempt_at_ms) job.info.next_attempt_at_ms = now_ms;
      due_.push({*job.info.next_attempt_at_ms, job.seq});
      parked_.emplace(job.seq, ParkedOf(job));
      CountDelta(job.info.dp, state, +1);
      return;
    }
    case JobState::kRunning:
      // Its worker may still finish it and resend the result; give it time to reconnect.
      LaneFor(job).running = job.seq;
      orphans_[id] = now_ms + opts_.orphan_grace_ms;
      break;
    default:
      return;
  }
  CountDelta(job.info.dp, state, +1);
  active_.emplace(id, std::move(job));
}

// ---------------------------------------------------------------------------------------------
// Helpers

bool Core::IsKnownDp(const std::string& dp) const { return known_dp_set_.count(dp) != 0; }

void Core::NoteDp(const std::string& dp) {
  if (known_dp_set_.insert(dp).second) {
    known_dps_.push_back(dp);
    batch_.new_dps.push_back(dp);
  }
}

msg::ErrorReply Core::Err(msg::ErrorKind kind, std::string message) const {
  return msg::ErrorReply{kind, std::move(message)};
}

std::string Core::NewJobId() {
  const std::uint64_t seq = next_job_seq_++;
  batch_.next_job_seq = next_job_seq_;
  return store_id_ + "-" + std::to_string(seq);
}

void Core::Emit(JobRecord& r, std::int64_t now_ms) {
  r.info.updated_at_ms = now_ms;
  CountState(r);
  batch_.jobs[r.info.id] = r;
  msg::Event e;
  e.kind = msg::EventKind::kState;
  e.seq = ++last_event_seq_;
  e.at_ms = now_ms;
  e.job = r.info;
  batch_.events.push_back(std::move(e));  // published from the batch once committed
}

void Core::Unready(const std::string& id) {
  auto it = ready_order_.find(id);
  if (it == ready_order_.end()) return;
  auto a = active_.find(id);
  if (a != active_.end()) {
    auto q = ready_.find(a->second.info.dp);
    if (q != ready_.end()) {
      q->second.erase({it->second, id});
      if (q->second.empty()) ready_.erase(q);
    }
  }
  ready_order_.erase(it);
}

void Core::Enqueue(JobRecord& r, std::int64_t now_ms) {
  r.info.state = JobState::kQueued;
  r.info.next_attempt_at_ms.reset();
  r.info.worker.reset();
  Unready(r.info.id);
  ready_order_[r.info.id] = ++ready_counter_;
  ready_[r.info.dp].insert({ready_counter_, r.info.id});
  LaneFor(r).AddPending(r.seq);
  dispatch_dirty_ = true;
  Emit(r, now_ms);
}

void Core::Defer(JobRecord& r, std::int64_t due_ms, std::int64_t now_ms) {
  r.info.state = JobState::kDeferred;
  r.info.next_attempt_at_ms = due_ms;
  r.info.worker.reset();
  Unready(r.info.id);
  LaneFor(r).AddPending(r.seq);
  due_.push({due_ms, r.seq});
  Emit(r, now_ms);
  Park(active_.find(r.info.id));  // r is gone from here on
}

// A deferred job may wait for hours and there may be a million of them: memory keeps only what
// the timers and hints need; the full record is in the batch/store and reloaded when it moves.
void Core::Park(std::unordered_map<std::string, JobRecord>::iterator it) {
  parked_.emplace(it->second.seq, ParkedOf(it->second));
  active_.erase(it);
}

Core::Parked Core::ParkedOf(const JobRecord& r) {
  Parked p;
  p.due_ms = r.info.next_attempt_at_ms.value_or(0);
  p.version = r.info.version;
  p.attempt_token = r.attempt_token;
  p.attempts = r.info.attempts;
  p.released_step = r.released_step;
  p.kind = r.info.kind;
  return p;
}

JobRecord* Core::Active(const std::string& id) {
  if (auto it = active_.find(id); it != active_.end()) return &it->second;
  const auto seq = SeqOf(id);
  if (!seq) return nullptr;
  auto p = parked_.find(*seq);
  if (p == parked_.end()) return nullptr;
  auto full = LookupInactive(id);
  if (!full) {
    GetLogger("broker")->error("deferred job missing from the store job={}", id);
    return nullptr;
  }
  // Hints change the parked copy only; carry that over.
  full->released_step = p->second.released_step;
  full->info.next_attempt_at_ms = p->second.due_ms;
  parked_.erase(p);
  return &active_.emplace(id, std::move(*full)).first->second;
}

std::optional<std::pair<msg::JobKind, std::uint64_t>> Core::PendingVersion(JobSeq seq) const {
  if (auto p = parked_.find(seq); p != parked_.end()) return std::pair{p->second.kind, p->second.version};
  if (auto a = active_.find(IdOf(seq)); a != active_.end()) return std::pair{a->second.info.kind, a->second.info.version};
  return std::nullopt;
}

std::optional<Core::JobSeq> Core::SeqOf(const std::string& id) const {
  const std::size_t n = store_id_.size();
  if (id.size() <= n + 1 || id.compare(0, n, store_id_) != 0 || id[n] != '-' || id[n + 1] == '0') {
    return std::nullopt;
  }
  JobSeq seq = 0;
  const char* end = id.data() + id.size();
  auto [p, ec] = std::from_chars(id.data() + n + 1, end, seq);
  if (ec != std::errc() || p != end || seq == 0) return std::nullopt;
  return seq;
}

std::vector<Core::JobSeq> Core::Lane::Pending() const {
  std::vector<JobSeq> out;
  if (first_pending != 0) out.push_back(first_pending);
  out.insert(out.end(), more_pending.begin(), more_pending.end());
  return out;
}

void Core::Lane::AddPending(JobSeq seq) {
  if (first_pending == 0) {
    first_pending = seq;  // more_pending is empty whenever first_pending is
    return;
  }
  if (first_pending == seq || std::find(more_pending.begin(), more_pending.end(), seq) != more_pending.end()) return;
  more_pending.push_back(seq);
}

void Core::Lane::ErasePending(JobSeq seq) {
  if (first_pending == seq) {
    first_pending = 0;
    if (!more_pending.empty()) {
      first_pending = more_pending.back();
      more_pending.pop_back();
    }
  } else {
    auto it = std::find(more_pending.begin(), more_pending.end(), seq);
    if (it != more_pending.end()) more_pending.erase(it);
  }
  if (more_pending.empty()) std::vector<JobSeq>().swap(more_pending);
}

Core::Lane* Core::FindLane(const JobRecord& r) {
  const auto dp = names_.Find(r.info.dp);
  const auto package = names_.Find(r.info.package);
  if (!dp || !package) return nullptr;
  auto it = lanes_.find(LaneKey{*dp} << 32 | *package);
  return it == lanes_.end() ? nullptr : &it->second;
}

Core::Lane& Core::LaneFor(const JobRecord& r) {
  if (Lane* lane = FindLane(r)) return *lane;
  const LaneKey key = LaneKey{names_.Acquire(r.info.dp)} << 32 | names_.Acquire(r.info.package);
  return lanes_[key];
}

void Core::DropLaneIfIdle(const JobRecord& r) {
  const auto dp = names_.Find(r.info.dp);
  const auto package = names_.Find(r.info.package);
  if (!dp || !package) return;
  auto it = lanes_.find(LaneKey{*dp} << 32 | *package);
  if (it == lanes_.end() || it->second.running != 0 || it->second.HasPending()) return;
  lanes_.erase(it);
  names_.Release(*dp);
  names_.Release(*package);
}

void Core::CountState(JobRecord& r) {
  if (r.counted_state == r.info.state) return;
  if (r.counted_state) CountDelta(r.info.dp, *r.counted_state, -1);
  CountDelta(r.info.dp, r.info.state, +1);
  r.counted_state = r.info.state;
}

void Core::CountDelta(const std::string& dp, JobState state, int delta) {
  const auto i = static_cast<std::size_t>(state);
  if (i >= counts_.size()) return;
  auto add = [delta](std::uint64_t& c) { c = delta < 0 ? (c > 0 ? c - 1 : 0) : c + 1; };
  add(counts_[i]);
  if (i >= 3) return;  // queued, running, deferred are also counted per DP
  auto it = active_by_dp_.find(dp);
  if (it == active_by_dp_.end()) {
    if (delta < 0) return;
    it = active_by_dp_.emplace(dp, std::array<std::uint64_t, 3>{}).first;
  }
  add(it->second[i]);
  if (it->second == std::array<std::uint64_t, 3>{}) active_by_dp_.erase(it);
}

std::array<std::uint64_t, 3> Core::ActiveCounts(const std::string& dp) const {
  auto it = active_by_dp_.find(dp);
  return it == active_by_dp_.end() ? std::array<std::uint64_t, 3>{} : it->second;
}

void Core::ReleaseRunning(JobRecord& r) {
  const std::string& id = r.info.id;
  if (Lane* lane = FindLane(r); lane != nullptr && lane->running == r.seq) lane->running = 0;
  auto p = running_peer_.find(id);
  if (p != running_peer_.end()) {
    auto w = workers_.find(p->second);
    if (w != workers_.end()) w->second.running.erase(id);
    running_peer_.erase(p);
  }
  orphans_.erase(id);
  dispatch_dirty_ = true;
}

// Ends a job in a terminal state and drops it from memory (the batch keeps the final row).
void Core::Finish(const std::string& id, JobState state, std::int64_t now_ms) {
  if (Active(id) == nullptr) return;
  auto it = active_.find(id);
  JobRecord& r = it->second;
  if (r.info.state == JobState::kRunning) ReleaseRunning(r);
  Unready(id);
  if (Lane* lane = FindLane(r)) lane->ErasePending(r.seq);
  DropLaneIfIdle(r);
  r.info.state = state;
  r.info.next_attempt_at_ms.reset();
  r.cancel_reason = CancelReason::kNone;
  r.force_next = false;
  Emit(r, now_ms);
  active_.erase(it);
}

void Core::SendToWorker(const std::string& peer, msg::Body body) {
  // Anything sent counts as the interval's heartbeat (PROTOCOL.md 8.2).
  if (auto w = workers_.find(peer); w != workers_.end()) w->second.last_sent_ms = last_now_ms_;
  outbox_.push_back(ToWorker{peer, std::move(body)});
}

void Core::SendCancel(JobRecord& r) {
  auto p = running_peer_.find(r.info.id);
  if (p == running_peer_.end()) return;  // orphan: its worker is not connected
  SendToWorker(p->second, msg::CancelJob{r.info.id, r.attempt_token});
}

std::optional<JobRecord> Core::LookupInactive(const std::string& id) {
  auto b = batch_.jobs.find(id);
  if (b != batch_.jobs.end()) return b->second;
  if (in_flight_ != nullptr) {
    auto f = in_flight_->jobs.find(id);
    if (f != in_flight_->jobs.end()) return f->second;
  }
  if (store_ == nullptr) return std::nullopt;
  auto r = store_->GetJob(id);
  if (!r.ok() || !*r) return std::nullopt;
  JobRecord& found = **r;
  found.counted_state = found.info.state;  // as stored, it is counted in its stored state
  return std::move(found);
}

// ---------------------------------------------------------------------------------------------
// Admission and superseding

void Core::Admit(JobRecord job, std::int64_t now_ms) {
  const std::string id = job.info.id;
  if (job.info.kind == msg::JobKind::kRefresh) {
    const std::vector<JobSeq> pending = LaneFor(job).Pending();
    JobSeq running = LaneFor(job).running;
    // Something newer already pending or running: this one is obsolete from the start.
    // (Parked jobs answer from their compact form: nothing is reloaded to decide.)
    bool obsolete = false;
    std::vector<JobSeq> replaced;
    for (JobSeq seq : pending) {
      const auto pv = PendingVersion(seq);
      if (!pv || pv->first != msg::JobKind::kRefresh) continue;
      if (pv->second > job.info.version) obsolete = true;
      if (pv->second <= job.info.version) replaced.push_back(seq);
    }
    if (running != 0) {
      const JobRecord& run = active_.at(IdOf(running));
      if (run.info.kind == msg::JobKind::kRefresh && run.info.version > job.info.version &&
          run.cancel_reason != CancelReason::kOperator) {
        obsolete = true;
      }
    }
    if (obsolete) {
      job.info.state = JobState::kSuperseded;
      active_.emplace(id, std::move(job));
      Finish(id, JobState::kSuperseded, now_ms);
      return;
    }
    for (JobSeq seq : replaced) Finish(IdOf(seq), JobState::kSuperseded, now_ms);
    if (running != 0) {
      JobRecord& run = active_.at(IdOf(running));
      if (run.info.kind == msg::JobKind::kRefresh && run.info.version < job.info.version &&
          run.cancel_reason == CancelReason::kNone) {
        run.cancel_reason = CancelReason::kSuperseded;
        batch_.jobs[run.info.id] = run;  // persist the pending cancel (no state change)
        SendCancel(run);
      }
    }
  }
  auto [it, inserted] = active_.emplace(id, std::move(job));
  (void)inserted;
  Enqueue(it->second, now_ms);
}

msg::Body Core::Submit(const msg::SubmitRequest& req, std::int64_t now_ms) {
  if (req.instructions.empty()) return Err(msg::ErrorKind::kBadRequest, "submit carries no instruction");
  struct Planned {
    const msg::Instruction* in;
    ResolvedPolicy policy;
    std::vector<std::string> dps;
  };
  std::vector<Planned> plan;
  std::vector<std::string> unknown;
  for (const auto& in : req.instructions) {
    Planned p{&in, {}, {}};
    if (in.kind == msg::JobKind::kRefresh || !in.package.empty()) {
      if (auto st = ValidatePackageId(in.package); !st.ok()) {
        return Err(msg::ErrorKind::kBadRequest, st.error().message);
      }
    }
    if (in.kind == msg::JobKind::kRefresh) {
      if (auto st = ValidateVersion(in.version); !st.ok()) return Err(msg::ErrorKind::kBadRequest, st.error().message);
      if (auto st = ValidateSourcePath(in.source); !st.ok()) return Err(msg::ErrorKind::kBadRequest, st.error().message);
    }
    std::string perr;
    if (!ResolvePolicy(in.policy, opts_.default_policy, &p.policy, &perr)) {
      return Err(msg::ErrorKind::kBadRequest, perr);
    }
    auto add = [&](const std::string& dp) {
      if (std::find(p.dps.begin(), p.dps.end(), dp) == p.dps.end()) p.dps.push_back(dp);
    };
    for (const auto& dp : in.dps) {
      if (auto st = ValidateDpName(dp); !st.ok()) return Err(msg::ErrorKind::kBadRequest, st.error().message);
      if (!IsKnownDp(dp)) {
        if (std::find(unknown.begin(), unknown.end(), dp) == unknown.end()) unknown.push_back(dp);
        continue;
      }
      add(dp);
    }
    for (const auto& g : in.dp_groups) {
      auto it = opts_.dp_groups.find(g);
      if (it == opts_.dp_groups.end()) {
        std::string name = "group " + g;
        if (std::find(unknown.begin(), unknown.end(), name) == unknown.end()) unknown.push_back(name);
        continue;
      }
      for (const auto& dp : it->second) add(dp);
    }
    if (p.dps.empty() && unknown.empty()) {
      return Err(msg::ErrorKind::kBadRequest, "instruction names no DP (give --dp or --dp-group)");
    }
    plan.push_back(std::move(p));
  }
  if (!unknown.empty()) {
    return Err(msg::ErrorKind::kUnknownDp, "unknown DP" + std::string(unknown.size() > 1 ? "s" : "") + ": " +
                                               Join(unknown) + " (known: " + Join(known_dps_) + ")");
  }
  msg::SubmitReply reply;
  for (const auto& p : plan) {
    for (const auto& dp : p.dps) {
      JobRecord r;
      r.info.id = NewJobId();
      r.seq = next_job_seq_ - 1;
      r.info.kind = p.in->kind;
      r.info.package = p.in->package;
      r.info.version = p.in->kind == msg::JobKind::kRefresh ? p.in->version : 0;
      r.info.source = p.in->source;
      r.info.dp = dp;
      r.info.max_attempts = p.policy.max_attempts;
      r.info.created_at_ms = now_ms;
      r.policy = p.policy;
      r.repair = p.in->repair;
      r.checksum = p.in->checksum;
      reply.jobs.push_back({r.info.id, dp});
      Admit(std::move(r), now_ms);
    }
  }
  return reply;
}

msg::Body Core::Verify(const msg::VerifyRequest& req, std::int64_t now_ms) {
  if (auto st = ValidateDpName(req.dp); !st.ok()) return Err(msg::ErrorKind::kBadRequest, st.error().message);
  if (!IsKnownDp(req.dp)) {
    return Err(msg::ErrorKind::kUnknownDp, "unknown DP: " + req.dp + " (known: " + Join(known_dps_) + ")");
  }
  if (req.package) {
    if (auto st = ValidatePackageId(*req.package); !st.ok()) {
      return Err(msg::ErrorKind::kBadRequest, st.error().message);
    }
  }
  JobRecord r;
  r.info.id = NewJobId();
  r.seq = next_job_seq_ - 1;
  r.info.kind = msg::JobKind::kVerify;
  r.info.package = req.package.value_or("");
  r.info.dp = req.dp;
  r.info.created_at_ms = now_ms;
  r.policy = opts_.default_policy;
  r.info.max_attempts = r.policy.max_attempts;
  r.repair = req.repair;
  const std::string id = r.info.id;
  Admit(std::move(r), now_ms);
  msg::JobsReply reply;
  reply.jobs.push_back(batch_.jobs.at(id).info);
  return reply;
}

msg::Body Core::Retry(const msg::RetryRequest& req, std::int64_t now_ms) {
  if (auto seq = SeqOf(req.job_id); seq && parked_.count(*seq) != 0) {
    return Err(msg::ErrorKind::kConflict, "job " + req.job_id + " is deferred; only dead jobs can be retried");
  }
  if (auto it = active_.find(req.job_id); it != active_.end()) {
    return Err(msg::ErrorKind::kConflict, "job " + req.job_id + " is " + msg::ToString(it->second.info.state) +
                                              "; only dead jobs can be retried");
  }
  auto found = LookupInactive(req.job_id);
  if (!found) return Err(msg::ErrorKind::kNotFound, "unknown job id " + req.job_id);
  if (found->info.state != JobState::kDead) {
    return Err(msg::ErrorKind::kConflict, "job " + req.job_id + " is " + msg::ToString(found->info.state) +
                                              "; only dead jobs can be retried");
  }
  JobRecord r = std::move(*found);
  r.info.attempts = 0;
  r.force_next = false;
  r.forced_running = false;
  r.cancel_reason = CancelReason::kNone;
  r.released_step = 0;
  r.info.in_use.clear();
  r.info.holders.clear();
  r.info.worker.reset();
  Admit(std::move(r), now_ms);
  msg::JobsReply reply;
  reply.jobs.push_back(batch_.jobs.at(req.job_id).info);
  return reply;
}

msg::Body Core::Cancel(const msg::CancelRequest& req, std::int64_t now_ms) {
  (void)Active(req.job_id);  // unpark a deferred job
  auto it = active_.find(req.job_id);
  if (it == active_.end()) {
    auto found = LookupInactive(req.job_id);
    if (!found) return Err(msg::ErrorKind::kNotFound, "unknown job id " + req.job_id);
    return Err(msg::ErrorKind::kConflict,
               "job " + req.job_id + " already ended " + msg::ToString(found->info.state));
  }
  JobRecord& r = it->second;
  msg::JobsReply reply;
  if (r.info.state == JobState::kRunning) {
    // The worker decides: it ends cancelled, or applied if its switch already happened.
    r.cancel_reason = CancelReason::kOperator;
    batch_.jobs[r.info.id] = r;
    SendCancel(r);
    reply.jobs.push_back(r.info);
    if (running_peer_.count(r.info.id) == 0) {
      // Orphan (no connected worker holds it): nothing can still apply it from our side.
      Finish(req.job_id, JobState::kCancelled, now_ms);
      reply.jobs.back() = batch_.jobs.at(req.job_id).info;
    }
    return reply;
  }
  Finish(req.job_id, JobState::kCancelled, now_ms);
  reply.jobs.push_back(batch_.jobs.at(req.job_id).info);
  return reply;
}

// ---------------------------------------------------------------------------------------------
// Workers

void Core::OnWorkerMessage(const std::string& peer, msg::Body body, std::int64_t now_ms) {
  last_now_ms_ = now_ms;
  auto w = workers_.find(peer);
  if (w != workers_.end()) w->second.last_seen_ms = now_ms;

  if (auto* reg = std::get_if<msg::Register>(&body)) {
    if (w != workers_.end()) {
      // Same routing id registering again: the worker restarted or lost us. Its runs may still
      // finish and report, so they get the orphan grace rather than an immediate requeue.
      for (const auto& id : w->second.running) {
        running_peer_.erase(id);
        orphans_[id] = now_ms + opts_.orphan_grace_ms;
      }
      workers_.erase(w);
    }
    Worker nw;
    nw.name = reg->name;
    nw.dps = reg->dps;
    nw.dps_sorted = reg->dps;
    std::sort(nw.dps_sorted.begin(), nw.dps_sorted.end());
    nw.capacity = std::max<std::uint32_t>(1, reg->capacity);
    nw.connected_at_ms = now_ms;
    nw.last_seen_ms = now_ms;
    nw.last_sent_ms = now_ms;
    for (const auto& dp : reg->dps) NoteDp(dp);
    workers_.emplace(peer, std::move(nw));
    SendToWorker(peer, msg::RegisterAck{static_cast<std::uint32_t>(opts_.heartbeat_interval_ms)});
    dispatch_dirty_ = true;
    return;
  }
  if (w == workers_.end() && !std::holds_alternative<msg::Disconnect>(body)) {
    // PROTOCOL.md 8.1: anything but register from an unknown routing id (after a broker restart
    // or a missed liveness) is answered "register again". Results and hints are still used.
    SendToWorker(peer, msg::Disconnect{"unknown worker: register again"});
  }
  if (auto* res = std::get_if<msg::JobResult>(&body)) {
    // Results are accepted from any peer: a worker resends unacknowledged results after a
    // broker restart, possibly before it registered again.
    HandleResult(peer, *res, now_ms);
    return;
  }
  if (auto* hint = std::get_if<msg::ReleaseHint>(&body)) {
    // Accepted from any peer: a hint only shortens a wait the job already has, and at most
    // once per backoff step (released_step remembers the step already shortened).
    const auto seq = SeqOf(hint->job_id);
    if (auto p = seq ? parked_.find(*seq) : parked_.end(); p != parked_.end()) {
      Parked& pk = p->second;
      if (pk.attempt_token == hint->attempt && pk.released_step != pk.attempts) {
        pk.released_step = pk.attempts;
        pk.due_ms = now_ms;
        due_.push({now_ms, *seq});
      }
      return;
    }
    auto it = active_.find(hint->job_id);
    if (it != active_.end() && it->second.info.state == JobState::kDeferred &&
        it->second.attempt_token == hint->attempt && it->second.released_step != it->second.info.attempts) {
      it->second.released_step = it->second.info.attempts;
      it->second.info.next_attempt_at_ms = now_ms;
      due_.push({now_ms, it->second.seq});
    }
    return;
  }
  if (w == workers_.end()) return;
  if (auto* hb = std::get_if<msg::Heartbeat>(&body)) {
    if (hb->draining && !w->second.draining) {
      w->second.draining = true;  // a drain is final: the worker disconnects when done
      dispatch_dirty_ = true;
    }
    return;
  }
  if (auto* pr = std::get_if<msg::ProgressReport>(&body)) {
    auto it = active_.find(pr->job_id);
    if (it == active_.end() || it->second.attempt_token != pr->attempt ||
        it->second.info.state != JobState::kRunning) {
      return;
    }
    msg::Event e;
    e.kind = msg::EventKind::kProgress;
    e.seq = 0;
    e.at_ms = now_ms;
    e.job = it->second.info;
    e.progress = pr->progress;
    events_.push_back(std::move(e));
    return;
  }
  if (auto* d = std::get_if<msg::Disconnect>(&body)) {
    LoseWorker(peer, "worker disconnected: " + d->reason, now_ms);
    return;
  }
  // Anything else is not a worker message; the loop answers unknown types before this.
}

void Core::HandleResult(const std::string& peer, const msg::JobResult& res, std::int64_t now_ms) {
  SendToWorker(peer, msg::ResultAck{res.job_id, res.attempt});
  auto it = active_.find(res.job_id);
  const std::string worker_name = [&] {
    auto w = workers_.find(peer);
    return w != workers_.end() ? w->second.name : std::string();
  }();
  AttemptRecord a;
  a.job_id = res.job_id;
  a.attempt = res.attempt;
  a.worker = worker_name;
  a.ended_at_ms = now_ms;
  a.outcome = msg::ToString(res.outcome);
  a.error = res.error;
  a.in_use = res.in_use;
  if (it == active_.end() || it->second.info.state != JobState::kRunning ||
      it->second.attempt_token != res.attempt) {
    // Stale (a requeued or finished job): recorded, never moves the job. Duplicates of an
    // already processed result land here too.
    if (it == active_.end()) {
      auto found = LookupInactive(res.job_id);
      if (!found) return;
      if (found->attempt_token == res.attempt) return;  // duplicate of the result that ended it
    }
    a.outcome = "stale:" + a.outcome;
    batch_.attempts.push_back(std::move(a));
    return;
  }
  JobRecord& r = it->second;
  a.started_at_ms = r.started_at_ms;
  if (a.worker.empty() && r.info.worker) a.worker = *r.info.worker;
  batch_.attempts.push_back(std::move(a));
  ReleaseRunning(r);
  const CancelReason cancel = r.cancel_reason;
  const JobState cancelled_state = cancel == CancelReason::kSuperseded ? JobState::kSuperseded : JobState::kCancelled;
  switch (res.outcome) {
    case msg::Outcome::kApplied:
    case msg::Outcome::kVerified:
      r.info.in_use.clear();
      r.info.holders.clear();
      if (res.stats) r.info.stats = res.stats;
      if (res.report) r.info.report = res.report;
      Finish(res.job_id, JobState::kApplied, now_ms);
      return;
    case msg::Outcome::kUpToDate:
      r.info.in_use.clear();
      r.info.holders.clear();
      Finish(res.job_id, JobState::kUpToDate, now_ms);
      return;
    case msg::Outcome::kCancelled:
      if (cancel != CancelReason::kNone) {
        Finish(res.job_id, cancelled_state, now_ms);
      } else {
        // The worker gave the job up on its own (shutting down): run it again, no attempt spent.
        r.cancel_reason = CancelReason::kNone;
        Enqueue(r, now_ms);
      }
      return;
    case msg::Outcome::kDeferred:
    case msg::Outcome::kRetryableError:
    case msg::Outcome::kPermanentError:
      if (cancel != CancelReason::kNone) {
        if (res.error) r.info.last_error = res.error;
        Finish(res.job_id, cancelled_state, now_ms);
        return;
      }
      HandleFailure(r, res, now_ms);
      return;
  }
}

void Core::HandleFailure(JobRecord& r, const msg::JobResult& res, std::int64_t now_ms) {
  r.info.attempts += 1;
  const bool deferred = res.outcome == msg::Outcome::kDeferred;
  if (deferred) {
    r.info.in_use = res.in_use;
    r.info.holders = res.holders;
    r.info.last_error = res.error ? *res.error
                                  : std::to_string(res.in_use.size()) + " file(s) in use";
  } else {
    r.info.in_use.clear();
    r.info.holders.clear();
    r.info.last_error = res.error.value_or(msg::ToString(res.outcome));
  }
  if (res.outcome == msg::Outcome::kPermanentError) {
    Finish(r.info.id, JobState::kDead, now_ms);
    return;
  }
  if (r.forced_running) {
    r.forced_running = false;
    r.info.last_error = "forced attempt failed: " + r.info.last_error.value_or("");
    Finish(r.info.id, JobState::kDead, now_ms);
    return;
  }
  if (r.info.attempts >= r.policy.max_attempts) {
    if (r.policy.on_exhausted == msg::OnExhausted::kForce) {
      r.force_next = true;
      Enqueue(r, now_ms);
    } else {
      Finish(r.info.id, JobState::kDead, now_ms);
    }
    return;
  }
  const std::uint64_t delay =
      BackoffDelay(r.policy.retry_base_ms, r.policy.retry_max_ms, r.info.attempts, rng_);
  Defer(r, now_ms + static_cast<std::int64_t>(delay), now_ms);
}

void Core::RequeueLost(const std::string& id, const std::string& why, std::int64_t now_ms) {
  auto it = active_.find(id);
  if (it == active_.end() || it->second.info.state != JobState::kRunning) return;
  JobRecord& r = it->second;
  AttemptRecord a;
  a.job_id = id;
  a.attempt = r.attempt_token;
  a.worker = r.info.worker.value_or("");
  a.started_at_ms = r.started_at_ms;
  a.ended_at_ms = now_ms;
  a.outcome = "lost";
  a.error = why;
  batch_.attempts.push_back(std::move(a));
  ReleaseRunning(r);
  switch (r.cancel_reason) {
    case CancelReason::kSuperseded:
      Finish(id, JobState::kSuperseded, now_ms);
      return;
    case CancelReason::kOperator:
      Finish(id, JobState::kCancelled, now_ms);
      return;
    case CancelReason::kNone:
      break;
  }
  // A forced run that was lost gets its forced run again; attempts are not counted.
  if (r.forced_running) {
    r.forced_running = false;
    r.force_next = true;
  }
  Enqueue(r, now_ms);
}

void Core::LoseWorker(const std::string& peer, const std::string& why, std::int64_t now_ms) {
  auto w = workers_.find(peer);
  if (w == workers_.end()) return;
  GetLogger("broker")->warn("worker lost worker={} reason={} running={}", LogQuote(w->second.name), LogQuote(why),
                            w->second.running.size());
  const std::vector<std::string> running(w->second.running.begin(), w->second.running.end());
  const std::string name = w->second.name;
  workers_.erase(w);
  for (const auto& id : running) RequeueLost(id, why + " (" + name + ")", now_ms);
  dispatch_dirty_ = true;
}

// ---------------------------------------------------------------------------------------------
// Timers and dispatch

void Core::Tick(std::int64_t now_ms) {
  last_now_ms_ = now_ms;
  // Announce what comes due soon, so its rows can be read ahead (warm_ahead_ms > 0).
  if (opts_.warm_ahead_ms > 0) {
    std::size_t announced = 0;
    while (!due_.empty() && due_.top().first <= now_ms + opts_.warm_ahead_ms && announced < 4 * kMaxDuePerTick) {
      const auto entry = due_.top();
      due_.pop();
      ++announced;
      // (Already due: this Tick reads it anyway.)
      if (auto p = parked_.find(entry.second);
          entry.first > now_ms && p != parked_.end() && p->second.due_ms == entry.first) {
        warm_.push_back(IdOf(entry.second));
      }
      // Nearly always at the back; a hint or a short deferral can land earlier.
      soon_.insert(std::upper_bound(soon_.begin(), soon_.end(), entry), entry);
    }
  }
  // Due retries (at most kMaxDuePerTick; the rest next round), the earliest of soon_ and due_.
  std::size_t moved = 0;
  while (moved < kMaxDuePerTick) {
    std::pair<std::int64_t, JobSeq> entry;
    if (!soon_.empty() && (due_.empty() || soon_.front() <= due_.top())) {
      if (soon_.front().first > now_ms) break;
      entry = soon_.front();
      soon_.pop_front();
    } else if (!due_.empty() && due_.top().first <= now_ms) {
      entry = due_.top();
      due_.pop();
    } else {
      break;
    }
    const auto [due, seq] = entry;
    const std::string id = IdOf(seq);
    if (auto p = parked_.find(seq); p != parked_.end()) {
      if (p->second.due_ms != due) continue;  // rescheduled (a hint)
      if (Active(id) == nullptr) continue;
    }
    auto it = active_.find(id);
    if (it == active_.end() || it->second.info.state != JobState::kDeferred) continue;
    if (it->second.info.next_attempt_at_ms.value_or(due) != due) continue;  // rescheduled
    ++moved;
    lateness_.Add(now_ms - due);
    Enqueue(it->second, now_ms);
    it->second.came_due_ms = due;
  }
  // Liveness.
  const std::int64_t expiry = opts_.heartbeat_interval_ms * static_cast<std::int64_t>(opts_.liveness);
  std::vector<std::string> lost;
  for (auto& [peer, w] : workers_) {
    if (now_ms - w.last_seen_ms > expiry) {
      lost.push_back(peer);
      continue;
    }
    if (now_ms - w.last_sent_ms >= opts_.heartbeat_interval_ms) {
      w.last_sent_ms = now_ms;
      msg::Heartbeat hb;
      hb.running = static_cast<std::uint32_t>(w.running.size());
      SendToWorker(peer, hb);
    }
  }
  for (const auto& peer : lost) LoseWorker(peer, "missed heartbeats", now_ms);
  // Orphaned runs whose worker never came back with a result.
  std::vector<std::string> expired;
  for (const auto& [id, at] : orphans_) {
    if (at <= now_ms) expired.push_back(id);
  }
  for (const auto& id : expired) {
    orphans_.erase(id);
    RequeueLost(id, "no result from its worker after restart", now_ms);
  }
  Dispatch(now_ms);
}

void Core::Dispatch(std::int64_t now_ms) {
  if (draining_ || !dispatch_dirty_) return;
  dispatch_dirty_ = false;
  // Round-robin over the DPs, one job per DP per turn, starting after the DP served last: a
  // worker serving several DPs must serve them all, even while a DP early in name order keeps
  // having ready jobs (it starved the others before).
  // No string copies per DP and an early stop once no worker has credit left: with thousands
  // of DPs ready, a freed credit must not cost a walk over all of them.
  auto any_credit = [this] {
    for (const auto& [peer, w] : workers_) {
      if (!w.draining && w.running.size() < w.capacity) return true;
    }
    return false;
  };
  bool progressed = true;
  while (progressed && !ready_.empty()) {
    progressed = false;
    const std::string from = dispatch_cursor_;
    auto visit = [&](std::map<std::string, std::set<std::pair<std::uint64_t, std::string>>>::iterator q) {
      auto next = std::next(q);
      if (DispatchOne(q->first, q->second, now_ms)) {
        progressed = true;
        dispatch_cursor_ = q->first;
      }
      if (q->second.empty()) ready_.erase(q);
      return next;
    };
    for (auto q = ready_.upper_bound(from); q != ready_.end();) {
      if (!any_credit()) return;
      q = visit(q);
    }
    for (auto q = ready_.begin(); q != ready_.end() && q->first <= from;) {
      if (!any_credit()) return;
      q = visit(q);
    }
  }
}

bool Core::DispatchOne(const std::string& dp, std::set<std::pair<std::uint64_t, std::string>>& queue,
                       std::int64_t now_ms) {
  std::vector<Worker*> eligible;
  std::vector<std::string> peers;
  for (auto& [peer, w] : workers_) {
    if (w.draining || w.running.size() >= w.capacity) continue;
    if (!w.Serves(dp)) continue;
    eligible.push_back(&w);
    peers.push_back(peer);
  }
  if (eligible.empty()) return false;
  for (auto it = queue.begin(); it != queue.end(); ++it) {
    const std::string id = it->second;
    JobRecord& r = active_.at(id);
    Lane& lane = LaneFor(r);
    if (lane.running != 0) continue;
    // Least loaded: fewest running, then most free credit.
    std::size_t best = 0;
    for (std::size_t i = 1; i < eligible.size(); ++i) {
      const auto& a = *eligible[i];
      const auto& b = *eligible[best];
      if (a.running.size() < b.running.size() ||
          (a.running.size() == b.running.size() &&
           a.capacity - a.running.size() > b.capacity - b.running.size())) {
        best = i;
      }
    }
    Worker& w = *eligible[best];
    const std::string peer = peers[best];
    queue.erase(it);
    ready_order_.erase(id);
    lane.ErasePending(r.seq);
    lane.running = r.seq;
    w.running.insert(id);
    running_peer_[id] = peer;
    r.attempt_token += 1;
    r.forced_running = r.force_next;
    r.force_next = false;
    r.started_at_ms = now_ms;
    r.info.state = JobState::kRunning;
    r.info.worker = w.name;
    r.info.next_attempt_at_ms.reset();
    if (r.came_due_ms != 0) {
      dispatch_lateness_.Add(now_ms - r.came_due_ms);
      r.came_due_ms = 0;
    }
    Emit(r, now_ms);
    msg::Dispatch d;
    d.job_id = id;
    d.attempt = r.attempt_token;
    d.kind = r.info.kind;
    d.dp = r.info.dp;
    d.package = r.info.package;
    d.version = r.info.version;
    d.source = r.info.source;
    d.force = r.forced_running;
    d.repair = r.repair;
    d.checksum = r.checksum;
    SendToWorker(peer, d);
    return true;
  }
  return false;
}

std::optional<std::int64_t> Core::NextDue() const {
  std::optional<std::int64_t> next;
  if (!soon_.empty()) next = soon_.front().first;
  if (!due_.empty() && (!next || due_.top().first < *next)) next = due_.top().first;
  return next;
}

std::optional<std::int64_t> Core::NextDeadline() const {
  std::optional<std::int64_t> next;
  auto consider = [&](std::int64_t t) {
    if (!next || t < *next) next = t;
  };
  if (!soon_.empty()) consider(soon_.front().first);
  if (!due_.empty()) consider(due_.top().first - std::max<std::int64_t>(0, opts_.warm_ahead_ms));
  for (const auto& [peer, w] : workers_) {
    consider(w.last_sent_ms + opts_.heartbeat_interval_ms);
    consider(w.last_seen_ms + opts_.heartbeat_interval_ms * static_cast<std::int64_t>(opts_.liveness) + 1);
  }
  for (const auto& [id, at] : orphans_) consider(at);
  return next;
}

// ---------------------------------------------------------------------------------------------
// Output and read side

WriteBatch Core::TakeBatch() { return std::exchange(batch_, WriteBatch{}); }
std::vector<ToWorker> Core::TakeWorkerOutbox() { return std::exchange(outbox_, {}); }
std::vector<msg::Event> Core::TakeEvents() { return std::exchange(events_, {}); }
bool Core::HasPendingOutput() const { return !batch_.empty() || !outbox_.empty() || !events_.empty(); }

std::vector<msg::WorkerInfo> Core::Workers() const {
  std::vector<msg::WorkerInfo> out;
  for (const auto& [peer, w] : workers_) {
    msg::WorkerInfo i;
    i.name = w.name;
    i.dps = w.dps;
    i.capacity = w.capacity;
    i.running = static_cast<std::uint32_t>(w.running.size());
    i.connected_at_ms = w.connected_at_ms;
    i.last_heartbeat_ms = w.last_seen_ms;
    i.draining = w.draining;
    out.push_back(std::move(i));
  }
  return out;
}

std::vector<std::string> Core::KnownDps() const { return known_dps_; }

bool Core::DpOnline(const std::string& dp) const {
  for (const auto& [peer, w] : workers_) {
    if (w.Serves(dp)) return true;
  }
  return false;
}

const JobRecord* Core::FindActive(const std::string& id) const {
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &it->second;
}

}  // namespace despool::broker
