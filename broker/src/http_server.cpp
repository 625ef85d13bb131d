#include "despool/broker/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "dashboard_assets.h"
#include "despool/common/logging.h"
#include "despool/common/names.h"
#include "despool/common/time.h"
#include "despool/ctl/output.h"

namespace despool::broker {
namespace {

using nlohmann::json;

constexpr std::uint32_t kDefaultPage = 100;
constexpr std::uint32_t kMaxPage = 1000;
constexpr std::uint64_t kMaxOffset = 1'000'000;

// A literal loopback address (127.0.0.0/8, ::1) or "localhost"; names are not resolved here.
bool IsLoopback(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

// Compares without an early exit, so response time does not reveal how much of a guess matched.
bool SameSecret(const std::string& given, const std::string& expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ expected[i % std::max<std::size_t>(1, expected.size())]);
  }
  return diff == 0;
}

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_header("Cache-Control", "no-store");
  res.set_content(ctl::DumpJson(body, -1), "application/json");
}

void SendError(httplib::Response& res, int status, const char* kind, const std::string& message) {
  SendJson(res, status, json{{"error", kind}, {"message", message}});
}

// Checks a request's query parameters: only `allowed` names, each at most once.
bool CheckParams(const httplib::Request& req, httplib::Response& res, std::initializer_list<std::string_view> allowed) {
  std::set<std::string> seen;
  for (const auto& [key, value] : req.params) {
    bool ok = false;
    for (auto a : allowed) ok = ok || key == a;
    if (!ok) {
      std::string names;
      for (auto a : allowed) names += (names.empty() ? "" : ", ") + std::string(a);
      SendError(res, 400, "bad-request",
                "unknown query parameter '" + key + "'" + (names.empty() ? " (none accepted)" : " (accepted: " + names + ")"));
      return false;
    }
    if (!seen.insert(key).second) {
      SendError(res, 400, "bad-request", "query parameter '" + key + "' given more than once");
      return false;
    }
  }
  return true;
}

// An unsigned integer parameter within [min, max]; absent: `fallback`. False after a 400.
bool UintParam(const httplib::Request& req, httplib::Response& res, const char* name, std::uint64_t min,
               std::uint64_t max, std::uint64_t fallback, std::uint64_t* out) {
  *out = fallback;
  if (!req.has_param(name)) return true;
  const std::string v = req.get_param_value(name);
  std::uint64_t n = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || r.ec != std::errc() || r.ptr != v.data() + v.size() || n < min || n > max) {
    SendError(res, 400, "bad-request",
              std::string("'") + name + "' must be an integer from " + std::to_string(min) + " to " +
                  std::to_string(max) + ", got '" + v + "'");
    return false;
  }
  *out = n;
  return true;
}

// A name parameter checked by `validate` (DP names, package ids). False after a 400.
bool NameParam(const httplib::Request& req, httplib::Response& res, const char* name,
               Status (*validate)(std::string_view), std::optional<std::string>* out) {
  if (!req.has_param(name)) return true;
  std::string v = req.get_param_value(name);
  if (Status st = validate(v); !st.ok()) {
    SendError(res, 400, "bad-request", std::string("'") + name + "': " + st.error().message);
    return false;
  }
  *out = std::move(v);
  return true;
}

}  // namespace

Result<HostPort> ParseHttpListen(const std::string& listen) {
  std::string s = listen;
  if (s.rfind("http://", 0) == 0) s = s.substr(7);
  if (!s.empty() && s.back() == '/') s.pop_back();
  HostPort hp;
  std::string port;
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return MakeError(ErrorCode::kInvalidArgument, "http: expected [IPV6]:PORT, got '" + listen + "'");
    }
    hp.host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    const auto colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return MakeError(ErrorCode::kInvalidArgument, "http: expected HOST:PORT, got '" + listen + "'");
    }
    hp.host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  auto r = std::from_chars(port.data(), port.data() + port.size(), hp.port);
  if (port.empty() || r.ec != std::errc() || r.ptr != port.data() + port.size() || hp.port < 0 || hp.port > 65535 ||
      hp.host.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "http: expected HOST:PORT with a port from 0 to 65535, got '" +
                                                      listen + "'");
  }
  return hp;
}

Status ValidateHttpOptions(const HttpOptions& o) {
  DESPOOL_ASSIGN_OR_RETURN(HostPort hp, ParseHttpListen(o.listen));
  if (!IsLoopback(hp.host) && o.token.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "http: listening on " + hp.host + " (not loopback) needs a bearer token ([http] token)");
  }
  return Status::Ok();
}

class HttpServer::Impl {
 public:
  Impl(const HttpOptions& o, std::unique_ptr<Store> reader, BrokerMetrics* metrics, const SnapshotBox* snapshots)
      : opts_(o), reader_(std::move(reader)), metrics_(metrics), snapshots_(snapshots), log_(GetLogger("http")) {}

  ~Impl() {
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

  Status Start() {
    DESPOOL_ASSIGN_OR_RETURN(HostPort hp, ParseHttpListen(opts_.listen));
    Routes();
    // Idle keep-alive connections hold a pool thread each: let them go quickly.
    server_.set_keep_alive_timeout(2);
    server_.set_keep_alive_max_count(100);
    server_.set_read_timeout(5, 0);
    server_.set_write_timeout(5, 0);
    int port = hp.port;
    if (port == 0) {
      port = server_.bind_to_any_port(hp.host);
      if (port < 0) return MakeError(ErrorCode::kUnavailable, "http: cannot bind " + hp.host + ":0");
    } else if (!server_.bind_to_port(hp.host, port)) {
      return MakeError(ErrorCode::kUnavailable, "http: cannot bind " + opts_.listen);
    }
    url_ = "http://" + (hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host) + ":" +
           std::to_string(port);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the accept loop runs: wait for it so the destructor can stop it.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!server_.is_running()) {
      if (std::chrono::steady_clock::now() > deadline) return MakeError(ErrorCode::kInternal, "http: server did not start");
      std::this_thread::yield();
    }
    log_->info("http listening url={} auth={}", url_, opts_.token.empty() ? "none" : "bearer");
    return Status::Ok();
  }

  const std::string& url() const { return url_; }

 private:
  void Routes() {
    server_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      metrics_->http_requests.fetch_add(1, std::memory_order_relaxed);
      if (opts_.token.empty() || !NeedsAuth(req.path)) return httplib::Server::HandlerResponse::Unhandled;
      if (SameSecret(req.get_header_value("Authorization"), "Bearer " + opts_.token)) {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      res.set_header("WWW-Authenticate", "Bearer");
      SendError(res, 401, "not-authorized", "a bearer token is required (Authorization: Bearer TOKEN)");
      return httplib::Server::HandlerResponse::Handled;
    });
    server_.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                      httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      SendError(res, res.status, res.status == 404 ? "not-found" : "error",
                res.status == 404 ? "no such resource: " + req.path : "request failed");
      return httplib::Server::HandlerResponse::Handled;
    }));
    server_.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log_->error("http handler failed path={} error={}", LogQuote(req.path), LogQuote(what));
      SendError(res, 500, "internal", "internal error");
    });

    server_.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (!CheckParams(req, res, {})) return;
      auto snap = snapshots_->Get();
      msg::StatsReply stats = snap->stats;
      bool store_up = false;
      if (reader_) {
        auto s = StatsOf(*snap);
        if (s.ok()) {
          stats = std::move(s).value();
          store_up = true;
        } else {
          log_->warn("metrics: store read failed error={}", LogQuote(s.error().message));
        }
      }
      res.set_header("Cache-Control", "no-store");
      res.set_content(RenderMetrics(*metrics_, *snap, stats, store_up, NowMs()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });

    server_.Get("/api/v1/jobs", [this](const httplib::Request& req, httplib::Response& res) { Jobs(req, res); });
    server_.Get(R"(/api/v1/jobs/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (!CheckParams(req, res, {})) return;
      const std::string id = req.matches[1];
      if (Status st = ValidateJobId(id); !st.ok()) return SendError(res, 400, "bad-request", st.error().message);
      if (!reader_) return SendError(res, 503, "unavailable", "the store is in memory: no job listings");
      std::lock_guard lock(store_mu_);
      auto r = reader_->GetJob(id);
      if (!r.ok()) return SendError(res, 503, "unavailable", "store: " + r.error().message);
      if (!*r) return SendError(res, 404, "not-found", "unknown job id " + id);
      SendJson(res, 200, ctl::JobJson((*r)->info));
    });
    server_.Get("/api/v1/workers", [this](const httplib::Request& req, httplib::Response& res) {
      if (!CheckParams(req, res, {})) return;
      auto snap = snapshots_->Get();
      json a = json::array();
      for (const auto& w : snap->workers) a.push_back(ctl::WorkerJson(w.info));
      SendJson(res, 200, a);
    });
    server_.Get("/api/v1/stats", [this](const httplib::Request& req, httplib::Response& res) {
      if (!CheckParams(req, res, {})) return;
      msg::StatsReply stats;
      if (!ReadStats(res, &stats)) return;
      SendJson(res, 200, ctl::StatsJson(stats));
    });
    server_.Get("/api/v1/dps", [this](const httplib::Request& req, httplib::Response& res) {
      if (!CheckParams(req, res, {})) return;
      msg::StatsReply stats;
      if (!ReadStats(res, &stats)) return;
      SendJson(res, 200, ctl::StatsJson(stats)["dps"]);
    });
    server_.Get("/api/v1/events", [this](const httplib::Request& req, httplib::Response& res) { Events(req, res); });

    for (const auto& asset : DashboardAssets()) {
      const WebAsset* a = &asset;
      auto serve = [a](const httplib::Request&, httplib::Response& res) {
        res.set_header("Cache-Control", "no-cache");
        res.set_content(a->body.data(), a->body.size(), a->content_type);
      };
      server_.Get(a->path, serve);
      if (a->path == "/index.html") server_.Get("/", serve);
    }
  }

  static bool NeedsAuth(const std::string& path) {
    return path == "/metrics" || path.rfind("/api/", 0) == 0;
  }

  // The Core's counts from the snapshot plus the oldest queued job from the store (an index
  // lookup): counting the jobs table per request cost a full scan with a million jobs parked.
  Result<msg::StatsReply> StatsOf(const Snapshot& snap) {
    msg::StatsReply stats = snap.stats;
    std::lock_guard lock(store_mu_);
    DESPOOL_ASSIGN_OR_RETURN(stats.oldest_queued_at_ms, reader_->OldestQueuedAt());
    return stats;
  }

  bool ReadStats(httplib::Response& res, msg::StatsReply* out) {
    if (!reader_) {
      SendError(res, 503, "unavailable", "the store is in memory: no counts");
      return false;
    }
    auto snap = snapshots_->Get();
    auto stats = StatsOf(*snap);
    if (!stats.ok()) {
      SendError(res, 503, "unavailable", "store: " + stats.error().message);
      return false;
    }
    *out = std::move(stats).value();
    return true;
  }

  // GET /api/v1/jobs?dp=&package=&state=&limit=&offset= : the `status --json` array, ordered as
  // `status` lists (non-terminal oldest change first, then terminal newest first). A full page
  // carries X-Next-Offset.
  void Jobs(const httplib::Request& req, httplib::Response& res) {
    if (!CheckParams(req, res, {"dp", "package", "state", "limit", "offset"})) return;
    JobFilter f;
    if (!NameParam(req, res, "dp", ValidateDpName, &f.dp)) return;
    if (!NameParam(req, res, "package", ValidatePackageId, &f.package)) return;
    if (req.has_param("state")) {
      msg::JobState st;
      const std::string v = req.get_param_value("state");
      if (!msg::ParseJobState(v, &st)) {
        return SendError(res, 400, "bad-request",
                         "'state' must be one of queued, running, deferred, applied, up-to-date, superseded, "
                         "cancelled, dead; got '" + v + "'");
      }
      f.state = st;
    }
    std::uint64_t limit = 0, offset = 0;
    if (!UintParam(req, res, "limit", 1, kMaxPage, kDefaultPage, &limit)) return;
    if (!UintParam(req, res, "offset", 0, kMaxOffset, 0, &offset)) return;
    // The store lists from the start: a page at `offset` reads offset + limit rows (offsets are
    // capped so a deep page stays bounded; filters narrow what is read).
    f.limit = static_cast<std::uint32_t>(offset + limit);
    if (!reader_) return SendError(res, 503, "unavailable", "the store is in memory: no job listings");
    Result<std::vector<JobRecord>> r = std::vector<JobRecord>{};
    {
      std::lock_guard lock(store_mu_);
      r = reader_->ListJobs(f);
    }
    if (!r.ok()) return SendError(res, 503, "unavailable", "store: " + r.error().message);
    json a = json::array();
    for (std::size_t i = offset; i < r->size(); ++i) a.push_back(ctl::JobJson((*r)[i].info));
    if (r->size() == offset + limit) res.set_header("X-Next-Offset", std::to_string(offset + limit));
    SendJson(res, 200, a);
  }

  // GET /api/v1/events?since=&dp=&package=&limit= : `watch --json` objects, oldest first.
  void Events(const httplib::Request& req, httplib::Response& res) {
    if (!CheckParams(req, res, {"since", "dp", "package", "limit"})) return;
    std::optional<std::string> dp, package;
    if (!NameParam(req, res, "dp", ValidateDpName, &dp)) return;
    if (!NameParam(req, res, "package", ValidatePackageId, &package)) return;
    std::uint64_t since = 0, limit = 0;
    if (!UintParam(req, res, "since", 0, (std::uint64_t{1} << 53) - 1, 0, &since)) return;
    if (!UintParam(req, res, "limit", 1, kMaxPage, kDefaultPage, &limit)) return;
    if (!reader_) return SendError(res, 503, "unavailable", "the store is in memory: no events");
    Result<EventsPage> page = EventsPage{};
    {
      std::lock_guard lock(store_mu_);
      page = reader_->EventsSince(since, static_cast<std::uint32_t>(limit), dp, package);
    }
    if (!page.ok()) return SendError(res, 503, "unavailable", "store: " + page.error().message);
    json a = json::array();
    for (const auto& e : page->events) a.push_back(ctl::EventJson(e));
    res.set_header("X-Oldest-Seq", std::to_string(page->oldest_seq));
    res.set_header("X-Last-Seq", std::to_string(page->last_seq));
    SendJson(res, 200, a);
  }

  HttpOptions opts_;
  std::unique_ptr<Store> reader_;
  std::mutex store_mu_;  // one SQLite connection, one HTTP thread at a time
  BrokerMetrics* metrics_;
  const SnapshotBox* snapshots_;
  std::shared_ptr<spdlog::logger> log_;
  httplib::Server server_;
  std::thread thread_;
  std::string url_;
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpOptions& options, std::unique_ptr<Store> reader,
                                                      BrokerMetrics* metrics, const SnapshotBox* snapshots) {
  DESPOOL_RETURN_IF_ERROR(ValidateHttpOptions(options));
  auto impl = std::make_unique<Impl>(options, std::move(reader), metrics, snapshots);
  DESPOOL_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

const std::string& HttpServer::url() const { return impl_->url(); }

}  // namespace despool::broker
