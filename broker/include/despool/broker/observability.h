// The broker loop's side of observability: it records metrics as the loop works, publishes a
// Snapshot of what only the loop knows a few times a second, and owns the HTTP endpoint.
//
// Every method is called from the loop's thread only; HTTP threads read the BrokerMetrics and
// the published Snapshot (docs/observability.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "despool/broker/core.h"
#include "despool/broker/http_server.h"
#include "despool/broker/metrics.h"
#include "despool/broker/snapshot.h"
#include "despool/broker/store.h"

namespace despool::broker {

struct LoopMetrics;

class Observability {
 public:
  Observability() = default;
  ~Observability();

  // Opens a store connection for the HTTP threads and serves on options.listen. The URL it
  // bound ("http://127.0.0.1:PORT") goes to `url`.
  Status StartHttp(const HttpOptions& options, const std::string& store_path, const SqliteOptions& store_options,
                   std::string* url);
  void StopHttp();

  // Loop hooks.
  void OnWorkerMessage(const std::string& peer, const msg::Body& body);   // before the Core sees it
  void OnSubmitAcked(std::chrono::steady_clock::duration since_received);
  // After a successful commit: `total_commit_ns` is the running total of commit time (this
  // commit's duration is the difference to the previous call), `jobs` the rows written.
  void OnCommitted(std::uint64_t total_commit_ns, const WriteBatch& batch);
  void OnSentToWorker(const msg::Body& body);
  void OnPublished(const msg::Event& event, bool sent);

  // Publishes a new Snapshot when `interval` passed since the last one (or `force`).
  void MaybePublish(const Core& core, const LoopMetrics& loop, std::int64_t now_ms, bool force = false);

  BrokerMetrics& metrics() { return metrics_; }
  const SnapshotBox& snapshots() const { return snapshots_; }

  static constexpr std::int64_t kPublishIntervalMs = 250;

 private:
  BrokerMetrics metrics_;
  SnapshotBox snapshots_;
  std::unique_ptr<HttpServer> http_;
  std::uint64_t last_commit_ns_ = 0;
  std::int64_t last_publish_ms_ = 0;
  std::map<std::string, std::string> worker_names_;          // peer -> registered name
  std::map<std::string, msg::WorkerMetrics> worker_metrics_;  // name -> latest heartbeat metrics
};

}  // namespace despool::broker
