#include "progress_view.h"

#include <algorithm>
#include <cstdio>

#include "despool/ctl/output.h"

namespace despool::ctl {
namespace {

std::string Cut(std::string s, int columns) {
  if (static_cast<int>(s.size()) > columns - 1) s.resize(static_cast<std::size_t>(columns - 1));
  return s;
}

}  // namespace

std::string ProgressView::BarLine(const msg::JobInfo& job, const msg::Progress& p, double bytes_per_s,
                                  int columns) {
  const std::string label = job.package + " v" + std::to_string(job.version) + " @" + job.dp;
  double fraction = 0.0;
  if (p.bytes_total > 0) {
    fraction = static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
  } else if (p.files_total > 0) {
    fraction = static_cast<double>(p.files_done) / static_cast<double>(p.files_total);
  }
  fraction = std::clamp(fraction, 0.0, 1.0);
  constexpr int kWidth = 16;
  const int filled = static_cast<int>(fraction * kWidth + 0.5);
  char pct[8];
  std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(fraction * 100.0 + 0.5));
  std::string line = label + " [" + std::string(static_cast<std::size_t>(filled), '#') +
                     std::string(static_cast<std::size_t>(kWidth - filled), '-') + "] " + pct + " " +
                     std::to_string(p.files_done) + "/" + std::to_string(p.files_total) + " files " +
                     HumanBytes(p.bytes_done) + "/" + HumanBytes(p.bytes_total) + " " +
                     HumanBytes(static_cast<std::uint64_t>(std::max(bytes_per_s, 0.0))) + "/s";
  return Cut(std::move(line), columns);
}

void ProgressView::Erase() {
  if (drawn_lines_ > 0) out_ << "\r\x1b[" << drawn_lines_ << "A\x1b[J";
  drawn_lines_ = 0;
}

void ProgressView::Draw(std::int64_t now_ms) {
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [id, bar] : bars_) {
    if (bar.has_progress) {
      const double secs = std::chrono::duration<double>(now - bar.first_seen).count();
      const double rate =
          secs > 0.05 ? static_cast<double>(bar.progress.bytes_done - std::min(bar.first_bytes, bar.progress.bytes_done)) / secs
                      : 0.0;
      out_ << BarLine(bar.job, bar.progress, rate, columns_) << '\n';
    } else {
      std::string line = bar.job.package + " v" + std::to_string(bar.job.version) + " @" + bar.job.dp + " " +
                         msg::ToString(bar.job.state);
      if (auto d = JobDetail(bar.job, now_ms); !d.empty()) line += ": " + d;
      out_ << Cut(std::move(line), columns_) << '\n';
    }
    ++drawn_lines_;
  }
  out_.flush();
}

void ProgressView::OnEvent(const msg::Event& e, std::int64_t now_ms) {
  Erase();
  const std::string& id = e.job.id;
  if (e.kind == msg::EventKind::kProgress && e.progress) {
    auto& bar = bars_[id];
    if (!bar.has_progress) {
      bar.first_seen = std::chrono::steady_clock::now();
      bar.first_bytes = e.progress->bytes_done;
      bar.has_progress = true;
    }
    bar.job = e.job;
    bar.progress = *e.progress;
  } else {
    out_ << Cut(EventLine(e, now_ms), columns_ * 4) << '\n';
    if (msg::IsTerminal(e.job.state) || e.job.state == msg::JobState::kDeferred ||
        e.job.state == msg::JobState::kQueued) {
      bars_.erase(id);
    } else {
      auto& bar = bars_[id];
      bar.job = e.job;
    }
  }
  Draw(now_ms);
}

void ProgressView::Clear() {
  Erase();
  out_.flush();
}

}  // namespace despool::ctl
