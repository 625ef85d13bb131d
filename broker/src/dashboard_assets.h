// The dashboard's static files (broker/web/), embedded in the binary at build time by
// broker/web/embed.cmake (no network, no CDN). Internal to the broker library.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace despool::broker {

struct WebAsset {
  std::string path;          // "/index.html", "/app.js", ...
  std::string content_type;
  std::string_view body;
};

const std::vector<WebAsset>& DashboardAssets();

}  // namespace despool::broker
