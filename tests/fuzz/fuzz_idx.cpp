// libFuzzer target: the IDX reader (tb::data::IdxDataset), plain and gzip-compressed files.
// The input layout and what counts as a bug: tests/fuzz/harness.h. Run with tools/fuzz.sh.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tbfuzz::run_idx(data, size); // accepted or rejected alike: only crashes count
  return 0;
}
