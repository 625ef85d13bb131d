#include "despool/workers/service/release_watcher.h"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "despool/common/logging.h"

namespace despool::workers::service {
namespace {

constexpr std::uint32_t kWatchMask =
    IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW;

constexpr int kMaxQuickReprobes = 5;

int PidfdOpen(std::int64_t pid) {
  // glibc 2.36's <sys/pidfd.h> lacks extern "C" (FIELD-NOTES): use the raw syscall.
  return static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
}

}  // namespace

ReleaseWatcher::ReleaseWatcher(ReleaseWatcherOptions options, std::unique_ptr<InUseProbe> probe)
    : options_(options), probe_(std::move(probe)) {}

ReleaseWatcher::~ReleaseWatcher() {
  for (auto& [id, job] : jobs_) ClosePidfds(job);
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
}

Status ReleaseWatcher::Init() {
  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) return SysError("inotify_init1", errno);
  return Status::Ok();
}

bool ReleaseWatcher::Watch(const WatchRequest& request, Clock::time_point now) {
  Drop(request.job_id);
  if (request.paths.empty()) return false;
  if (request.paths.size() + wd_jobs_.size() > options_.max_watches) return false;
  Job& job = jobs_[request.job_id];
  job.attempt = request.attempt;
  job.base_dir = request.base_dir;
  job.paths = request.paths;
  job.started = now;
  job.last_probe = now - options_.debounce;
  // Probe once right away: the files may have been released between the engine's check and
  // the watches being in place (no event would ever come for that).
  job.next_probe = now;
  AddWatches(request.job_id, job);
  SetHolders(job, request.holders);
  return true;
}

void ReleaseWatcher::AddWatches(const std::string& id, Job& job) {
  if (inotify_fd_ < 0) return;
  for (const auto& rel : job.paths) {
    if (wd_jobs_.size() >= options_.max_watches) break;
    const std::string full = job.base_dir + "/" + rel;
    const int wd = ::inotify_add_watch(inotify_fd_, full.c_str(), kWatchMask);
    if (wd < 0) continue;  // gone already (the probe will say) or out of watches
    job.wds.insert(wd);
    wd_jobs_[wd].insert(id);
  }
}

bool ReleaseWatcher::SetHolders(Job& job, const std::vector<InUseHolder>& holders) {
  bool lost_holder = false;
  std::set<std::int64_t> wanted;
  std::set<std::string> covered;
  for (const auto& h : holders) {
    if (h.pid <= 0) continue;
    wanted.insert(h.pid);
    covered.insert(h.path);
  }
  for (auto it = job.pidfds.begin(); it != job.pidfds.end();) {
    if (wanted.count(it->first) == 0) {
      lost_holder = true;
      ::close(it->second);
      --pidfd_count_;
      it = job.pidfds.erase(it);
    } else {
      ++it;
    }
  }
  bool all_pidfds = true;
  for (std::int64_t pid : wanted) {
    if (job.pidfds.count(pid) > 0) continue;
    if (pidfd_count_ >= options_.max_pidfds) {
      all_pidfds = false;
      break;
    }
    const int fd = PidfdOpen(pid);
    if (fd < 0) {
      // ESRCH: it exited already; anything else: cannot watch it.
      if (errno != ESRCH) all_pidfds = false;
      continue;
    }
    job.pidfds.emplace(pid, fd);
    ++pidfd_count_;
  }
  // A path nobody was named for may be mapped or executing by an unseen process: no close
  // event can be relied on for it, so re-probe periodically.
  bool uncovered = !all_pidfds;
  for (const auto& p : job.paths) {
    if (covered.count(p) == 0) uncovered = true;
  }
  job.uncovered = uncovered;
  return lost_holder;
}

void ReleaseWatcher::ClosePidfds(Job& job) {
  for (auto& [pid, fd] : job.pidfds) {
    ::close(fd);
    --pidfd_count_;
  }
  job.pidfds.clear();
}

void ReleaseWatcher::RemoveWatches(const std::string& id, Job& job) {
  for (int wd : job.wds) {
    auto it = wd_jobs_.find(wd);
    if (it == wd_jobs_.end()) continue;
    it->second.erase(id);
    if (it->second.empty()) {
      if (inotify_fd_ >= 0) ::inotify_rm_watch(inotify_fd_, wd);
      wd_jobs_.erase(it);
    }
  }
  job.wds.clear();
}

void ReleaseWatcher::Drop(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  RemoveWatches(job_id, it->second);
  ClosePidfds(it->second);
  jobs_.erase(it);
}

void ReleaseWatcher::Clear() {
  while (!jobs_.empty()) Drop(jobs_.begin()->first);
}

void ReleaseWatcher::AppendPollItems(std::vector<zmq_pollitem_t>& items) {
  inotify_index_.reset();
  pid_items_.clear();
  if (inotify_fd_ >= 0 && !wd_jobs_.empty()) {
    inotify_index_ = items.size();
    items.push_back({nullptr, inotify_fd_, ZMQ_POLLIN, 0});
  }
  for (const auto& [id, job] : jobs_) {
    for (const auto& [pid, fd] : job.pidfds) {
      pid_items_.push_back({items.size(), id, pid});
      items.push_back({nullptr, fd, ZMQ_POLLIN, 0});
    }
  }
}

void ReleaseWatcher::Trigger(const std::string& id, Clock::time_point now) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  Job& job = it->second;
  const Clock::time_point earliest = std::max(now, job.last_probe + options_.debounce);
  if (earliest < job.next_probe) job.next_probe = earliest;
}

void ReleaseWatcher::ReadInotify(Clock::time_point now, bool discard_closes) {
  if (inotify_fd_ < 0) return;
  alignas(inotify_event) char buf[16 * (sizeof(inotify_event) + NAME_MAX + 1)];
  for (;;) {
    const ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) return;  // EAGAIN: drained
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      auto it = wd_jobs_.find(ev->wd);
      if (it == wd_jobs_.end()) continue;
      const std::set<std::string> jobs = it->second;
      if (ev->mask & IN_IGNORED) {
        // The watch is gone (file deleted or unmounted): forget it; the probe decides.
        for (const auto& id : jobs) {
          auto j = jobs_.find(id);
          if (j != jobs_.end()) j->second.wds.erase(ev->wd);
        }
        wd_jobs_.erase(it);
      } else if (discard_closes && (ev->mask & IN_CLOSE_NOWRITE)) {
        continue;  // our own probe opening and closing the file
      }
      for (const auto& id : jobs) Trigger(id, now);
    }
  }
}

std::vector<Released> ReleaseWatcher::Process(const std::vector<zmq_pollitem_t>& items, Clock::time_point now) {
  if (inotify_index_ && *inotify_index_ < items.size() && (items[*inotify_index_].revents & ZMQ_POLLIN)) {
    ReadInotify(now, false);
  }
  for (const auto& p : pid_items_) {
    if (p.index >= items.size() || !(items[p.index].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) continue;
    auto it = jobs_.find(p.job);
    if (it == jobs_.end()) continue;
    auto fd = it->second.pidfds.find(p.pid);
    if (fd != it->second.pidfds.end()) {
      // Exited: the pidfd stays readable forever, so close it now.
      ::close(fd->second);
      --pidfd_count_;
      it->second.pidfds.erase(fd);
    }
    Trigger(p.job, now);
  }
  pid_items_.clear();
  inotify_index_.reset();

  std::vector<Released> released;
  std::vector<std::string> due, expired;
  for (auto& [id, job] : jobs_) {
    if (now - job.started > options_.max_watch_time) {
      expired.push_back(id);
    } else if (job.next_probe <= now) {
      due.push_back(id);
    }
  }
  for (const auto& id : expired) {
    GetLogger("worker")->debug("release watch expired job={}", id);
    Drop(id);
  }
  if (now - budget_window_ >= std::chrono::seconds(1)) {
    budget_window_ = now;
    budget_used_ = Clock::duration::zero();
    throttled_until_.reset();
  }
  for (const auto& id : due) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    if (budget_used_ >= options_.probe_budget_per_second) {
      throttled_until_ = budget_window_ + std::chrono::seconds(1);
      break;  // the rest stay due for the next window
    }
    const auto t0 = Clock::now();
    const bool free = Probe(id, it->second, now);
    budget_used_ += Clock::now() - t0;
    if (free) {
      released.push_back({id, it->second.attempt});
      Drop(id);
    }
  }
  if (!due.empty()) ReadInotify(now, true);
  return released;
}

bool ReleaseWatcher::Probe(const std::string& id, Job& job, Clock::time_point now) {
  job.last_probe = now;
  job.next_probe = now + (job.uncovered ? options_.reprobe_interval : options_.safety_interval);
  const int dirfd = ::open(job.base_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) {
    // The package dir is gone or unreadable: nothing of it can be held any more (or the
    // retry will say why); the hint is advisory either way.
    return errno == ENOENT;
  }
  const auto t0 = Clock::now();
  Result<InUseReport> report = probe_->Check(dirfd, job.paths);
  ::close(dirfd);
  probe_count_ += 1;
  probe_us_total_ += static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
  if (!report.ok()) {
    GetLogger("worker")->debug("release re-probe failed job={} error={}", id, LogQuote(report.error().message));
    job.uncovered = true;
    job.next_probe = now + options_.reprobe_interval;
    return false;
  }
  GetLogger("worker")->debug("release re-probe job={} complete={} in_use={} holders={} pidfds={}", id,
                             report->complete, report->in_use.size(), report->holders.size(), job.pidfds.size());
  if (report->complete && report->in_use.empty()) return true;
  if (report->complete) {
    // Watch only what is still held (fewer watches; released files need no more attention).
    job.paths = report->in_use;
    RemoveWatches(id, job);
    AddWatches(id, job);
  }
  const bool changed = SetHolders(job, report->holders);
  if (!report->complete) job.uncovered = true;
  job.next_probe = now + (job.uncovered ? options_.reprobe_interval : options_.safety_interval);
  if (changed && job.quick_reprobes < kMaxQuickReprobes) {
    // A holder went away while the file still looked in use (it may have exited during the
    // probe, taking its pidfd event with it): look again shortly rather than at the interval.
    ++job.quick_reprobes;
    job.next_probe = now + options_.debounce;
  } else if (!changed) {
    job.quick_reprobes = 0;
  }
  return false;
}

std::optional<ReleaseWatcher::Clock::time_point> ReleaseWatcher::NextDeadline() const {
  std::optional<Clock::time_point> next;
  for (const auto& [id, job] : jobs_) {
    Clock::time_point t = std::min(job.next_probe, job.started + options_.max_watch_time);
    if (!next || t < *next) next = t;
  }
  // Over the probe budget: due probes wait for the next window (no busy loop).
  if (next && throttled_until_ && *next < *throttled_until_) next = *throttled_until_;
  return next;
}

}  // namespace despool::workers::service
