// despool-worker's settings: defaults (CONTRACT.md), then config/worker.toml, then flags.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "despool/common/curve.h"
#include "despool/common/result.h"
#include "despool/workers/engine.h"

namespace despool::workers::service {

struct DpSpec {
  std::string name;  // validated with ValidateDpName
  std::string root;  // absolute after PrepareDps
  bool operator==(const DpSpec&) const = default;
};

struct WorkerSettings {
  std::string broker = "tcp://127.0.0.1:7401";  // the broker's backend endpoint
  std::string name;                              // empty = "<hostname>-<pid>"
  std::uint32_t concurrency = 2;                 // jobs run at once, >= 1
  std::uint64_t max_bytes_per_second = 0;        // 0 = unlimited
  std::vector<DpSpec> dps;
  std::string log_level;                         // from the config file; empty = not set
  std::string log_format;

  // SIGTERM: running jobs get this long to finish, then they are cancelled (live untouched).
  std::chrono::milliseconds drain_timeout{30000};
  // After the last job ended: how long to wait for the broker to acknowledge results.
  std::chrono::milliseconds result_flush_timeout{5000};

  // Paranoid Pirate (PROTOCOL.md 8.2). The interval is replaced by the broker's register-ack.
  std::chrono::milliseconds heartbeat_interval{1000};
  std::uint32_t liveness = 3;
  std::chrono::milliseconds reconnect_min{1000};
  std::chrono::milliseconds reconnect_max{32000};

  // Progress reports per job at most every this long.
  std::chrono::milliseconds progress_interval{250};
  // How long a refresh waits for its package lock (another process finishing a stale run).
  std::chrono::milliseconds lock_wait{5000};

  // Wake on release: watches (inotify watches + pidfds) across all deferred jobs, the re-probe
  // period when no close event can be expected, and how long a deferred job is watched at most.
  std::size_t max_watches = 4096;
  std::size_t max_pidfds = 256;
  std::chrono::milliseconds reprobe_interval{1000};
  std::chrono::milliseconds max_watch_time{std::chrono::hours(1)};

  // CURVE (docs/security.md): key file paths (config curve_server_key / curve_key, flags
  // --curve-server-key / --curve-key) and the keys main() loaded from them.
  std::string curve_server_key;
  std::string curve_key;
  CurveClientConfig curve;

  // Transport cap per frame (ZMQ_MAXMSGSIZE).
  std::int64_t max_message_bytes = 64ll << 20;
};

// "NAME=ROOT" (a --dp flag). kInvalidArgument naming what is wrong.
Result<DpSpec> ParseDpSpec(std::string_view text);

// Reads a worker TOML file (config/worker.toml) into `settings`; absent keys keep their value.
// Unknown keys and bad values are kInvalidArgument naming the key and line (exit 2).
Status LoadWorkerConfig(const std::string& path, WorkerSettings& settings);

// "<hostname>-<pid>".
std::string DefaultWorkerName();

// Start-up checks of every DP, in order: valid name, no duplicate name or root, then
// Engine::CheckDpRoot (root made absolute first). The message names the DP, its root and the
// check that failed. Callers exit 2 on it.
Status CheckDps(Engine& engine, std::vector<DpSpec>& dps);

}  // namespace despool::workers::service
