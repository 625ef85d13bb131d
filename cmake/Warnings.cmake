# despool_warnings: an interface target every project target links to.
add_library(despool_warnings INTERFACE)
target_compile_options(despool_warnings INTERFACE -Wall -Wextra -Wpedantic)
# GCC 12 at -O2 reports impossible -Wrestrict overlaps inside libstdc++'s own string assignment
# (`s = "."` in scan.cpp; GCC bug 105329, fixed in 13), so Release builds were never clean.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(despool_warnings INTERFACE -Wno-restrict)
endif()
