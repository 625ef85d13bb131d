# Every dependency comes from a Debian package (scripts/setup installs them).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
# libzmq ships no CMake config: cppzmq's bundled FindZeroMQ uses pkg-config.
find_package(cppzmq REQUIRED)
# msgpack-cxx 4.x: target msgpackc-cxx (its config wants Boost headers: libboost-dev).
find_package(msgpack REQUIRED)
find_package(spdlog REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)  # JSON output (--json, log lines, HTTP API)
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
# The broker's HTTP endpoint (/metrics, /api/v1, dashboard): a compiled library, no CMake config.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
if(DESPOOL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
