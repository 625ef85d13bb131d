// Auto in-use probe: the lease probe decides what is in use (exact and fast); the /proc scan
// stands in when leases are unavailable, and names the holders of what was found in use.
#include <algorithm>
#include <atomic>

#include "despool/common/logging.h"
#include "despool/workers/inuse.h"

namespace despool::workers {
namespace {

class AutoProbe final : public InUseProbe {
 public:
  AutoProbe(std::unique_ptr<InUseProbe> lease, std::unique_ptr<InUseProbe> proc)
      : lease_(std::move(lease)), proc_(std::move(proc)) {}
  const char* name() const override { return "auto"; }

  Result<InUseReport> Check(int package_dirfd, const std::vector<std::string>& rel_paths) override {
    auto leased = lease_->Check(package_dirfd, rel_paths);
    if (!leased.ok()) {
      if (leased.error().code == ErrorCode::kInvalidArgument) return leased;  // bad paths
      // Once per probe at warn (a DP without leases would repeat it on every check).
      auto log = GetLogger("engine");
      const auto level = warned_.exchange(true) ? spdlog::level::debug : spdlog::level::warn;
      log->log(level, "in-use check: lease probe unavailable, using the /proc scan reason={}",
               LogQuote(leased.error().message));  // Leases unavailable (or failed): the /proc scan
                                                   // answers alone, completeness included.
      auto scanned = proc_->Check(package_dirfd, rel_paths);
      if (!scanned.ok()) {
        Error e = scanned.take_error();
        e.message = "in-use check impossible: " + leased.error().message + "; " + e.message;
        return e;
      }
      return scanned;
    }
    InUseReport report = std::move(leased).value();
    if (!report.complete) {
      // A lease probe that could not see everything: let the /proc scan judge all the files.
      auto scanned = proc_->Check(package_dirfd, rel_paths);
      if (!scanned.ok()) return report;  // still incomplete: never "free"
      InUseReport merged = std::move(scanned).value();
      merged.in_use.insert(merged.in_use.end(), report.in_use.begin(), report.in_use.end());
      std::sort(merged.in_use.begin(), merged.in_use.end());
      merged.in_use.erase(std::unique(merged.in_use.begin(), merged.in_use.end()),
                          merged.in_use.end());
      return merged;
    }
    if (report.in_use.empty()) return report;
    // Name the holders. The lease verdict stands even if the scan is incomplete or finds
    // nobody (a holder we cannot see, e.g. in another PID namespace): the paths are reported.
    auto scanned = proc_->Check(package_dirfd, report.in_use);
    if (scanned.ok()) {
      for (auto& h : scanned->holders) {
        if (std::binary_search(report.in_use.begin(), report.in_use.end(), h.path)) {
          report.holders.push_back(std::move(h));
        }
      }
    }
    return report;
  }

 private:
  std::unique_ptr<InUseProbe> lease_;
  std::unique_ptr<InUseProbe> proc_;
  std::atomic<bool> warned_{false};
};

}  // namespace

std::unique_ptr<InUseProbe> MakeAutoProbe(std::unique_ptr<InUseProbe> lease,
                                          std::unique_ptr<InUseProbe> proc) {
  return std::make_unique<AutoProbe>(std::move(lease), std::move(proc));
}

std::unique_ptr<InUseProbe> MakeAutoProbe() {
  return MakeAutoProbe(MakeLeaseProbe(), MakeProcProbe());
}

}  // namespace despool::workers
