// despool-worker: serves distribution points for a broker (CONTRACT.md, issue 6).
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "despool/common/cli.h"
#include "despool/common/stop_signals.h"
#include "despool/common/logging.h"
#include "despool/common/names.h"
#include "despool/workers/allocator.h"
#include "despool/workers/engine.h"
#include "despool/workers/inuse.h"
#include "despool/workers/service/settings.h"
#include "despool/workers/service/worker.h"

int main(int argc, char** argv) {
  using namespace despool;
  using namespace despool::workers;
  const Status retained = RetainFreedMemoryForReuse();  // logged once logging is set up
  CLI::App app{"despool worker: refreshes packages on the distribution points it serves", "despool-worker"};
  CommonOptions common;
  AddCommonOptions(app, common);
  service::WorkerSettings defaults;
  std::string broker = defaults.broker, name;
  std::vector<std::string> dp_flags;
  std::uint32_t concurrency = defaults.concurrency;
  std::uint64_t max_bps = 0;
  std::chrono::milliseconds drain_timeout = defaults.drain_timeout;
  auto* broker_opt = app.add_option("--broker", broker, "The broker's backend endpoint")
                         ->type_name("EP")->default_str(defaults.broker);
  auto* dp_opt = app.add_option("--dp", dp_flags, "A distribution point to serve (repeatable); replaces the "
                                                  "config's [[dp]] entries")
                     ->type_name("NAME=ROOT");
  auto* conc_opt = app.add_option("--concurrency", concurrency, "Jobs run at once")
                       ->check(UnsignedValidator())->check(CLI::Range(1u, 1024u))->type_name("N")->default_str("2");
  auto* name_opt = app.add_option("--name", name, "Worker name (default: <hostname>-<pid>)")->type_name("NAME");
  auto* bps_opt = app.add_option("--max-bytes-per-second", max_bps, "Copy bandwidth cap (0 = unlimited)")
                      ->check(UnsignedValidator())->type_name("N");
  std::string curve_server_key, curve_key;
  auto* curve_server_opt = app.add_option("--curve-server-key", curve_server_key,
                                          "The broker's CURVE public key file (docs/security.md)")
                               ->type_name("FILE");
  auto* curve_key_opt = app.add_option("--curve-key", curve_key, "Our CURVE secret key file (mode 0600)")
                            ->type_name("FILE");
  auto* drain_opt = AddDurationOption(app, "--drain-timeout", drain_timeout,
                                      "On SIGTERM, how long running jobs may finish before they are cancelled");

  return RunCli(app, argc, argv, [&]() -> int {
    service::WorkerSettings settings;
    if (!common.config_path.empty()) {
      if (Status st = service::LoadWorkerConfig(common.config_path, settings); !st.ok()) {
        std::cerr << "despool-worker: " << st.error().message << "\n";
        return kExitUsage;
      }
    }
    OverrideFromFlag(broker_opt, broker, settings.broker);
    OverrideFromFlag(conc_opt, concurrency, settings.concurrency);
    OverrideFromFlag(name_opt, name, settings.name);
    OverrideFromFlag(bps_opt, max_bps, settings.max_bytes_per_second);
    OverrideFromFlag(drain_opt, drain_timeout, settings.drain_timeout);
    OverrideFromFlag(curve_server_opt, curve_server_key, settings.curve_server_key);
    OverrideFromFlag(curve_key_opt, curve_key, settings.curve_key);
    if (auto curve = LoadCurveClientConfig(settings.curve_server_key, settings.curve_key); curve.ok()) {
      settings.curve = std::move(curve).value();
    } else {
      std::cerr << "despool-worker: " << curve.error().message << "\n";
      return kExitUsage;
    }
    if (GivenOnCommandLine(dp_opt)) {
      settings.dps.clear();
      for (const auto& text : dp_flags) {
        auto spec = service::ParseDpSpec(text);
        if (!spec.ok()) {
          std::cerr << "despool-worker: " << spec.error().message << "\n";
          return kExitUsage;
        }
        settings.dps.push_back(std::move(spec).value());
      }
    }
    if (!settings.name.empty()) {
      if (Status st = ValidateWorkerName(settings.name); !st.ok()) {
        std::cerr << "despool-worker: --name: " << st.error().message << "\n";
        return kExitUsage;
      }
    }
    auto log_options = ResolveLogOptions(common, settings.log_level, settings.log_format);
    if (!log_options.ok()) {
      std::cerr << "despool-worker: " << log_options.error().message << "\n";
      return kExitUsage;
    }
    if (Status st = SetupLogging(*log_options); !st.ok()) {
      std::cerr << "despool-worker: " << st.error().message << "\n";
      return kExitError;
    }
    auto log = GetLogger("worker");
    if (!retained.ok()) log->warn("allocator left at its defaults error={}", LogQuote(retained.error().message));

    // Before any thread exists: lease breaks signal SIGIO, whose default action kills us.
    if (Status st = IgnoreLeaseBreakSignal(); !st.ok()) {
      std::cerr << "despool-worker: " << st.error().message << "\n";
      return kExitError;
    }
    const int stop_fd = BlockStopSignals();
    if (stop_fd < 0) {
      std::cerr << "despool-worker: cannot set up signal handling\n";
      return kExitError;
    }

    Engine engine;
    if (Status st = service::CheckDps(engine, settings.dps); !st.ok()) {
      log->error("bad DP error={}", LogQuote(st.error().message));
      std::cerr << "despool-worker: " << st.error().message << "\n";
      ::close(stop_fd);
      return kExitUsage;
    }
    for (const auto& dp : settings.dps) {
      if (Status st = engine.Recover(dp.root); !st.ok()) {
        log->error("crash recovery failed dp={} root={} error={}", dp.name, LogQuote(dp.root),
                   LogQuote(st.error().message));
        std::cerr << "despool-worker: DP '" << dp.name << "' (root '" << dp.root
                  << "'): crash recovery failed: " << st.error().message << "\n";
        ::close(stop_fd);
        return kExitError;
      }
      log->info("DP ready dp={} root={}", dp.name, LogQuote(dp.root));
    }

    int rc = kExitOk;
    {
      service::Worker worker(settings, engine);
      if (Status st = worker.Run(stop_fd); !st.ok()) {
        log->error("worker failed error={}", LogQuote(st.error().message));
        std::cerr << "despool-worker: " << st.error().message << "\n";
        rc = kExitError;
      }
    }
    ::close(stop_fd);
    return rc;
  });
}
