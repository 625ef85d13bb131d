#include "queries.h"

#include <algorithm>

namespace despool::broker {
namespace {

msg::ErrorReply StoreFailure(const Error& e) {
  return msg::ErrorReply{msg::ErrorKind::kUnavailable, "store: " + e.message};
}

std::uint32_t CapLimit(std::uint32_t limit, const BrokerSettings& s) {
  const auto cap = static_cast<std::uint32_t>(s.max_reply_jobs);
  return limit == 0 ? cap : std::min(limit, cap);
}

msg::Body Status(const msg::StatusRequest& req, Store& store, const BrokerSettings& s) {
  msg::JobsReply reply;
  if (req.job_id) {
    auto r = store.GetJob(*req.job_id);
    if (!r.ok()) return StoreFailure(r.error());
    if (!*r) return msg::ErrorReply{msg::ErrorKind::kNotFound, "unknown job id " + *req.job_id};
    reply.jobs.push_back((*r)->info);
    return reply;
  }
  JobFilter f;
  f.package = req.package;
  f.dp = req.dp;
  f.state = req.state;
  f.limit = CapLimit(req.limit, s);
  auto r = store.ListJobs(f);
  if (!r.ok()) return StoreFailure(r.error());
  for (auto& j : *r) reply.jobs.push_back(std::move(j.info));
  return reply;
}

msg::Body Dead(const msg::DeadRequest& req, Store& store, const BrokerSettings& s) {
  JobFilter f;
  f.state = msg::JobState::kDead;
  f.limit = CapLimit(req.limit, s);
  auto r = store.ListJobs(f);
  if (!r.ok()) return StoreFailure(r.error());
  msg::JobsReply reply;
  for (auto& j : *r) reply.jobs.push_back(std::move(j.info));
  return reply;
}

// The oldest queued job is an index lookup in the store; the rest came from CoreStats.
msg::Body CompleteStats(msg::StatsReply reply, Store& store) {
  auto oldest = store.OldestQueuedAt();
  if (!oldest.ok()) return StoreFailure(oldest.error());
  reply.oldest_queued_at_ms = *oldest;
  return reply;
}

msg::Body EventsSince(const msg::EventsSinceRequest& req, Store& store) {
  auto page = store.EventsSince(req.since, req.limit == 0 ? 10000 : std::min<std::uint32_t>(req.limit, 10000),
                                req.dp, req.package);
  if (!page.ok()) return StoreFailure(page.error());
  msg::EventsReply reply;
  reply.events = std::move(page->events);
  reply.oldest_seq = page->oldest_seq;
  reply.last_seq = page->last_seq;
  return reply;
}

}  // namespace

msg::StatsReply CoreStats(const Core& core) {
  msg::StatsReply reply;
  const auto& counts = core.JobCounts();
  for (std::size_t i = 0; i < counts.size(); ++i) {
    reply.jobs_by_state.push_back({static_cast<msg::JobState>(i), counts[i]});
  }
  for (const auto& dp : core.KnownDps()) {
    msg::DpStats d;
    d.dp = dp;
    d.online = core.DpOnline(dp);
    const auto active = core.ActiveCounts(dp);
    d.queued = active[0];
    d.running = active[1];
    d.deferred = active[2];
    reply.dps.push_back(std::move(d));
  }
  reply.workers = static_cast<std::uint32_t>(core.WorkerCount());
  reply.queue_depth = counts[static_cast<std::size_t>(msg::JobState::kQueued)];
  reply.retry_backlog = counts[static_cast<std::size_t>(msg::JobState::kDeferred)];
  reply.last_event_seq = core.LastEventSeq();
  return reply;
}

msg::Body AnswerQuery(const msg::Body& request, Store& store, const Core& core, const BrokerSettings& settings) {
  if (auto* r = std::get_if<msg::StatusRequest>(&request)) return Status(*r, store, settings);
  if (auto* r = std::get_if<msg::DeadRequest>(&request)) return Dead(*r, store, settings);
  if (std::holds_alternative<msg::WorkersRequest>(request)) return msg::WorkersReply{core.Workers()};
  if (std::holds_alternative<msg::StatsRequest>(request)) return CompleteStats(CoreStats(core), store);
  if (auto* r = std::get_if<msg::StatsReply>(&request)) return CompleteStats(*r, store);
  if (auto* r = std::get_if<msg::EventsSinceRequest>(&request)) return EventsSince(*r, store);
  return msg::ErrorReply{msg::ErrorKind::kInternal, "not a query"};
}

}  // namespace despool::broker
