// The contract's retry schedule: the n-th deferral (n >= 1) of a job waits
// uniform(base, min(max, base * 2^(n-1))) milliseconds, inclusive bounds, saturating on overflow.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "despool/broker/job_record.h"
#include "despool/messages/types.h"

namespace despool::broker {

// The upper bound of the n-th deferral's delay: min(max, base * 2^(n-1)), never below base.
std::uint64_t BackoffCeiling(std::uint64_t base_ms, std::uint64_t max_ms, std::uint32_t n);

// A delay drawn uniformly from [base, BackoffCeiling(...)].
std::uint64_t BackoffDelay(std::uint64_t base_ms, std::uint64_t max_ms, std::uint32_t n,
                           std::mt19937_64& rng);

// Fills the defaults in an instruction's policy; an error message when it is inconsistent.
bool ResolvePolicy(const msg::RetryPolicy& in, const ResolvedPolicy& defaults, ResolvedPolicy* out,
                   std::string* error);

}  // namespace despool::broker
