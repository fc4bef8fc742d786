// tests/fuzz/harness.h — one function per reader of outside data, shared by the libFuzzer targets
// (tests/fuzz/fuzz_*.cpp) and by the normal test suite, which replays the seed corpora and every
// input a fuzzer ever crashed on (tests/fuzz/regressions/<target>/) through the same code.
//
// Contract of every run_*: the input bytes become a file, the reader opens it, and then either it
// is accepted (the harness touches the result, checks it is self-consistent, returns true) or
// rejected with tb::Error (returns false). Anything else — a sanitizer report, a crash, another
// exception type, a failed consistency check (std::abort) — is a bug.
#pragma once

#include <tb/tb.h>

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include <unistd.h>

namespace tbfuzz {

// A folder private to this process, on tmpfs when there is one (fuzzers write a file per run).
// Removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    const char* env = std::getenv("TMPDIR");
    std::string base = fs::is_directory("/dev/shm") && access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                       : env && *env                                                ? env
                                                                                    : "/tmp";
    std::string templ = base + "/tb_fuzz_XXXXXX";
    if (!mkdtemp(templ.data())) {
      std::perror("tbfuzz: mkdtemp");
      std::abort();
    }
    static std::string keep = templ;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return templ;
  }();
  return dir;
}

// The bytes as a file, plain or (gzip = true) gzip-compressed at level 1.
inline void write_file(const std::string& path, const uint8_t* data, size_t n, bool gzip = false) {
  if (gzip) {
    gzFile g = gzopen(path.c_str(), "wb1");
    if (!g || (n && gzwrite(g, data, (unsigned)n) != (int)n) || gzclose(g) != Z_OK) {
      std::fprintf(stderr, "tbfuzz: cannot write %s\n", path.c_str());
      std::abort();
    }
    return;
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (n && std::fwrite(data, 1, n, f) != n) || std::fclose(f) != 0) {
    std::fprintf(stderr, "tbfuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

[[noreturn]] inline void bug(const char* what) {
  std::fprintf(stderr, "tbfuzz: consistency check failed: %s\n", what);
  std::abort();
}

// safetensors: load; on success save the result and load it again, which must give the same
// names, dtypes, shapes, bytes and metadata.
inline bool run_safetensors(const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/in.safetensors";
  write_file(path, data, size);
  tb::SafetensorsFile f;
  try {
    f = tb::load_safetensors(path);
  } catch (const tb::Error&) {
    return false;
  }
  const std::string again = scratch_dir() + "/again.safetensors";
  tb::save_safetensors(again, f.tensors, f.metadata);
  tb::SafetensorsFile g = tb::load_safetensors(again);
  if (g.metadata != f.metadata) bug("safetensors: metadata changed in a round trip");
  if (g.tensors.keys() != f.tensors.keys()) bug("safetensors: names changed in a round trip");
  for (size_t i = 0; i < f.tensors.size(); i++) {
    const tb::Tensor &a = f.tensors.item(i).second, &b = g.tensors.item(i).second;
    if (a.dtype() != b.dtype() || a.shape() != b.shape() || !a.is_contiguous())
      bug("safetensors: dtype or shape changed in a round trip");
    size_t nb = (size_t)a.numel() * a.element_size();
    if (nb && std::memcmp(a.raw_data(), b.raw_data(), nb) != 0)
      bug("safetensors: bytes changed in a round trip");
  }
  return true;
}

// IDX images + labels. Input: byte 0 = flags (bit 0: gzip the images file, bit 1: gzip the
// labels file), bytes 1-2 = length L of the images file (little-endian, clipped), then L bytes of
// images file, then the labels file. Raw inputs starting with the gzip magic exercise zlib's
// handling of corrupt streams; the flags reach the header checks behind a valid stream.
inline bool run_idx(const uint8_t* data, size_t size) {
  if (size < 3) return false;
  const int flags = data[0];
  size_t len = std::min<size_t>(data[1] | (size_t(data[2]) << 8), size - 3);
  const std::string images = scratch_dir() + "/images", labels = scratch_dir() + "/labels";
  write_file(images, data + 3, len, flags & 1);
  write_file(labels, data + 3 + len, size - 3 - len, flags & 2);
  try {
    tb::data::IdxDataset ds(images, labels);
    if (ds.size() <= 0 || ds.rows() < 0 || ds.cols() < 0) bug("idx: accepted an empty data set");
    for (int64_t i : {int64_t(0), ds.size() - 1}) {
      tb::data::Example ex = ds.get(i);
      if (ex.input.shape() != tb::Shape{ds.rows(), ds.cols()} || ex.target < 0 || ex.target > 255)
        bug("idx: sample has the wrong shape or label");
    }
    auto im = ds.uint8_images();
    if (!im || im->n != ds.size()) bug("idx: uint8_images disagrees with size()");
    return true;
  } catch (const tb::Error&) {
    return false;
  }
}

// CIFAR binary batches. Input: byte 0 bit 0 picks CIFAR-100 (train.bin/test.bin, 2 label bytes)
// over CIFAR-10 (test_batch.bin, 1 label byte); the rest is the file.
inline bool run_cifar(const uint8_t* data, size_t size) {
  if (size < 1) return false;
  const bool c100 = data[0] & 1;
  const std::string root = scratch_dir() + "/cifar";
  std::filesystem::create_directories(root);
  write_file(root + (c100 ? "/test.bin" : "/test_batch.bin"), data + 1, size - 1);
  bool accepted = true;
  try {
    std::unique_ptr<tb::data::CifarBinary> ds;
    if (c100) ds = std::make_unique<tb::data::CIFAR100>(root, false);
    else ds = std::make_unique<tb::data::CIFAR10>(root, false);
    for (int64_t i : {int64_t(0), ds->size() - 1}) {
      tb::data::Example ex = ds->get(i);
      if (ex.input.shape() != tb::Shape{32, 32, 3} || ex.target < 0 || ex.target >= (c100 ? 100 : 10))
        bug("cifar: sample has the wrong shape or label");
    }
  } catch (const tb::Error&) {
    accepted = false;
  }
  std::filesystem::remove(root + (c100 ? "/test.bin" : "/test_batch.bin"));
  return accepted;
}

// Image decoding (tb::data::read_image, stb_image underneath: PNG, JPEG, BMP, GIF, TGA, PNM, ...).
// Input: byte 0 picks the channels asked for (1..4); the rest is the file.
inline bool run_image(const uint8_t* data, size_t size) {
  if (size < 1) return false;
  const int channels = 1 + data[0] % 4;
  const std::string path = scratch_dir() + "/image";
  write_file(path, data + 1, size - 1);
  try {
    tb::Tensor img = tb::data::read_image(path, channels);
    if (img.dim() != 3 || img.size(2) != channels || img.size(0) <= 0 || img.size(1) <= 0 ||
        img.dtype() != tb::kUInt8)
      bug("image: decoded tensor has the wrong shape or dtype");
    return true;
  } catch (const tb::Error&) {
    return false;
  }
}

} // namespace tbfuzz
