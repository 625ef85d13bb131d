// JSON forms of the job value types, for the store's text columns (readable with sqlite3).
// The *FromJson functions throw nlohmann::json::exception on malformed input (the store
// catches it).
// Internal to the broker library.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "despool/messages/types.h"

namespace despool::broker {

nlohmann::json HoldersToJson(const std::vector<msg::Holder>& holders);
std::vector<msg::Holder> HoldersFromJson(const nlohmann::json& j);
nlohmann::json ReportToJson(const msg::VerifyReport& r);
msg::VerifyReport ReportFromJson(const nlohmann::json& j);
nlohmann::json StatsToJson(const msg::ApplyStats& s);
msg::ApplyStats StatsFromJson(const nlohmann::json& j);

}  // namespace despool::broker
