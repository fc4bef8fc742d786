// Guards for stb_image 2.27's defects (see image_guard.h). Each guard reads the structure the
// way stb_image does, at every place stb_image could read it, and refuses only inputs that
// stb_image would mishandle; later stb_image releases test the same conditions themselves.
#include "image_guard.h"

#include <tb/core.h>

#include <algorithm>
#include <climits>

namespace tb::data::detail {

namespace {

// A byte of the file, 0 past its end (as stb_image's reader returns).
uint8_t at(const std::vector<uint8_t>& b, size_t i) { return i < b.size() ? b[i] : 0; }

// stb_image takes a file for a JPEG when it starts with FF, any further FF fill bytes, then D8.
bool is_jpeg(const std::vector<uint8_t>& b) {
  size_t i = 0;
  if (at(b, i++) != 0xFF) return false;
  while (i < b.size() && b[i] == 0xFF) i++;
  return at(b, i) == 0xD8;
}

// JPEG Huffman tables, read the way stb_image 2.27 reads them, in one pass over the file:
// - DHT (define Huffman tables, marker FF C4): per table a class/id byte, 16 code-length counts
//   and as many symbol bytes as the counts add up to, at most 256. stb_image does not check the
//   sum and writes past its 257-byte code-size array. It reaches a marker only through the bytes
//   FF C4, so every such pair in the file is read as a DHT segment, as stb_image would read it.
//   A real JPEG holds a few tables; the budget keeps a file packed with FF C4 pairs from costing
//   quadratic time (each pair's segment may span 64 KB).
// - SOS (start of scan, FF DA): the scan's components name the DC and AC tables they are decoded
//   with. stb_image keeps its tables in a malloc'd struct and never checks that a DHT defined the
//   one a scan uses: an undefined table is whatever the heap held (found by fuzzing: out-of-bounds
//   reads indexed by it). A scan is refused when no FF C4 segment before it defines a table it
//   decodes with: baseline scans use both tables of each component, progressive (SOF2) DC scans
//   the DC table (first pass only: refinements read raw bits) and AC scans the AC table.
//   (stb_image's own allocations are zeroed as well, see image_folder.cpp: a DHT that stb_image
//   skips, say inside an APP segment, then leaves a table that decodes as zeros, not garbage.)
void check_jpeg_tables(const std::string& path, const std::vector<uint8_t>& b) {
  long budget = 1 << 20;    // tables read in all
  bool defined[2][4] = {};  // [class: 0 DC, 1 AC][id]
  bool progressive = false; // the last frame header (SOFn) seen
  for (size_t m = 0; m + 1 < b.size(); m++) {
    if (b[m] != 0xFF) continue;
    const uint8_t marker = b[m + 1];
    if (marker == 0xC0 || marker == 0xC1) progressive = false;
    if (marker == 0xC2) progressive = true;
    if (marker == 0xC4) {
      size_t i = m + 4;
      long left = (long)((at(b, m + 2) << 8) | at(b, m + 3)) - 2; // segment bytes after the length
      while (left > 0 && i < b.size()) {
        TB_CHECK(--budget >= 0, "read_image: cannot decode '{}': corrupt JPEG: over {} Huffman "
                 "tables", path, 1 << 20);
        uint8_t tc = at(b, i++); // table class and id (stb_image refuses bad ones itself)
        long symbols = 0;
        for (int k = 0; k < 16; k++) symbols += at(b, i++);
        TB_CHECK(symbols <= 256, "read_image: cannot decode '{}': corrupt JPEG: a Huffman table "
                 "(DHT at byte {}) declares {} symbols, at most 256 exist", path, m, symbols);
        if ((tc >> 4) <= 1 && (tc & 15) <= 3) defined[tc >> 4][tc & 15] = true;
        i += (size_t)symbols;
        left -= 17 + symbols;
      }
    }
    if (marker != 0xDA) continue;
    // FF DA, length (2), component count n, n x (component id, DC table << 4 | AC table),
    // spectral start Ss, spectral end, successive approximation Ah << 4 | Al.
    int n = at(b, m + 4);
    size_t tail = m + 5 + 2 * (size_t)n;
    bool dc_scan = at(b, tail) == 0, first_pass = (at(b, tail + 2) >> 4) == 0;
    bool uses_dc = !progressive || (dc_scan && first_pass), uses_ac = !progressive || !dc_scan;
    for (int k = 0; k < n; k++) {
      uint8_t tables = at(b, m + 6 + 2 * (size_t)k);
      int dc = tables >> 4, ac = tables & 15;
      if (dc > 3 || ac > 3) continue; // stb_image refuses these itself
      bool dc_missing = uses_dc && !defined[0][dc], ac_missing = uses_ac && !defined[1][ac];
      TB_CHECK(!dc_missing && !ac_missing,
               "read_image: cannot decode '{}': corrupt JPEG: the scan at byte {} decodes with "
               "Huffman table {} {}, which no DHT segment before it defines",
               path, m, dc_missing ? "DC" : "AC", dc_missing ? dc : ac);
    }
  }
}

// Binary PGM/PPM header "P5|P6 <ws> width <ws> height <ws> maxval <one ws char>", with '#'
// comments, read with stb_image's rules. stb_image 2.27 parses the numbers into an int without an
// overflow check (undefined behaviour) and never checks that the samples are all there (it
// returns uninitialised memory for a short file).
struct PnmHeader {
  bool is_pnm = false;
  long long width = 0, height = 0, maxval = 0;
  int channels = 0;
  size_t data_offset = 0;
};

PnmHeader read_pnm_header(const std::string& path, const std::vector<uint8_t>& b) {
  PnmHeader h;
  if (at(b, 0) != 'P' || (at(b, 1) != '5' && at(b, 1) != '6')) return h;
  h.is_pnm = true;
  h.channels = at(b, 1) == '6' ? 3 : 1;
  size_t i = 2;                                  // next byte to read
  char c = (char)at(b, i++);                     // current character
  auto eof = [&] { return i >= b.size(); };
  auto next = [&] { c = (char)at(b, i++); };
  auto space = [&] { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; };
  auto skip_whitespace = [&] {
    for (;;) {
      while (!eof() && space()) next();
      if (eof() || c != '#') break;
      while (!eof() && c != '\n' && c != '\r') next();
    }
  };
  auto integer = [&](const char* what) {
    long long v = 0;
    while (!eof() && c >= '0' && c <= '9') {
      v = v * 10 + (c - '0');
      TB_CHECK(v <= INT_MAX, "read_image: cannot decode '{}': corrupt PNM header: the {} does not "
               "fit in an int", path, what);
      next();
    }
    return v;
  };
  skip_whitespace();
  h.width = integer("width");
  skip_whitespace();
  h.height = integer("height");
  skip_whitespace();
  h.maxval = integer("maximum value");
  h.data_offset = i;
  return h;
}

void check_pnm(const std::string& path, const std::vector<uint8_t>& b) {
  PnmHeader h = read_pnm_header(path, b);
  if (!h.is_pnm || h.width <= 0 || h.height <= 0 || h.maxval <= 0 || h.maxval > 65535) return;
  // (stb_image refuses those itself.) have >= width * height * bpp without the overflowing product:
  const unsigned long long bpp = (unsigned long long)h.channels * (h.maxval > 255 ? 2 : 1);
  const unsigned long long have = b.size() > h.data_offset ? b.size() - h.data_offset : 0;
  TB_CHECK(have / ((unsigned long long)h.width * bpp) >= (unsigned long long)h.height,
           "read_image: cannot decode '{}': truncated PNM: its header says {}×{} pixels of {} byte{} "
           "but the file holds {} bytes of samples", path, h.width, h.height, bpp, bpp == 1 ? "" : "s", have);
}

// PNG chunks (length, type, data, CRC), walked as stb_image walks them, up to IEND:
//  * stb_image 2.27 grows its IDAT buffer to a chunk's declared length before reading the chunk,
//    so a 100-byte file declaring a 2 GB chunk allocates 2 GB: a chunk running past the end of
//    the file is refused (stb_image fails on such a file later anyway);
//  * it copies a zero-length IDAT that comes before any image data into a null buffer
//    (memcpy(NULL, .., 0): undefined behaviour). Empty IDAT chunks carry nothing: they are dropped.
void check_png_chunks(const std::string& path, std::vector<uint8_t>& b) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (b.size() < 8 || !std::equal(sig, sig + 8, b.begin())) return;
  size_t i = 8;
  while (i + 8 <= b.size()) {
    const uint32_t len = (uint32_t(b[i]) << 24) | (uint32_t(b[i + 1]) << 16) | (uint32_t(b[i + 2]) << 8) | b[i + 3];
    std::string type(b.begin() + (std::ptrdiff_t)i + 4, b.begin() + (std::ptrdiff_t)i + 8);
    for (char& ch : type) ch = ch >= 0x20 && ch < 0x7f ? ch : '?'; // for messages
    if (type == "IEND") break;
    if (type == "IDAT" && len == 0) {
      b.erase(b.begin() + (std::ptrdiff_t)i, b.begin() + (std::ptrdiff_t)std::min(i + 12, b.size()));
      continue;
    }
    TB_CHECK(len <= b.size() - i - 8, "read_image: cannot decode '{}': truncated PNG: chunk '{}' at "
             "byte {} declares {} bytes, the file has {} left", path, type, i, len, b.size() - i - 8);
    i += 12 + (size_t)len;
  }
}

} // namespace

void guard_image_bytes(const std::string& path, std::vector<uint8_t>& bytes) {
  if (is_jpeg(bytes)) check_jpeg_tables(path, bytes);
  check_pnm(path, bytes);
  check_png_chunks(path, bytes);
}

std::optional<Pixels> decode_pnm16(const std::vector<uint8_t>& bytes, int channels) {
  PnmHeader h = read_pnm_header("", bytes);
  // (the ranges check_pnm verified the length for; stb_image refuses the others)
  if (!h.is_pnm || h.maxval <= 255 || h.maxval > 65535 || h.width <= 0 || h.height <= 0)
    return std::nullopt;
  Pixels out;
  out.height = h.height;
  out.width = h.width;
  const int64_t n = h.height * h.width;
  out.data.resize((size_t)(n * channels));
  const uint8_t* src = bytes.data() + h.data_offset; // big-endian samples: the high byte first
  for (int64_t p = 0; p < n; p++) {
    uint8_t r, g, b;
    if (h.channels == 1) {
      r = g = b = src[2 * p];
    } else {
      r = src[6 * p], g = src[6 * p + 2], b = src[6 * p + 4];
    }
    const uint8_t y = h.channels == 1 ? r : (uint8_t)((r * 77 + g * 150 + b * 29) >> 8);
    uint8_t* dst = out.data.data() + p * channels;
    switch (channels) {
      case 1: dst[0] = y; break;
      case 2: dst[0] = y, dst[1] = 255; break;
      case 3: dst[0] = r, dst[1] = g, dst[2] = b; break;
      default: dst[0] = r, dst[1] = g, dst[2] = b, dst[3] = 255; break;
    }
  }
  return out;
}

} // namespace tb::data::detail
