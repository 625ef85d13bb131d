// despool-broker: durable instruction queue, dispatch to workers, delayed retries, events.
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "despool/broker/broker.h"
#include "despool/broker/http_server.h"
#include "despool/broker/settings.h"
#include "despool/broker/store.h"
#include "despool/common/cli.h"
#include "despool/common/stop_signals.h"
#include "despool/common/curve.h"
#include "despool/common/logging.h"

int main(int argc, char** argv) {
  using namespace despool;
  CLI::App app{"despool broker: durable queue, dispatch, delayed retries, events", "despool-broker"};
  CommonOptions common;
  AddCommonOptions(app, common);
  broker::BrokerSettings defaults;
  std::string frontend = defaults.frontend, backend = defaults.backend, events = defaults.events;
  std::string store = defaults.store_path, endpoints_file;
  bool sync_normal = false;
  auto* frontend_opt = app.add_option("--frontend", frontend, "Frontend ROUTER endpoint (publishers, despoolctl)")
                           ->type_name("EP")->default_str(defaults.frontend);
  auto* backend_opt = app.add_option("--backend", backend, "Backend ROUTER endpoint (workers)")
                          ->type_name("EP")->default_str(defaults.backend);
  auto* events_opt = app.add_option("--events", events, "Events PUB endpoint")
                         ->type_name("EP")->default_str(defaults.events);
  auto* store_opt = app.add_option("--store", store, "SQLite store path (parent directories are created)")
                        ->type_name("PATH")->default_str(defaults.store_path);
  auto* endpoints_opt = app.add_option("--endpoints-file", endpoints_file,
                                       "Write the bound endpoints (frontend=, backend=, events=) to FILE "
                                       "once listening (useful with tcp://127.0.0.1:* ports)")
                            ->type_name("FILE");
  std::string http;
  auto* http_opt = app.add_option("--http", http,
                                  "Observability HTTP endpoint HOST:PORT: /metrics, /api/v1, dashboard (port 0 "
                                  "picks one; empty = off; non-loopback needs [http] token; docs/observability.md)")
                       ->type_name("HOST:PORT");
  auto* sync_opt = app.add_flag("--sync-normal", sync_normal,
                                "SQLite synchronous=NORMAL: survives a process crash, not a power loss "
                                "(default FULL)");
  bool insecure = false;
  app.add_flag("--insecure", insecure,
               "Allow binding endpoints other than loopback/ipc without CURVE (logs a warning; docs/security.md)");

  return RunCli(app, argc, argv, [&]() -> int {
    broker::BrokerSettings settings;
    if (!common.config_path.empty()) {
      if (Status st = broker::LoadBrokerConfig(common.config_path, settings); !st.ok()) {
        std::cerr << "despool-broker: " << st.error().message << "\n";
        return kExitUsage;
      }
    }
    OverrideFromFlag(frontend_opt, frontend, settings.frontend);
    OverrideFromFlag(backend_opt, backend, settings.backend);
    OverrideFromFlag(events_opt, events, settings.events);
    OverrideFromFlag(store_opt, store, settings.store_path);
    OverrideFromFlag(endpoints_opt, endpoints_file, settings.endpoints_file);
    OverrideFromFlag(http_opt, http, settings.http);
    if (!settings.http.empty()) {
      if (Status st = broker::ValidateHttpOptions({settings.http, settings.http_token}); !st.ok()) {
        std::cerr << "despool-broker: " << st.error().message << "\n";
        return kExitUsage;
      }
    }
    if (GivenOnCommandLine(sync_opt) && sync_normal) settings.store.sync = broker::SyncMode::kNormal;
    // Secure by default (docs/security.md): checked before anything is opened or bound.
    settings.security.insecure = settings.security.insecure || insecure;
    auto exposed = broker::CheckBindPolicy({settings.frontend, settings.backend, settings.events},
                                           !settings.security.curve_secret_key.empty(), settings.security.insecure);
    if (!exposed.ok()) {
      std::cerr << "despool-broker: " << exposed.error().message << "\n";
      return kExitUsage;
    }
    if (!settings.security.curve_secret_key.empty()) {
      Status keys = Status::Ok();
      if (auto k = LoadSecretKeyFile(settings.security.curve_secret_key); !k.ok()) {
        keys = k.take_error();
      } else if (auto g = LoadAuthorizedKeys(settings.security.authorized_keys_dir, settings.security.revoked);
                 !g.ok()) {
        keys = g.take_error();
      }
      if (!keys.ok()) {
        std::cerr << "despool-broker: " << keys.error().message << "\n";
        return kExitUsage;
      }
    }

    auto log_options = ResolveLogOptions(common, settings.log_level, settings.log_format);
    if (!log_options.ok()) {
      std::cerr << "despool-broker: " << log_options.error().message << "\n";
      return kExitUsage;
    }
    if (Status st = SetupLogging(*log_options); !st.ok()) {
      std::cerr << "despool-broker: " << st.error().message << "\n";
      return kExitError;
    }
    auto log = GetLogger("broker");
    for (const auto& ep : *exposed) {
      log->warn("--insecure: endpoint bound without CURVE, anyone who reaches it may publish endpoint={}", ep);
    }

    const int stop_fd = BlockStopSignals();
    if (stop_fd < 0) {
      log->error("cannot set up signal handling");
      return kExitError;
    }
    auto opened = broker::OpenSqliteStore(settings.store_path, settings.store);
    if (!opened.ok()) {
      log->error("cannot open store path={} error={}", LogQuote(settings.store_path),
                 LogQuote(opened.error().message));
      std::cerr << "despool-broker: cannot open store " << settings.store_path << ": "
                << opened.error().message << "\n";
      ::close(stop_fd);
      return kExitError;
    }
    // A second connection for reads lets commits run on their own thread (pipelined).
    std::unique_ptr<broker::Store> reader;
    if (settings.commit_thread) {
      auto r = broker::OpenSqliteStore(settings.store_path, settings.store);
      if (!r.ok()) {
        log->error("cannot open store path={} error={}", LogQuote(settings.store_path),
                   LogQuote(r.error().message));
        ::close(stop_fd);
        return kExitError;
      }
      reader = std::move(r).value();
    }
    int rc = kExitOk;
    {
      broker::Broker b(settings, std::move(opened).value(), std::move(reader));
      if (Status st = b.Start(); !st.ok()) {
        log->error("cannot start error={}", LogQuote(st.error().message));
        std::cerr << "despool-broker: " << st.error().message << "\n";
        rc = kExitError;
      } else if (Status run = b.Run(stop_fd); !run.ok()) {
        log->error("stopped on error error={}", LogQuote(run.error().message));
        std::cerr << "despool-broker: " << run.error().message << "\n";
        rc = kExitError;
      }
    }
    ::close(stop_fd);
    return rc;
  });
}
