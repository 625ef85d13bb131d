// despoolctl: publish, inspect, watch and operate despool. The logic lives in ctl/src/app.cpp.
#include <unistd.h>

#include <iostream>

#include "despool/ctl/app.h"

int main(int argc, char** argv) {
  despool::ctl::Io io{std::cout, std::cerr, isatty(STDOUT_FILENO) == 1, STDOUT_FILENO};
  return despool::ctl::RunDespoolctl(argc, argv, io);
}
