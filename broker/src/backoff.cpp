#include "despool/broker/backoff.h"

#include <algorithm>
#include <string>

namespace despool::broker {

std::uint64_t BackoffCeiling(std::uint64_t base_ms, std::uint64_t max_ms, std::uint32_t n) {
  const std::uint32_t shift = n == 0 ? 0 : n - 1;
  std::uint64_t ceiling = base_ms;
  if (base_ms != 0) {
    // base * 2^shift, saturating: once it passes max the exact value no longer matters.
    for (std::uint32_t i = 0; i < shift && ceiling < max_ms; ++i) {
      ceiling = ceiling > UINT64_MAX / 2 ? UINT64_MAX : ceiling * 2;
    }
  }
  return std::max(base_ms, std::min(max_ms, ceiling));
}

std::uint64_t BackoffDelay(std::uint64_t base_ms, std::uint64_t max_ms, std::uint32_t n,
                           std::mt19937_64& rng) {
  std::uniform_int_distribution<std::uint64_t> d(base_ms, BackoffCeiling(base_ms, max_ms, n));
  return d(rng);
}

bool ResolvePolicy(const msg::RetryPolicy& in, const ResolvedPolicy& defaults, ResolvedPolicy* out,
                   std::string* error) {
  ResolvedPolicy p = defaults;
  if (in.retry_base_ms && *in.retry_base_ms != 0) p.retry_base_ms = *in.retry_base_ms;
  if (in.retry_max_ms && *in.retry_max_ms != 0) p.retry_max_ms = *in.retry_max_ms;
  if (in.max_attempts && *in.max_attempts != 0) p.max_attempts = *in.max_attempts;
  if (in.on_exhausted) p.on_exhausted = *in.on_exhausted;
  // A base given alone above the default max raises the max with it rather than failing.
  if (in.retry_base_ms && !in.retry_max_ms && p.retry_max_ms < p.retry_base_ms) p.retry_max_ms = p.retry_base_ms;
  constexpr std::uint64_t kYearMs = 366ull * 24 * 3600 * 1000;
  if (p.retry_base_ms > kYearMs || p.retry_max_ms > kYearMs) {
    *error = "retry delays must not exceed one year";
    return false;
  }
  if (p.retry_max_ms < p.retry_base_ms) {
    *error = "retry max (" + std::to_string(p.retry_max_ms) + " ms) is below retry base (" +
             std::to_string(p.retry_base_ms) + " ms)";
    return false;
  }
  if (p.max_attempts > 1'000'000) {
    *error = "max attempts must be at most 1000000";
    return false;
  }
  *out = p;
  return true;
}

}  // namespace despool::broker
