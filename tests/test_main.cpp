// main() of every GoogleTest binary: points DESPOOL_BIN_DIR / DESPOOL_SOURCE_DIR at this build's
// binaries and source tree unless the environment already says otherwise, so a test binary
// run by hand behaves as under ctest.
#include <gtest/gtest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  setenv("DESPOOL_BIN_DIR", DESPOOL_TEST_BIN_DIR, /*overwrite=*/0);
  setenv("DESPOOL_SOURCE_DIR", DESPOOL_TEST_SOURCE_DIR, /*overwrite=*/0);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
