// libFuzzer target: the CIFAR-10 / CIFAR-100 binary readers (tb::data::CIFAR10, CIFAR100).
// The input layout and what counts as a bug: tests/fuzz/harness.h. Run with tools/fuzz.sh.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tbfuzz::run_cifar(data, size); // accepted or rejected alike: only crashes count
  return 0;
}
