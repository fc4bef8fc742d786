// Internal: protects stb_image against the inputs that break the version we decode with (Debian
// 12's libstb, stb_image 2.27). Found by fuzzing (tools/fuzz.sh, target image); each crashing
// input is a regression test under tests/fuzz/regressions/image/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tb::data::detail {

// Raises tb::Error naming `path` and the defect for inputs stb_image 2.27 mishandles (memory
// errors, undefined behaviour, or pixels read from beyond the file); rewrites harmless
// structures it mishandles into equivalent ones. Call before any stbi_* function sees `bytes`.
void guard_image_bytes(const std::string& path, std::vector<uint8_t>& bytes);

// A binary PGM/PPM (P5/P6) with 16-bit samples, decoded here: stb_image 2.27 reads the samples in
// host byte order (PNM is big-endian: 0x1234 came out as 0x3412) and, asked for another channel
// count, converts them with its 8-bit routine and reads past that buffer. As stb_image does for
// 16-bit PNG, samples become 8-bit by keeping the high byte, and channels are converted with
// stb_image's rules (gray = (77 r + 150 g + 29 b) >> 8, alpha 255). nullopt for any other file.
// Only valid after guard_image_bytes (which checks the header and the file length).
struct Pixels {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> data; // [height, width, channels]
};
std::optional<Pixels> decode_pnm16(const std::vector<uint8_t>& bytes, int channels);

} // namespace tb::data::detail
