// Everything the broker process can be configured with: defaults per CONTRACT.md, then the
// TOML file (config/broker.toml), then command-line flags (main.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "despool/broker/auth.h"
#include "despool/broker/core.h"
#include "despool/broker/store.h"
#include "despool/common/result.h"

namespace despool::broker {

struct BrokerSettings {
  std::string frontend = "tcp://127.0.0.1:7400";
  std::string backend = "tcp://127.0.0.1:7401";
  std::string events = "tcp://127.0.0.1:7402";
  std::string store_path = "./despool-data/broker.db";
  std::string endpoints_file;                      // written after bind (tests, scripts)
  std::string log_level;                           // empty = not set in the file
  std::string log_format;
  // Observability HTTP endpoint (docs/observability.md): "HOST:PORT", empty = off; a bearer
  // token for /metrics and /api (required unless HOST is loopback).
  std::string http;
  std::string http_token;

  SqliteOptions store;
  // Commit on a dedicated thread while the loop goes on (pipelined group commit); false: each
  // round commits inline on the loop thread.
  bool commit_thread = true;
  CoreOptions core;

  // Hostile-input limits (CONTRACT.md, PROTOCOL.md section 5).
  std::size_t max_frame_bytes = 4u << 20;          // application limit: error reply
  std::int64_t max_message_bytes = 64ll << 20;     // ZMQ_MAXMSGSIZE: peer dropped
  std::size_t max_frames = 4;                      // per message on a ROUTER (routing id included)
  // Frontend requests per second per connection, bursts up to request_burst; 0 = unlimited.
  double request_rate = 0;
  double request_burst = 200;

  // [security]: CURVE + ZAP, authorized keys, --insecure (docs/security.md).
  SecuritySettings security;

  int frontend_hwm = 100'000;
  int backend_hwm = 100'000;
  int events_hwm = 100'000;
  // Messages handled per poll round before committing (bounds latency under load).
  std::size_t max_round_messages = 8192;
  // Parked jobs' store rows are read this long before their due time on a thread of their own
  // (pipelined mode, file store), so a due retry's reload finds them in the page cache; 0 = off.
  std::int64_t warm_ahead_ms = 1000;
  // Replies larger than the application limit are cut (status --limit 0 on a big queue).
  std::size_t max_reply_jobs = 10'000;
};

// Reads a broker TOML file into `settings` (keys absent from the file keep their value).
// Unknown keys and bad values are kInvalidArgument naming the key (exit 2 in main).
Status LoadBrokerConfig(const std::string& path, BrokerSettings& settings);

}  // namespace despool::broker
