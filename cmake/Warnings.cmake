# despool_warnings: an interface target every project target links to.
add_library(despool_warnings INTERFACE)
target_compile_options(despool_warnings INTERFACE -Wall -Wextra -Wpedantic)
