// MNIST-format (IDX) files: Fashion-MNIST, MNIST, and any images/labels pair in that layout.
//
// An IDX file is big-endian: a magic number 0x0000TTDD (TT = 0x08: uint8 data, DD = number of
// dims), DD uint32 sizes, then the data in row-major order. Images: 0x00000803, [N, rows, cols];
// labels: 0x00000801, [N]. The files ship gzip-compressed; zlib's gzread reads both forms.
#include <tb/data.h>

#include <fmt/ranges.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace tb::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803, kLabelsMagic = 0x00000801;
// deflate cannot expand data more than about 1032:1, so a gzip file of S bytes holds at most
// this many times S bytes: a header claiming more is truncated, and we say so before allocating.
constexpr uint64_t kMaxDeflateRatio = 1032;

struct GzFile {
  gzFile f = nullptr;
  ~GzFile() { if (f) gzclose(f); }
};

bool starts_with_gzip_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[2] = {0, 0};
  in.read(reinterpret_cast<char*>(b), 2);
  return in.gcount() == 2 && b[0] == 0x1f && b[1] == 0x8b;
}

// Reads up to n bytes into dst; returns how many arrived (fewer only at end of data). Throws on
// a gzip stream that is corrupt or cut short.
size_t gz_read_some(const char* op, const std::string& path, gzFile f, uint8_t* dst, size_t n) {
  size_t total = 0;
  while (total < n) {
    unsigned want = (unsigned)std::min<size_t>(n - total, 1u << 30);
    int got = gzread(f, dst + total, want);
    int errnum = Z_OK;
    const char* msg = gzerror(f, &errnum);
    // gzread hands back what it decoded before a truncation; zlib flags it with Z_BUF_ERROR.
    TB_CHECK(got >= 0 && (errnum == Z_OK || errnum == Z_BUF_ERROR),
             "{}: '{}': corrupt gzip data: {}", op, path, msg ? msg : "unknown zlib error");
    TB_CHECK(errnum != Z_BUF_ERROR, "{}: '{}': truncated gzip file: {}", op, path, msg);
    if (got == 0) break;
    total += (size_t)got;
  }
  return total;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

struct IdxFile {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads an IDX file with the given magic (1 or 3 dims of uint8). `what` names the items
// ("images" / "labels") in messages.
IdxFile read_idx(const char* op, const std::string& path, uint32_t magic, const char* what) {
  TB_CHECK(fs::is_regular_file(path), "{}: file '{}' not found", op, path);
  const uint64_t file_bytes = fs::file_size(path);
  const bool gzip = starts_with_gzip_magic(path);
  GzFile gz;
  gz.f = gzopen(path.c_str(), "rb");
  TB_CHECK(gz.f != nullptr, "{}: cannot open '{}'", op, path);
  gzbuffer(gz.f, 1 << 17);

  const size_t ndims = magic & 0xff;
  uint8_t header[16];
  const size_t header_bytes = 4 + 4 * ndims;
  size_t got = gz_read_some(op, path, gz.f, header, 4);
  TB_CHECK(got == 4, "{}: '{}' is truncated: {} bytes, too short for an IDX header", op, path, got);
  const uint32_t file_magic = be32(header);
  TB_CHECK(file_magic == magic,
           "{}: '{}' has the wrong magic number: expected 0x{:08x} ({} file: uint8, {} dims), "
           "got 0x{:08x}",
           op, path, magic, what, ndims, file_magic);
  got = gz_read_some(op, path, gz.f, header + 4, header_bytes - 4);
  TB_CHECK(got == header_bytes - 4, "{}: '{}' is truncated inside its {}-byte header", op, path,
           header_bytes);

  IdxFile out;
  uint64_t payload = 1;
  for (size_t d = 0; d < ndims; d++) {
    out.dims.push_back(be32(header + 4 + 4 * d));
    // Keep the product below 2^48 bytes so it never overflows (the file check below rejects it).
    TB_CHECK(out.dims.back() == 0 || payload <= (uint64_t(1) << 48) / out.dims.back(),
             "{}: '{}' is corrupt: its header claims an impossible size: {} of {}", op, path,
             what, fmt::join(out.dims, "×"));
    payload *= out.dims.back();
  }
  std::string claim = ndims == 3 ? fmt::format("{} {} of {}×{}", out.dims[0], what, out.dims[1],
                                               out.dims[2])
                                 : fmt::format("{} {}", out.dims[0], what);

  // Refuse before allocating when the file cannot possibly hold what its header claims.
  const uint64_t available = file_bytes - std::min<uint64_t>(file_bytes, header_bytes);
  const uint64_t max_payload = gzip ? file_bytes * kMaxDeflateRatio : available;
  TB_CHECK(payload <= max_payload,
           "{}: '{}' is truncated: its header says {} ({} bytes) but the file has only {} bytes{}",
           op, path, claim, payload, file_bytes, gzip ? " (gzip)" : "");

  // Grow the buffer as bytes arrive (gzip sizes are only known by decoding).
  size_t filled = 0;
  while (filled < payload) {
    size_t chunk = (size_t)std::min<uint64_t>(payload - filled, std::max<size_t>(filled, 1 << 20));
    out.data.resize(filled + chunk);
    size_t n = gz_read_some(op, path, gz.f, out.data.data() + filled, chunk);
    filled += n;
    if (n < chunk) break;
  }
  out.data.resize(filled);
  TB_CHECK(filled == payload,
           "{}: '{}' is truncated: its header says {} ({} bytes of data) but the file holds only "
           "{}",
           op, path, claim, payload, filled);
  uint8_t extra;
  TB_CHECK(gz_read_some(op, path, gz.f, &extra, 1) == 0,
           "{}: '{}' has more bytes than its header describes ({})", op, path, claim);
  return out;
}

std::string pick_file(const char* op, const std::string& root, const std::string& name) {
  std::string plain = (fs::path(root) / name).string();
  if (fs::is_regular_file(plain)) return plain;
  std::string gz = plain + ".gz";
  if (fs::is_regular_file(gz)) return gz;
  throw Error(fmt::format("{}: neither '{}' nor '{}' exists", op, plain, gz));
}

// The (images, labels) pair of a folder in the MNIST layout; images are looked up first so a
// missing file is reported the same way every time.
std::pair<std::string, std::string> idx_pair(const char* op, const std::string& root, bool train) {
  const std::string split = train ? "train" : "t10k";
  return {pick_file(op, root, split + "-images-idx3-ubyte"),
          pick_file(op, root, split + "-labels-idx1-ubyte")};
}

std::pair<std::string, std::string> fashion_files(const std::string& root_arg, bool train) {
  std::string root = root_arg.empty() ? default_fashion_mnist_root() : root_arg;
  TB_CHECK(fs::is_directory(root),
           "FashionMNIST: data directory '{}' not found: install it with `apt-get install "
           "dataset-fashion-mnist` (it goes to /usr/share/datasets/fashion-mnist), or set "
           "TB_FASHION_MNIST_DIR (or pass a path) to a folder holding "
           "{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
           root);
  return idx_pair("FashionMNIST", root, train);
}

std::pair<std::string, std::string> mnist_files(const std::string& root, bool train) {
  TB_CHECK(!root.empty(), "MNIST: a root folder is required");
  TB_CHECK(fs::is_directory(root), "MNIST: data directory '{}' not found", root);
  return idx_pair("MNIST", root, train);
}

} // namespace

IdxDataset::IdxDataset(const std::string& images_path, const std::string& labels_path) {
  const char* op = "IdxDataset";
  IdxFile images = read_idx(op, images_path, kImagesMagic, "images");
  IdxFile labels = read_idx(op, labels_path, kLabelsMagic, "labels");
  TB_CHECK(images.dims[0] == labels.dims[0],
           "{}: '{}' has {} images but '{}' has {} labels", op, images_path, images.dims[0],
           labels_path, labels.dims[0]);
  TB_CHECK(images.dims[0] > 0, "{}: '{}' holds no images", op, images_path);
  rows_ = images.dims[1];
  cols_ = images.dims[2];
  pixels_ = std::move(images.data);
  targets_.assign(labels.data.begin(), labels.data.end());
}

Example IdxDataset::get(int64_t index) const {
  TB_CHECK(index >= 0 && index < size(), "IdxDataset: index {} out of range for {} samples",
           index, size());
  const uint8_t* p = pixels_.data() + index * rows_ * cols_;
  return {from_buffer(p, {rows_, cols_}, kUInt8), targets_[index]};
}

std::optional<UInt8Images> IdxDataset::uint8_images() const {
  UInt8Images im;
  im.pixels = pixels_.data();
  im.targets = targets_.data();
  im.n = size();
  im.channels = 1;
  im.height = rows_;
  im.width = cols_;
  return im;
}

std::string default_fashion_mnist_root() {
  const char* env = std::getenv("TB_FASHION_MNIST_DIR");
  if (env && *env) return env;
  return "/usr/share/datasets/fashion-mnist";
}

FashionMNIST::FashionMNIST(const std::string& root, bool train)
    : IdxDataset(fashion_files(root, train).first, fashion_files(root, train).second) {}

const std::vector<std::string>& FashionMNIST::classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                 "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

MNIST::MNIST(const std::string& root, bool train)
    : IdxDataset(mnist_files(root, train).first, mnist_files(root, train).second) {}

} // namespace tb::data
