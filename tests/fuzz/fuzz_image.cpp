// libFuzzer target: image decoding (tb::data::read_image: stb_image's PNG, JPEG, BMP, GIF, TGA, PNM, ...).
// The input layout and what counts as a bug: tests/fuzz/harness.h. Run with tools/fuzz.sh.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tbfuzz::run_image(data, size); // accepted or rejected alike: only crashes count
  return 0;
}
