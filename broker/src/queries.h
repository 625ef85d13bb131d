// Read-only frontend requests (status, workers, dead, stats, events-since), answered after the
// round's commit from the store and the Core's worker registry. Internal to the broker.
#pragma once

#include "despool/broker/core.h"
#include "despool/broker/settings.h"
#include "despool/broker/store.h"
#include "despool/messages/types.h"

namespace despool::broker {

// request: a frontend query, or a StatsReply made by CoreStats (completed from the store).
msg::Body AnswerQuery(const msg::Body& request, Store& store, const Core& core, const BrokerSettings& settings);

// The part of a stats reply the Core knows (counts by state and DP, workers, last event seq),
// taken when the round's batch is taken, so the counts match what that commit makes durable.
msg::StatsReply CoreStats(const Core& core);

}  // namespace despool::broker
