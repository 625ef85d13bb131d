#include "despool/workers/service/settings.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "despool/common/config.h"
#include "despool/common/names.h"

namespace despool::workers::service {

Result<DpSpec> ParseDpSpec(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--dp '" + std::string(text) + "': expected NAME=ROOT");
  }
  DpSpec spec{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
  if (Status st = ValidateDpName(spec.name); !st.ok()) {
    return MakeError(ErrorCode::kInvalidArgument, "--dp '" + std::string(text) + "': " + st.error().message);
  }
  if (spec.root.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "--dp '" + std::string(text) + "': empty ROOT");
  }
  return spec;
}

Status LoadWorkerConfig(const std::string& path, WorkerSettings& s) {
  DESPOOL_ASSIGN_OR_RETURN(auto config, ConfigReader::Load(path));
  ConfigSection root = config.Root();
  root.Get("broker", s.broker, [](const std::string& v) {
    return v.empty() ? MakeError(ErrorCode::kInvalidArgument, "must not be empty") : Status::Ok();
  });
  root.Get("name", s.name, [](const std::string& v) { return ValidateWorkerName(v); });
  root.Get("concurrency", s.concurrency, [](const std::uint32_t& n) {
    return n >= 1 && n <= 1024 ? Status::Ok()
                               : MakeError(ErrorCode::kInvalidArgument, "must be between 1 and 1024");
  });
  root.Get("max_bytes_per_second", s.max_bytes_per_second);
  root.Get("drain_timeout", s.drain_timeout);
  root.Get("curve_server_key", s.curve_server_key);
  root.Get("curve_key", s.curve_key);
  ConfigSection log = root.Section("log");
  log.Get("level", s.log_level);
  log.Get("format", s.log_format);
  std::vector<DpSpec> dps;
  for (ConfigSection dp : root.Sections("dp")) {
    DpSpec spec;
    dp.Require("name", spec.name, [](const std::string& v) { return ValidateDpName(v); });
    dp.Require("root", spec.root, [](const std::string& v) {
      return v.empty() ? MakeError(ErrorCode::kInvalidArgument, "must not be empty") : Status::Ok();
    });
    dps.push_back(std::move(spec));
  }
  DESPOOL_RETURN_IF_ERROR(config.Finish());
  if (!dps.empty()) s.dps = std::move(dps);
  return Status::Ok();
}

std::string DefaultWorkerName() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::snprintf(host, sizeof host, "worker");
  return std::string(host) + "-" + std::to_string(::getpid());
}

Status CheckDps(Engine& engine, std::vector<DpSpec>& dps) {
  if (dps.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "no DP to serve: give --dp NAME=ROOT or [[dp]] in the config");
  }
  std::set<std::string> names, roots;
  for (DpSpec& dp : dps) {
    const std::string what = "DP '" + dp.name + "' (root '" + dp.root + "')";
    if (Status st = ValidateDpName(dp.name); !st.ok()) {
      return MakeError(ErrorCode::kInvalidArgument, what + ": invalid name: " + st.error().message);
    }
    if (!names.insert(dp.name).second) {
      return MakeError(ErrorCode::kInvalidArgument, what + ": DP named twice");
    }
    std::error_code ec;
    std::filesystem::path abs = std::filesystem::absolute(dp.root, ec);
    if (ec) return MakeError(ErrorCode::kInvalidArgument, what + ": cannot make the root absolute: " + ec.message());
    abs = abs.lexically_normal();
    std::string root = abs.string();
    if (root.size() > 1 && root.back() == '/') root.pop_back();
    dp.root = root;
    if (!roots.insert(dp.root).second) {
      return MakeError(ErrorCode::kInvalidArgument, what + ": root served twice");
    }
    // Workers starting together on one DP race in the engine's scratch dir (.despool/check/:
    // each start clears it), so a failure is retried a few times before it counts.
    Status st = engine.CheckDpRoot(dp.root);
    for (int retry = 0; !st.ok() && retry < 3; ++retry) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + (::getpid() + 37 * retry) % 100));
      st = engine.CheckDpRoot(dp.root);
    }
    if (!st.ok()) {
      return MakeError(ErrorCode::kInvalidArgument, what + ": root check failed: " + st.error().message);
    }
  }
  return Status::Ok();
}

}  // namespace despool::workers::service
