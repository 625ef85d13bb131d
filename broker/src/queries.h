// Read-only frontend requests (status, workers, dead, stats, events-since), answered after the
// round's commit from the store and the Core's worker registry. Internal to the broker.
#pragma once

#include "despool/broker/core.h"
#include "despool/broker/settings.h"
#include "despool/broker/store.h"
#include "despool/messages/types.h"

namespace despool::broker {

msg::Body AnswerQuery(const msg::Body& request, Store& store, const Core& core, const BrokerSettings& settings);

}  // namespace despool::broker
