// CIFAR-10 / CIFAR-100, the "binary version" (https://www.cs.toronto.edu/~kriz/cifar.html).
//
// Each file is a run of fixed-size records: label byte(s), then 3072 pixel bytes = 3 planes
// (R, G, B) of 32×32 in row-major order. CIFAR-10 has 1 label byte (the class, 0..9); CIFAR-100
// has 2 (coarse 0..19, fine 0..99). We keep the pixels as [N, 3, 32, 32] uint8 and labels apart.
#include <tb/data.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace tb::data {

namespace {

constexpr int64_t kSide = 32, kPixels = 3 * kSide * kSide;

// root, or $env when root is empty; descends into `subdir` when the files live there (the folder
// the official tarball extracts to).
std::string cifar_root(const char* op, const std::string& root_arg, const char* env,
                       const char* subdir, const char* probe) {
  std::string root = root_arg;
  if (root.empty()) {
    const char* e = std::getenv(env);
    TB_CHECK(e && *e, "{}: no root folder given and {} is not set (expected the extracted '{}' "
             "folder of the binary version)", op, env, subdir);
    root = e;
  }
  TB_CHECK(fs::is_directory(root), "{}: data directory '{}' not found", op, root);
  if (!fs::exists(fs::path(root) / probe) && fs::is_directory(fs::path(root) / subdir))
    root = (fs::path(root) / subdir).string();
  return root;
}

} // namespace

void CifarBinary::load(const char* op, const std::vector<std::string>& files, int label_bytes,
                       int64_t num_classes) {
  const int64_t record = label_bytes + kPixels;
  // Sizes first: the allocation equals the bytes really on disk.
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& path : files) {
    TB_CHECK(fs::is_regular_file(path), "{}: file '{}' not found", op, path);
    int64_t bytes = (int64_t)fs::file_size(path);
    TB_CHECK(bytes > 0, "{}: file '{}' is empty", op, path);
    TB_CHECK(bytes % record == 0,
             "{}: file '{}' has {} bytes, not a multiple of the {}-byte record ({} label byte{} + "
             "3072 pixels): truncated, or not the {} binary version",
             op, path, bytes, record, label_bytes, label_bytes == 1 ? "" : "s", op);
    counts.push_back(bytes / record);
    total += bytes / record;
  }
  pixels_.resize(total * kPixels);
  targets_.resize(total);
  if (label_bytes == 2) coarse_targets_.resize(total);

  std::vector<uint8_t> buf;
  int64_t n = 0;
  for (size_t f = 0; f < files.size(); f++) {
    const std::string& path = files[f];
    buf.resize(counts[f] * record);
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(buf.data()), (std::streamsize)buf.size());
    TB_CHECK(in.gcount() == (std::streamsize)buf.size(), "{}: could not read all of '{}'", op,
             path);
    for (int64_t r = 0; r < counts[f]; r++, n++) {
      const uint8_t* rec = buf.data() + r * record;
      int64_t fine = rec[label_bytes - 1];
      TB_CHECK(fine < num_classes, "{}: '{}' record {} has label {}, expected 0..{}", op, path, r,
               fine, num_classes - 1);
      targets_[n] = fine;
      if (label_bytes == 2) {
        TB_CHECK(rec[0] < 20, "{}: '{}' record {} has coarse label {}, expected 0..19", op, path,
                 r, rec[0]);
        coarse_targets_[n] = rec[0];
      }
      std::memcpy(pixels_.data() + n * kPixels, rec + label_bytes, kPixels);
    }
  }
}

// [3, 32, 32] planes -> [32, 32, 3] (the numpy/PIL image layout ToTensor expects).
Example CifarBinary::get(int64_t index) const {
  TB_CHECK(index >= 0 && index < size(), "CIFAR: index {} out of range for {} samples", index,
           size());
  Tensor img = empty({kSide, kSide, 3}, kUInt8);
  uint8_t* dst = img.data<uint8_t>();
  const uint8_t* src = pixels_.data() + index * kPixels;
  for (int64_t c = 0; c < 3; c++)
    for (int64_t p = 0; p < kSide * kSide; p++) dst[p * 3 + c] = src[c * kSide * kSide + p];
  return {img, targets_[index]};
}

std::optional<UInt8Images> CifarBinary::uint8_images() const {
  UInt8Images im;
  im.pixels = pixels_.data();
  im.targets = targets_.data();
  im.n = size();
  im.channels = 3;
  im.height = kSide;
  im.width = kSide;
  im.channels_last = false;
  return im;
}

CIFAR10::CIFAR10(const std::string& root_arg, bool train) {
  std::string root = cifar_root("CIFAR10", root_arg, "TB_CIFAR10_DIR", "cifar-10-batches-bin",
                                "test_batch.bin");
  std::vector<std::string> files;
  if (train)
    for (int i = 1; i <= 5; i++)
      files.push_back((fs::path(root) / fmt::format("data_batch_{}.bin", i)).string());
  else
    files.push_back((fs::path(root) / "test_batch.bin").string());
  load("CIFAR10", files, 1, 10);
}

CIFAR100::CIFAR100(const std::string& root_arg, bool train) {
  std::string root = cifar_root("CIFAR100", root_arg, "TB_CIFAR100_DIR", "cifar-100-binary",
                                "test.bin");
  load("CIFAR100", {(fs::path(root) / (train ? "train.bin" : "test.bin")).string()}, 2, 100);
}

} // namespace tb::data
