#include "despool/broker/settings.h"

#include <chrono>

#include "despool/common/config.h"
#include "despool/common/names.h"

namespace despool::broker {
namespace {

using std::chrono::milliseconds;

Status CheckDpList(const std::vector<std::string>& dps) {
  if (dps.empty()) return MakeError(ErrorCode::kInvalidArgument, "a group needs at least one DP");
  for (const auto& dp : dps) DESPOOL_RETURN_IF_ERROR(ValidateDpName(dp));
  return Status::Ok();
}

}  // namespace

Status LoadBrokerConfig(const std::string& path, BrokerSettings& s) {
  DESPOOL_ASSIGN_OR_RETURN(auto config, ConfigReader::Load(path));
  ConfigSection root = config.Root();
  root.Get("frontend", s.frontend);
  root.Get("backend", s.backend);
  root.Get("events", s.events);
  root.Get("store", s.store_path);
  root.Get("endpoints_file", s.endpoints_file);
  root.Get("event_retention", s.store.events_retention);
  ConfigSection log = root.Section("log");
  log.Get("level", s.log_level);
  log.Get("format", s.log_format);
  ConfigSection http = root.Section("http");
  http.Get("listen", s.http);
  http.Get("token", s.http_token);

  // DPs declared by name; DP groups below declare their members too.
  root.Section("dps").Get("names", s.core.dps, [](const std::vector<std::string>& v) -> Status {
    for (const auto& dp : v) DESPOOL_RETURN_IF_ERROR(ValidateDpName(dp));
    return Status::Ok();
  });
  ConfigSection groups = root.Section("dp_groups");
  for (const std::string& name : groups.Keys()) {
    if (auto st = ValidateDpGroupName(name); !st.ok()) groups.AddError(name, st.error().message);
    std::vector<std::string> members;
    if (groups.Get(name, members, CheckDpList)) s.core.dp_groups[name] = members;
  }

  ConfigSection store = root.Section("store_options");
  std::string sync;
  if (store.Get("synchronous", sync)) {
    if (sync == "full" || sync == "FULL") {
      s.store.sync = SyncMode::kFull;
    } else if (sync == "normal" || sync == "NORMAL") {
      s.store.sync = SyncMode::kNormal;
    } else {
      store.AddError("synchronous", "expected \"full\" or \"normal\"");
    }
  }
  store.Get("commit_thread", s.commit_thread);
  milliseconds busy{s.store.busy_timeout_ms};
  if (store.Get("busy_timeout", busy)) s.store.busy_timeout_ms = static_cast<int>(busy.count());

  ConfigSection retry = root.Section("retry");
  auto& p = s.core.default_policy;
  milliseconds base{static_cast<std::int64_t>(p.retry_base_ms)};
  milliseconds max{static_cast<std::int64_t>(p.retry_max_ms)};
  auto positive = [](const milliseconds& d) {
    return d.count() > 0 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be positive");
  };
  if (retry.Get("base", base, positive)) p.retry_base_ms = static_cast<std::uint64_t>(base.count());
  if (retry.Get("max", max, positive)) p.retry_max_ms = static_cast<std::uint64_t>(max.count());
  if (p.retry_max_ms < p.retry_base_ms) retry.AddError("max", "must not be below retry.base");
  retry.Get("max_attempts", p.max_attempts, [](const std::uint32_t& n) {
    return n >= 1 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be at least 1");
  });
  std::string on_exhausted;
  if (retry.Get("on_exhausted", on_exhausted) && !msg::ParseOnExhausted(on_exhausted, &p.on_exhausted)) {
    retry.AddError("on_exhausted", "expected \"dead\" or \"force\"");
  }

  ConfigSection hb = root.Section("heartbeat");
  milliseconds interval{s.core.heartbeat_interval_ms};
  if (hb.Get("interval", interval, [](const milliseconds& d) {
        return d.count() >= 10 && d.count() <= 600'000
                   ? Status::Ok()
                   : MakeError(ErrorCode::kInvalidArgument, "must be between 10ms and 10m");
      })) {
    s.core.heartbeat_interval_ms = interval.count();
  }
  hb.Get("liveness", s.core.liveness, [](const std::uint32_t& n) {
    return n >= 1 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be at least 1");
  });
  milliseconds grace{s.core.orphan_grace_ms};
  if (hb.Get("orphan_grace", grace)) s.core.orphan_grace_ms = grace.count();

  ConfigSection limits = root.Section("limits");
  limits.Get("max_frame_bytes", s.max_frame_bytes, [](const std::size_t& v) {
    return v >= 1024 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be at least 1024");
  });
  limits.Get("max_message_bytes", s.max_message_bytes, [](const std::int64_t& v) {
    return v >= 1024 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be at least 1024");
  });
  limits.Get("max_frames", s.max_frames, [](const std::size_t& v) {
    return v >= 2 && v <= 64 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be between 2 and 64");
  });
  int hwm = 0;
  if (limits.Get("hwm", hwm, [](const int& v) {
        return v >= 1 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be positive");
      })) {
    s.frontend_hwm = s.backend_hwm = s.events_hwm = hwm;
  }
  auto non_negative = [](const double& v) {
    return v >= 0 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must not be negative");
  };
  limits.Get("requests_per_second", s.request_rate, non_negative);
  limits.Get("request_burst", s.request_burst, [](const double& v) {
    return v >= 1 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be at least 1");
  });

  ConfigSection security = root.Section("security");
  security.Get("curve_secret_key", s.security.curve_secret_key);
  security.Get("authorized_keys_dir", s.security.authorized_keys_dir);
  security.Get("revoked", s.security.revoked);
  if (s.security.curve_secret_key.empty() != s.security.authorized_keys_dir.empty()) {
    security.AddError("curve_secret_key", "curve_secret_key and authorized_keys_dir go together");
  }
  if (static_cast<std::uint64_t>(s.max_message_bytes) < s.max_frame_bytes) {
    limits.AddError("max_message_bytes", "must not be below limits.max_frame_bytes");
  }
  return config.Finish();
}

}  // namespace despool::broker
