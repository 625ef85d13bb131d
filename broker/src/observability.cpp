#include "despool/broker/observability.h"

#include <set>

#include "despool/broker/broker.h"
#include "queries.h"

namespace despool::broker {
namespace {

// Bounds (ms) taken from the Core's millisecond lateness histogram; its last bucket holds
// everything >= 1000 ms, so nothing at or above 1 s gets a finite bound.
constexpr std::size_t kLatenessBoundsMs[] = {1, 5, 10, 25, 50, 100, 250, 500, 999};

}  // namespace

Observability::~Observability() { StopHttp(); }

Status Observability::StartHttp(const HttpOptions& options, const std::string& store_path,
                                const SqliteOptions& store_options, std::string* url) {
  std::unique_ptr<Store> reader;
  // An in-memory store is private to its connection: the HTTP side then has no job data.
  if (store_path != ":memory:" && !store_path.empty()) {
    auto r = OpenSqliteStore(store_path, store_options);
    if (!r.ok()) return r.take_error();
    reader = std::move(r).value();
  }
  DESPOOL_ASSIGN_OR_RETURN(http_, HttpServer::Start(options, std::move(reader), &metrics_, &snapshots_));
  *url = http_->url();
  return Status::Ok();
}

void Observability::StopHttp() { http_.reset(); }

void Observability::OnWorkerMessage(const std::string& peer, const msg::Body& body) {
  if (auto* reg = std::get_if<msg::Register>(&body)) {
    worker_names_[peer] = reg->name;
  } else if (auto* hb = std::get_if<msg::Heartbeat>(&body)) {
    auto it = worker_names_.find(peer);
    if (hb->metrics && it != worker_names_.end()) worker_metrics_[it->second] = *hb->metrics;
  } else if (auto* res = std::get_if<msg::JobResult>(&body)) {
    const auto i = static_cast<std::size_t>(res->outcome);
    if (i < kOutcomes) metrics_.results[i].fetch_add(1, std::memory_order_relaxed);
  }
}

void Observability::OnSubmitAcked(std::chrono::steady_clock::duration since_received) {
  metrics_.submit_ack_seconds.Observe(std::chrono::duration<double>(since_received).count());
}

void Observability::OnCommitted(std::uint64_t total_commit_ns, const WriteBatch& batch) {
  const std::uint64_t ns = total_commit_ns >= last_commit_ns_ ? total_commit_ns - last_commit_ns_ : 0;
  last_commit_ns_ = total_commit_ns;
  metrics_.commit_seconds.Observe(static_cast<double>(ns) / 1e9);
  metrics_.commit_batch_jobs.Observe(static_cast<double>(batch.jobs.size()));
  for (const auto& e : batch.events) {
    const auto i = static_cast<std::size_t>(e.job.state);
    if (e.kind == msg::EventKind::kState && i < kJobStates) {
      metrics_.transitions[i].fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void Observability::OnSentToWorker(const msg::Body& body) {
  if (auto* d = std::get_if<msg::Dispatch>(&body)) {
    const auto i = static_cast<std::size_t>(d->kind);
    if (i < kJobKinds) metrics_.dispatches[i].fetch_add(1, std::memory_order_relaxed);
  }
}

void Observability::OnPublished(const msg::Event& event, bool sent) {
  if (!sent) {
    metrics_.events_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const auto i = static_cast<std::size_t>(event.kind);
  if (i < kEventKinds) metrics_.events_published[i].fetch_add(1, std::memory_order_relaxed);
}

void Observability::MaybePublish(const Core& core, const LoopMetrics& loop, std::int64_t now_ms, bool force) {
  if (!force && now_ms - last_publish_ms_ < kPublishIntervalMs && now_ms >= last_publish_ms_) return;
  last_publish_ms_ = now_ms;
  auto s = std::make_shared<Snapshot>();
  s->taken_at_ms = now_ms;
  std::set<std::string> live;
  for (auto& w : core.Workers()) {
    WorkerSnapshot ws;
    ws.info = std::move(w);
    if (auto it = worker_metrics_.find(ws.info.name); it != worker_metrics_.end()) ws.metrics = it->second;
    live.insert(ws.info.name);
    s->workers.push_back(std::move(ws));
  }
  // Forget workers that are gone (a re-registering worker reports its totals again).
  std::erase_if(worker_metrics_, [&](const auto& kv) { return live.count(kv.first) == 0; });
  std::erase_if(worker_names_, [&](const auto& kv) { return live.count(kv.second) == 0; });
  s->stats = CoreStats(core);
  s->active_jobs = core.ActiveJobs();
  const auto& h = core.DueLateness();
  std::uint64_t running = 0;
  std::size_t next_ms = 0;
  double sum_ms = 0;
  for (std::size_t b : kLatenessBoundsMs) {
    for (; next_ms <= b && next_ms < h.ms.size(); ++next_ms) {
      running += h.ms[next_ms];
      sum_ms += static_cast<double>(next_ms) * static_cast<double>(h.ms[next_ms]);
    }
    s->lateness_bounds.push_back(static_cast<double>(b) / 1000.0);
    s->lateness_cumulative.push_back(running);
  }
  for (; next_ms < h.ms.size(); ++next_ms) {
    running += h.ms[next_ms];
    sum_ms += static_cast<double>(next_ms) * static_cast<double>(h.ms[next_ms]);
  }
  s->lateness_cumulative.push_back(running);
  s->lateness_count = running;
  s->lateness_sum_seconds = sum_ms / 1000.0;
  s->loop_rounds = loop.rounds;
  s->loop_messages = loop.messages;
  s->commits = loop.commits;
  snapshots_.Publish(std::move(s));
}

}  // namespace despool::broker
