// ImageFolder (root/<class>/<image>, as torchvision.datasets.ImageFolder) and image decoding.
//
// Decoding is stb_image's. Its implementation is compiled here, static (file-local), so it cannot
// clash with Debian's libstb.so or a user's own copy; its failure reason is thread-local, so
// DataLoader workers may decode at the same time.
#include <tb/data.h>

#include "image_guard.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
// Zeroed allocations: stb_image 2.27 can read parts of its decoder state that no input defined
// (see check_jpeg_tables in image_guard.cpp); zeros make such reads harmless and repeatable.
#define STBI_MALLOC(size) calloc(1, size)
#define STBI_REALLOC(p, size) realloc(p, size)
#define STBI_FREE(p) free(p)
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <vector>

namespace fs = std::filesystem;

namespace tb::data {

namespace {

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  for (auto& ch : ext) ch = (char)std::tolower((unsigned char)ch);
  static const char* kExts[] = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tga", ".gif"};
  return std::any_of(std::begin(kExts), std::end(kExts), [&](const char* e) { return ext == e; });
}

} // namespace

// No decoder turns one input byte into more than about 8,300 pixels (PNG: deflate's 1032:1 on
// 1-bit pixels; GIF's LZW, JPEG's empty blocks and the RLE formats stay far below), so a header
// claiming more pixels than this many per byte of file is corrupt or a decompression bomb. It is
// refused before stb_image sees it: stb allocates the whole image from the header's size before
// it checks that the file holds that many pixels.
constexpr uint64_t kMaxPixelsPerByte = 16384;

Tensor read_image(const std::string& path, int channels) {
  TB_CHECK(channels >= 1 && channels <= 4, "read_image: channels must be 1..4, got {}", channels);
  std::vector<uint8_t> bytes;
  {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    TB_CHECK(in.good(), "read_image: cannot decode '{}': cannot open the file", path);
    const std::streamoff size = in.tellg();
    TB_CHECK(size >= 0 && size <= std::numeric_limits<int>::max(),
             "read_image: cannot decode '{}': {} bytes is beyond stb_image's 2 GB limit", path, size);
    bytes.resize((size_t)size);
    in.seekg(0);
    in.read(reinterpret_cast<char*>(bytes.data()), size);
    TB_CHECK(in.gcount() == size, "read_image: cannot decode '{}': reading the file failed", path);
  }
  detail::guard_image_bytes(path, bytes); // inputs that break stb_image 2.27 (found by fuzzing)
  if (auto pnm = detail::decode_pnm16(bytes, channels)) // stb_image 2.27 decodes these wrongly
    return from_buffer(pnm->data.data(), {pnm->height, pnm->width, channels}, kUInt8);
  const int len = (int)bytes.size();
  int w = 0, h = 0, n = 0;
  TB_CHECK(stbi_info_from_memory(bytes.data(), len, &w, &h, &n), "read_image: cannot decode '{}': {}",
           path, stbi_failure_reason() ? stbi_failure_reason() : "unknown image format");
  TB_CHECK(w > 0 && h > 0 && (uint64_t)w * (uint64_t)h <= bytes.size() * kMaxPixelsPerByte,
           "read_image: cannot decode '{}': its header claims {}×{} pixels in a {}-byte file (more "
           "than {} pixels per byte): corrupt, or a decompression bomb",
           path, w, h, bytes.size(), kMaxPixelsPerByte);
  uint8_t* pixels = stbi_load_from_memory(bytes.data(), len, &w, &h, &n, channels);
  TB_CHECK(pixels != nullptr, "read_image: cannot decode '{}': {}", path,
           stbi_failure_reason() ? stbi_failure_reason() : "unknown reason");
  Tensor out;
  try {
    out = from_buffer(pixels, {h, w, channels}, kUInt8);
  } catch (...) {
    stbi_image_free(pixels);
    throw;
  }
  stbi_image_free(pixels);
  return out;
}

ImageFolder::ImageFolder(const std::string& root, int channels) : root_(root), channels_(channels) {
  TB_CHECK(channels >= 1 && channels <= 4, "ImageFolder: channels must be 1..4, got {}", channels);
  TB_CHECK(fs::is_directory(root), "ImageFolder: '{}' is not a directory", root);
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory()) classes_.push_back(entry.path().filename().string());
  std::sort(classes_.begin(), classes_.end());
  TB_CHECK(!classes_.empty(),
           "ImageFolder: '{}' has no class sub-folders (expected root/<class>/<image files>)", root);

  std::vector<std::string> empty_classes;
  for (size_t k = 0; k < classes_.size(); k++) {
    // torchvision walks each class folder recursively, visiting folders and files sorted.
    std::vector<std::pair<std::string, std::string>> files; // (folder, file name)
    auto opts = fs::directory_options::follow_directory_symlink;
    for (const auto& entry : fs::recursive_directory_iterator(fs::path(root) / classes_[k], opts))
      if (entry.is_regular_file() && has_image_extension(entry.path()))
        files.emplace_back(entry.path().parent_path().string(), entry.path().filename().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) empty_classes.push_back(classes_[k]);
    for (auto& [dir, name] : files)
      samples_.emplace_back((fs::path(dir) / name).string(), (int64_t)k);
  }
  TB_CHECK(empty_classes.empty(),
           "ImageFolder: '{}': no image files (.png .jpg .jpeg .bmp .ppm .pgm .tga .gif) in the "
           "class folder(s) {}",
           root, fmt::format("'{}'", fmt::join(empty_classes, "', '")));
}

Example ImageFolder::get(int64_t index) const {
  TB_CHECK(index >= 0 && index < size(), "ImageFolder: index {} out of range for {} samples",
           index, size());
  const auto& [path, target] = samples_[index];
  return {read_image(path, channels_), target};
}

} // namespace tb::data
