// The broker's observability endpoint (docs/observability.md): /metrics (Prometheus text),
// /api/v1/... (read-only JSON in the shapes of `despoolctl --json`) and / (the dashboard).
//
// Threads: cpp-httplib serves from its own fixed pool. Handlers never touch the Core or the
// loop's sockets: they read the loop's published Snapshot, the thread-safe BrokerMetrics and
// their own store connection (SQLite WAL: readers run beside the loop's commits), which a mutex
// serialises among the HTTP threads.
#pragma once

#include <memory>
#include <string>

#include "despool/broker/metrics.h"
#include "despool/broker/snapshot.h"
#include "despool/broker/store.h"
#include "despool/common/result.h"

namespace despool::broker {

struct HttpOptions {
  std::string listen;  // "HOST:PORT" ("[::1]:PORT" for IPv6); port 0 picks a free port
  std::string token;   // when set, /metrics and /api need "Authorization: Bearer TOKEN"
};

struct HostPort {
  std::string host;
  int port = 0;
};

// "127.0.0.1:7480" -> {127.0.0.1, 7480}; an "http://" prefix is accepted.
Result<HostPort> ParseHttpListen(const std::string& listen);
// The listen address parses, and a non-loopback address has a token (kInvalidArgument).
Status ValidateHttpOptions(const HttpOptions& options);

class HttpServer {
 public:
  // Binds and starts serving. `reader` may be null (an in-memory store): job routes then
  // answer 503. `metrics` and `snapshots` must outlive the server.
  static Result<std::unique_ptr<HttpServer>> Start(const HttpOptions& options, std::unique_ptr<Store> reader,
                                                   BrokerMetrics* metrics, const SnapshotBox* snapshots);
  ~HttpServer();  // stops accepting, finishes requests in progress, joins
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // "http://HOST:PORT" with the bound port.
  const std::string& url() const;

 private:
  class Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace despool::broker
