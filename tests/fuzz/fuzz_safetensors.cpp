// libFuzzer target: the safetensors reader (tb::load_safetensors), with a save/load round trip of what it accepts.
// The input layout and what counts as a bug: tests/fuzz/harness.h. Run with tools/fuzz.sh.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tbfuzz::run_safetensors(data, size); // accepted or rejected alike: only crashes count
  return 0;
}
