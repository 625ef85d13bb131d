#include "despool/broker/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace despool::broker {
namespace {

const std::vector<double> kLatencyBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const std::vector<double> kBatchBounds = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
  return std::string(buf, r.ptr);
}

std::string Num(std::uint64_t v) { return std::to_string(v); }

std::string Label(std::string_view name, std::string_view value) {
  return std::string(name) + "=\"" + EscapeLabelValue(value) + "\"";
}

// Builds the exposition text: one HELP/TYPE header per family, then its samples.
class Writer {
 public:
  void Family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  template <typename V>
  void Sample(std::string_view name, const std::string& labels, V value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    out_ += Num(value);
    out_ += '\n';
  }
  template <typename V>
  void One(std::string_view name, std::string_view type, std::string_view help, V value) {
    Family(name, type, help);
    Sample(name, "", value);
  }
  void Hist(std::string_view name, std::string_view help, const std::string& labels, const Histogram::Data& d) {
    Family(name, "histogram", help);
    const std::string prefix = labels.empty() ? "" : labels + ",";
    const std::string bucket = std::string(name) + "_bucket";
    for (std::size_t i = 0; i < d.bounds.size(); ++i) {
      Sample(bucket, prefix + Label("le", Num(d.bounds[i])), d.cumulative[i]);
    }
    Sample(bucket, prefix + Label("le", "+Inf"), d.count);
    Sample(std::string(name) + "_sum", labels, d.sum);
    Sample(std::string(name) + "_count", labels, d.count);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

template <std::size_t N, typename Enum>
void LabelledCounter(Writer& w, std::string_view name, std::string_view help, std::string_view label,
                     const std::array<std::atomic<std::uint64_t>, N>& values) {
  w.Family(name, "counter", help);
  for (std::size_t i = 0; i < N; ++i) {
    w.Sample(name, Label(label, msg::ToString(static_cast<Enum>(i))), values[i].load(std::memory_order_relaxed));
  }
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  buckets_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Data Histogram::Read() const {
  Data d;
  d.bounds = bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    if (i < bounds_.size()) d.cumulative.push_back(running);
  }
  // count is the bucket total, so +Inf always equals _count however the reads interleave.
  d.count = running;
  d.cumulative.push_back(running);
  d.sum = sum_.load(std::memory_order_relaxed);
  return d;
}

BrokerMetrics::BrokerMetrics()
    : submit_ack_seconds(kLatencyBounds), commit_seconds(kLatencyBounds), commit_batch_jobs(kBatchBounds) {}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string RenderMetrics(const BrokerMetrics& m, const Snapshot& snap, const msg::StatsReply& stats,
                          bool store_up, std::int64_t now_ms) {
  Writer w;
  w.One("despool_store_up", "gauge", "1 when the store could be read for this scrape, else 0.",
        std::uint64_t{store_up ? 1u : 0u});
  w.Family("despool_jobs", "gauge", "Jobs by state, as the broker holds them (committed).");
  for (const auto& c : stats.jobs_by_state) w.Sample("despool_jobs", Label("state", msg::ToString(c.state)), c.count);
  w.One("despool_queue_depth", "gauge", "Queued jobs (waiting for a worker).", stats.queue_depth);
  w.One("despool_retry_backlog", "gauge", "Deferred jobs waiting for a delayed retry.", stats.retry_backlog);
  if (store_up) {
    double oldest = 0;
    if (stats.oldest_queued_at_ms) {
      oldest = std::max<double>(0, static_cast<double>(now_ms - *stats.oldest_queued_at_ms) / 1000.0);
    }
    w.One("despool_oldest_queued_age_seconds", "gauge",
          "Age of the oldest queued job (since it became queued); 0 when none is queued.", oldest);
  }

  const char* const kDpGauges[3][2] = {{"despool_dp_queued_jobs", "Queued jobs per DP."},
                                       {"despool_dp_running_jobs", "Running jobs per DP."},
                                       {"despool_dp_deferred_jobs", "Deferred jobs per DP."}};
  for (std::size_t k = 0; k < 3; ++k) {
    w.Family(kDpGauges[k][0], "gauge", kDpGauges[k][1]);
    for (const auto& dp : stats.dps) {
      const std::uint64_t n = k == 0 ? dp.queued : k == 1 ? dp.running : dp.deferred;
      w.Sample(kDpGauges[k][0], Label("dp", dp.dp), n);
    }
  }
  w.Family("despool_dp_online", "gauge", "1 when at least one live worker serves the DP.");
  for (const auto& dp : stats.dps) w.Sample("despool_dp_online", Label("dp", dp.dp), std::uint64_t{dp.online ? 1u : 0u});

  Histogram::Data late;
  late.bounds = snap.lateness_bounds;
  late.cumulative = snap.lateness_cumulative;
  late.count = snap.lateness_count;
  late.sum = snap.lateness_sum_seconds;
  w.Hist("despool_due_lateness_seconds", "How late deferred jobs became queued after their due time.", "", late);
  w.Hist("despool_submit_ack_seconds", "Submit received to durable ack sent.", "", m.submit_ack_seconds.Read());
  w.Hist("despool_store_commit_seconds", "Store transaction duration, fsync included.", "", m.commit_seconds.Read());
  w.Hist("despool_store_commit_batch_jobs", "Job rows written per store transaction.", "",
         m.commit_batch_jobs.Read());

  LabelledCounter<kJobKinds, msg::JobKind>(w, "despool_dispatches_total", "Jobs sent to workers, by kind.", "kind",
                                           m.dispatches);
  LabelledCounter<kOutcomes, msg::Outcome>(w, "despool_results_total",
                                           "Job results received from workers, by outcome (stale ones too).",
                                           "outcome", m.results);
  LabelledCounter<kJobStates, msg::JobState>(w, "despool_job_transitions_total",
                                             "Committed job state changes, by the new state "
                                             "(state=\"deferred\" counts deferrals).",
                                             "state", m.transitions);
  LabelledCounter<kEventKinds, msg::EventKind>(w, "despool_events_published_total",
                                               "Events sent on the PUB socket, by kind.", "kind", m.events_published);
  w.One("despool_events_dropped_total", "counter",
        "Events the PUB socket refused (per-subscriber high-water-mark drops are not visible here).",
        m.events_dropped.load(std::memory_order_relaxed));
  w.One("despool_last_event_seq", "gauge", "Sequence number of the newest stored state event.", snap.stats.last_event_seq);
  w.One("despool_active_jobs", "gauge", "Queued, running and deferred jobs held by the broker loop.",
        snap.active_jobs);

  w.One("despool_workers_connected", "gauge", "Live registered workers.",
        static_cast<std::uint64_t>(snap.workers.size()));
  struct WorkerGauge {
    const char* name;
    const char* help;
    std::uint64_t (*get)(const WorkerSnapshot&);
  };
  const WorkerGauge gauges[] = {
      {"despool_worker_capacity", "Jobs a worker runs at once.", [](const WorkerSnapshot& s) -> std::uint64_t {
         return s.info.capacity;
       }},
      {"despool_worker_running", "Jobs running on a worker.", [](const WorkerSnapshot& s) -> std::uint64_t {
         return s.info.running;
       }},
      {"despool_worker_credit", "Free slots of a worker (capacity - running; 0 while draining).",
       [](const WorkerSnapshot& s) -> std::uint64_t {
         return s.info.draining || s.info.running >= s.info.capacity ? 0 : s.info.capacity - s.info.running;
       }},
      {"despool_worker_draining", "1 while a worker is draining.", [](const WorkerSnapshot& s) -> std::uint64_t {
         return s.info.draining ? 1 : 0;
       }},
  };
  for (const auto& g : gauges) {
    w.Family(g.name, "gauge", g.help);
    for (const auto& ws : snap.workers) w.Sample(g.name, Label("worker", ws.info.name), g.get(ws));
  }
  struct WorkerCounter {
    const char* name;
    const char* help;
    double (*get)(const msg::WorkerMetrics&);
  };
  const WorkerCounter counters[] = {
      {"despool_worker_refreshes_total", "Refreshes that changed a DP, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.refreshes); }},
      {"despool_worker_refresh_seconds_total", "Time spent refreshing, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.refresh_ms_total) / 1e3; }},
      {"despool_worker_bytes_copied_total", "Bytes copied into staging, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.bytes_copied); }},
      {"despool_worker_bytes_linked_total", "Bytes reused from the live tree, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.bytes_linked); }},
      {"despool_worker_inuse_checks_total", "In-use checks, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.inuse_checks); }},
      {"despool_worker_inuse_check_seconds_total", "Time spent in in-use checks, reported by the worker.",
       [](const msg::WorkerMetrics& x) { return static_cast<double>(x.inuse_check_us_total) / 1e6; }},
  };
  for (const auto& c : counters) {
    w.Family(c.name, "counter", c.help);
    for (const auto& ws : snap.workers) {
      if (ws.metrics) w.Sample(c.name, Label("worker", ws.info.name), c.get(*ws.metrics));
    }
  }

  w.One("despool_loop_rounds_total", "counter", "Broker loop rounds that handled messages or timers.",
        snap.loop_rounds);
  w.One("despool_loop_messages_total", "counter", "Messages the broker loop read from both ROUTER sockets.",
        snap.loop_messages);
  w.One("despool_http_requests_total", "counter", "Requests served by this HTTP endpoint.",
        m.http_requests.load(std::memory_order_relaxed));
  w.One("despool_snapshot_age_seconds", "gauge", "Age of the loop snapshot this scrape used.",
        std::max<double>(0, static_cast<double>(now_ms - snap.taken_at_ms) / 1000.0));
  return w.Take();
}

}  // namespace despool::broker
