// tb::data: file readers (IDX plain/gzip, CIFAR binary, ImageFolder), transforms, DataLoader.
// Every data file is written here into a temporary folder, so the tests need no downloads; the
// real Fashion-MNIST is read too when its Debian package is installed.
#include "gradcheck.h"

#include <tb/data.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#include <zlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

namespace fs = std::filesystem;
using namespace tb;
using tb::data::Batch;
using tb::data::DataLoader;

namespace {

// A fresh folder under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("tb_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Sets an environment variable for the scope of a test, restoring the previous value.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) old = v;
    if (value) ::setenv(n, value, 1);
    else ::unsetenv(n);
  }
  ~ScopedEnv() {
    if (old) ::setenv(name.c_str(), old->c_str(), 1);
    else ::unsetenv(name.c_str());
  }
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), (std::streamsize)bytes.size());
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), (unsigned)bytes.size()) == (int)bytes.size());
  gzclose(f);
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back((uint8_t)(x >> s));
}

// IDX images file: magic 0x803, [n, rows, cols], pixel (i, r, c) = pixel_value(i, r, c).
uint8_t pixel_value(int64_t i, int64_t r, int64_t c) { return (uint8_t)(i * 37 + r * 5 + c * 3); }
std::vector<uint8_t> idx_images(uint32_t n, uint32_t rows, uint32_t cols, uint32_t magic = 0x803) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, n);
  put_be32(v, rows);
  put_be32(v, cols);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t r = 0; r < rows; r++)
      for (uint32_t c = 0; c < cols; c++) v.push_back(pixel_value(i, r, c));
  return v;
}
std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> v;
  put_be32(v, 0x801);
  put_be32(v, (uint32_t)labels.size());
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

// A data set whose samples record the grad mode they were made under, and may fail on purpose.
struct ProbeDataset : data::Dataset {
  int64_t n = 20, fail_at = -1;
  mutable std::atomic<int> grad_enabled_calls{0};
  int64_t size() const override { return n; }
  data::Example get(int64_t i) const override {
    if (is_grad_enabled()) grad_enabled_calls++;
    TB_CHECK(i != fail_at, "ProbeDataset: sample {} is broken", i);
    return {full({1, 2, 2}, (double)i), i};
  }
};

// All batches of one epoch, copied out.
std::vector<Batch> run_epoch(DataLoader& loader) {
  std::vector<Batch> out;
  for (const Batch& b : loader) out.push_back({b.inputs.clone(), b.targets.clone()});
  return out;
}

void check_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t k = 0; k < a.size(); k++) {
    CHECK(a[k].inputs.shape() == b[k].inputs.shape());
    CHECK(a[k].inputs.to_vector() == b[k].inputs.to_vector());
    CHECK(a[k].targets.to_int_vector() == b[k].targets.to_int_vector());
  }
}

} // namespace

TEST_SUITE("data") {

// ---------------------------------------------------------------------------------------------
// IDX (MNIST format)

TEST_CASE("IDX: plain and gzip files read the same pixels and labels") {
  TempDir dir;
  auto images = idx_images(3, 2, 3);
  auto labels = idx_labels({7, 0, 9});
  write_bytes(dir / "plain/images", images);
  write_bytes(dir / "plain/labels", labels);
  write_gzip(dir / "gz/images.gz", images);
  write_gzip(dir / "gz/labels.gz", labels);
  for (auto [img, lbl] : {std::pair{dir / "plain/images", dir / "plain/labels"},
                          std::pair{dir / "gz/images.gz", dir / "gz/labels.gz"}}) {
    data::IdxDataset ds(img, lbl);
    REQUIRE(ds.size() == 3);
    CHECK(ds.rows() == 2);
    CHECK(ds.cols() == 3);
    CHECK(ds.targets() == std::vector<int64_t>{7, 0, 9});
    data::Example ex = ds.get(2);
    CHECK(ex.target == 9);
    CHECK(ex.input.dtype() == kUInt8);
    CHECK(ex.input.shape() == Shape{2, 3});
    std::vector<int64_t> want;
    for (int r = 0; r < 2; r++)
      for (int c = 0; c < 3; c++) want.push_back(pixel_value(2, r, c));
    CHECK(ex.input.to_int_vector() == want);
    auto im = ds.uint8_images();
    REQUIRE(im.has_value());
    CHECK(im->n == 3);
    CHECK(im->pixels[6] == pixel_value(1, 0, 0));
    tbtest::check_error([&] { ds.get(3); }, {"IdxDataset", "index 3", "3 samples"});
  }
}

TEST_CASE("FashionMNIST/MNIST: folder layout, .gz or plain, env override") {
  TempDir dir;
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(4, 28, 28));
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_labels({1, 2, 3, 4}));
  write_bytes(dir / "t10k-images-idx3-ubyte", idx_images(2, 28, 28));
  write_bytes(dir / "t10k-labels-idx1-ubyte", idx_labels({5, 6}));

  data::FashionMNIST train(dir.path.string(), true);
  data::FashionMNIST test(dir.path.string(), false);
  CHECK(train.size() == 4);
  CHECK(test.size() == 2);
  CHECK(test.targets() == std::vector<int64_t>{5, 6});
  CHECK(data::MNIST(dir.path.string(), true).size() == 4);
  CHECK(data::FashionMNIST::classes().size() == 10);
  CHECK(data::FashionMNIST::classes()[9] == "Ankle boot");
  {
    ScopedEnv env("TB_FASHION_MNIST_DIR", dir.path.c_str());
    CHECK(data::default_fashion_mnist_root() == dir.path.string());
    CHECK(data::FashionMNIST("", false).size() == 2);
  }
  {
    ScopedEnv env("TB_FASHION_MNIST_DIR", nullptr);
    CHECK(data::default_fashion_mnist_root() == "/usr/share/datasets/fashion-mnist");
  }
  tbtest::check_error([&] { data::FashionMNIST(dir / "nowhere", true); },
                      {"nowhere", "apt-get install dataset-fashion-mnist", "TB_FASHION_MNIST_DIR"});
  TempDir empty;
  tbtest::check_error([&] { data::FashionMNIST(empty.path.string(), true); },
                      {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"});
  tbtest::check_error([&] { data::MNIST("", true); }, {"MNIST", "root"});
}

TEST_CASE("IDX errors name the file and what is wrong") {
  TempDir dir;
  const std::string labels = dir / "labels";
  write_bytes(labels, idx_labels({1, 2, 3}));

  SUBCASE("wrong magic number") {
    write_bytes(dir / "images", idx_images(3, 2, 2, 0x801));
    tbtest::check_error([&] { data::IdxDataset(dir / "images", labels); },
                        {dir / "images", "magic", "0x00000803", "0x00000801"});
    // the labels file checked the other way round
    write_bytes(dir / "images_ok", idx_images(3, 2, 2));
    tbtest::check_error([&] { data::IdxDataset(dir / "images_ok", dir / "images_ok"); },
                        {"expected 0x00000801", "got 0x00000803"});
  }
  SUBCASE("truncated plain file") {
    auto bytes = idx_images(3, 2, 2);
    bytes.resize(bytes.size() - 5);
    write_bytes(dir / "images", bytes);
    tbtest::check_error([&] { data::IdxDataset(dir / "images", labels); },
                        {dir / "images", "truncated", "3 images of 2×2"});
    write_bytes(dir / "tiny", {0, 0, 8});
    tbtest::check_error([&] { data::IdxDataset(dir / "tiny", labels); }, {"tiny", "truncated"});
  }
  SUBCASE("extra bytes") {
    auto bytes = idx_images(3, 2, 2);
    bytes.push_back(0);
    write_bytes(dir / "images", bytes);
    tbtest::check_error([&] { data::IdxDataset(dir / "images", labels); },
                        {dir / "images", "more bytes"});
  }
  SUBCASE("truncated gzip stream") {
    write_gzip(dir / "full.gz", idx_images(50, 28, 28));
    auto gz = read_bytes(dir / "full.gz");
    gz.resize(gz.size() / 2);
    write_bytes(dir / "half.gz", gz);
    tbtest::check_error([&] { data::IdxDataset(dir / "half.gz", labels); },
                        {dir / "half.gz", "truncated"});
  }
  SUBCASE("corrupt gzip data") {
    // a valid gzip header, then bytes that are no deflate stream (block type 3 is invalid)
    std::vector<uint8_t> bad = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    bad.resize(200, 0xff);
    write_bytes(dir / "bad.gz", bad);
    tbtest::check_error([&] { data::IdxDataset(dir / "bad.gz", labels); },
                        {dir / "bad.gz", "corrupt gzip"});
    // a flipped byte in the CRC trailer is caught at the end of the stream
    write_gzip(dir / "crc.gz", idx_images(3, 2, 2));
    auto crc = read_bytes(dir / "crc.gz");
    crc[crc.size() - 6] ^= 0xff;
    write_bytes(dir / "crc.gz", crc);
    tbtest::check_error([&] { data::IdxDataset(dir / "crc.gz", labels); },
                        {dir / "crc.gz", "corrupt gzip"});
  }
  SUBCASE("image and label counts disagree") {
    write_bytes(dir / "images", idx_images(4, 2, 2));
    tbtest::check_error([&] { data::IdxDataset(dir / "images", labels); },
                        {"4 images", "3 labels", dir / "images", labels});
  }
  SUBCASE("absurd header sizes fail before allocating") {
    // 10^6 images of 1000×1000 = 10^12 bytes claimed by a 16-byte file (plain and gzip)
    std::vector<uint8_t> h;
    put_be32(h, 0x803);
    put_be32(h, 1000000);
    put_be32(h, 1000);
    put_be32(h, 1000);
    write_bytes(dir / "huge", h);
    write_gzip(dir / "huge.gz", h);
    tbtest::check_error([&] { data::IdxDataset(dir / "huge", labels); },
                        {"huge", "truncated", "1000000 images of 1000×1000"});
    tbtest::check_error([&] { data::IdxDataset(dir / "huge.gz", labels); },
                        {"huge.gz", "truncated"});
    std::vector<uint8_t> h2;
    put_be32(h2, 0x803);
    for (int k = 0; k < 3; k++) put_be32(h2, 0xffffffffu);
    write_bytes(dir / "overflow", h2);
    tbtest::check_error([&] { data::IdxDataset(dir / "overflow", labels); },
                        {"overflow", "impossible size"});
  }
  SUBCASE("missing file") {
    tbtest::check_error([&] { data::IdxDataset(dir / "absent", labels); }, {"absent", "not found"});
  }
}

// ---------------------------------------------------------------------------------------------
// CIFAR

namespace {
// One record: label byte(s), then 3 planes of 32×32 where plane c, pixel p = (n + c * 50 + p) % 256.
void append_cifar_record(std::vector<uint8_t>& v, std::vector<uint8_t> labels, int n) {
  v.insert(v.end(), labels.begin(), labels.end());
  for (int c = 0; c < 3; c++)
    for (int p = 0; p < 1024; p++) v.push_back((uint8_t)((n + c * 50 + p) % 256));
}
} // namespace

TEST_CASE("CIFAR10/100 binary batches") {
  TempDir dir;
  const std::string root10 = dir / "cifar-10-batches-bin";
  for (int b = 1; b <= 5; b++) {
    std::vector<uint8_t> v;
    for (int r = 0; r < 2; r++) append_cifar_record(v, {(uint8_t)((b + r) % 10)}, b * 10 + r);
    write_bytes(root10 + fmt::format("/data_batch_{}.bin", b), v);
  }
  std::vector<uint8_t> test;
  for (int r = 0; r < 3; r++) append_cifar_record(test, {(uint8_t)r}, 100 + r);
  write_bytes(root10 + "/test_batch.bin", test);

  data::CIFAR10 train(dir.path.string(), true); // finds the cifar-10-batches-bin sub-folder
  data::CIFAR10 tst(root10, false);
  REQUIRE(train.size() == 10);
  REQUIRE(tst.size() == 3);
  CHECK(train.targets()[3] == (2 + 1) % 10); // batch 2, record 1
  data::Example ex = train.get(3);
  CHECK(ex.input.shape() == Shape{32, 32, 3});
  CHECK(ex.input.dtype() == kUInt8);
  auto px = ex.input.to_int_vector();
  // HWC: pixel p, channel c
  CHECK(px[(5 * 32 + 7) * 3 + 2] == (21 + 2 * 50 + 5 * 32 + 7) % 256);
  CHECK(px[0 * 3 + 1] == (21 + 50) % 256);
  CHECK(tst.targets() == std::vector<int64_t>{0, 1, 2});
  {
    ScopedEnv env("TB_CIFAR10_DIR", root10.c_str());
    CHECK(data::CIFAR10("", false).size() == 3);
  }

  const std::string root100 = dir / "cifar-100-binary";
  std::vector<uint8_t> v100;
  append_cifar_record(v100, {19, 99}, 0);
  append_cifar_record(v100, {3, 42}, 1);
  write_bytes(root100 + "/train.bin", v100);
  data::CIFAR100 c100(root100, true);
  CHECK(c100.size() == 2);
  CHECK(c100.targets() == std::vector<int64_t>{99, 42});
  CHECK(c100.coarse_targets() == std::vector<int64_t>{19, 3});

  // errors
  tbtest::check_error([&] { data::CIFAR100(root100, false); }, {"test.bin", "not found"});
  auto bad = v100;
  bad.pop_back();
  write_bytes(root100 + "/test.bin", bad);
  tbtest::check_error([&] { data::CIFAR100(root100, false); },
                      {"test.bin", "6147 bytes", "3074-byte record"});
  write_bytes(root100 + "/test.bin", {});
  tbtest::check_error([&] { data::CIFAR100(root100, false); }, {"test.bin", "empty"});
  // a CIFAR-10 reader over CIFAR-100 data: fine labels >= 10 (and the record size is off)
  std::vector<uint8_t> wrong;
  append_cifar_record(wrong, {42}, 0);
  write_bytes(dir / "c10bad/test_batch.bin", wrong);
  tbtest::check_error([&] { data::CIFAR10(dir / "c10bad", false); },
                      {"test_batch.bin", "record 0", "label 42", "0..9"});
  {
    ScopedEnv env("TB_CIFAR10_DIR", nullptr);
    tbtest::check_error([&] { data::CIFAR10("", true); }, {"TB_CIFAR10_DIR"});
  }
  tbtest::check_error([&] { tst.get(-1); }, {"index -1"});
}

// ---------------------------------------------------------------------------------------------
// ImageFolder

TEST_CASE("ImageFolder: sorted classes, BMP/PNG decoding, errors") {
  TempDir dir;
  // 3×2 RGB image, pixel (y, x, c) = 40 y + 10 x + c + base
  auto rgb = [](int base) {
    std::vector<uint8_t> v;
    for (int y = 0; y < 2; y++)
      for (int x = 0; x < 3; x++)
        for (int c = 0; c < 3; c++) v.push_back((uint8_t)(base + 40 * y + 10 * x + c));
    return v;
  };
  fs::create_directories(dir.path / "dog");
  fs::create_directories(dir.path / "cat/nested");
  auto a = rgb(1), b = rgb(100), c = rgb(7);
  REQUIRE(stbi_write_bmp((dir / "dog/z.bmp").c_str(), 3, 2, 3, a.data()));
  REQUIRE(stbi_write_png((dir / "cat/b.PNG").c_str(), 3, 2, 3, b.data(), 9));
  REQUIRE(stbi_write_png((dir / "cat/nested/a.png").c_str(), 3, 2, 3, c.data(), 9));
  write_bytes(dir / "cat/readme.txt", {'h', 'i'});

  data::ImageFolder ds(dir.path.string());
  CHECK(ds.classes() == std::vector<std::string>{"cat", "dog"});
  REQUIRE(ds.size() == 3);
  // cat/b.PNG before cat/nested/a.png (files of a folder, then its sub-folders), then dog
  CHECK(fs::path(ds.samples()[0].first).filename() == "b.PNG");
  CHECK(fs::path(ds.samples()[1].first).filename() == "a.png");
  CHECK(ds.samples()[2].second == 1);
  std::vector<int64_t> want_a(a.begin(), a.end()), want_b(b.begin(), b.end());
  data::Example e0 = ds.get(0), e2 = ds.get(2);
  CHECK(e0.input.shape() == Shape{2, 3, 3});
  CHECK(e0.input.to_int_vector() == want_b);
  CHECK(e0.target == 0);
  CHECK(e2.input.to_int_vector() == want_a);
  CHECK(e2.target == 1);
  data::ImageFolder gray(dir.path.string(), 1);
  CHECK(gray.get(0).input.shape() == Shape{2, 3, 1});

  // a file with an image extension that is not an image
  write_bytes(dir / "dog/broken.jpg", {1, 2, 3, 4, 5});
  data::ImageFolder with_broken(dir.path.string());
  REQUIRE(with_broken.size() == 4);
  tbtest::check_error([&] { with_broken.get(2); }, {"broken.jpg", "cannot decode"});
  tbtest::check_error([&] { data::read_image(dir / "dog/missing.png"); },
                      {"missing.png", "cannot decode"});

  TempDir empty;
  tbtest::check_error([&] { data::ImageFolder(empty.path.string()); }, {"no class sub-folders"});
  fs::create_directories(empty.path / "lonely");
  write_bytes(empty / "lonely/notes.txt", {'x'});
  tbtest::check_error([&] { data::ImageFolder(empty.path.string()); },
                      {"no image files", "'lonely'"});
  tbtest::check_error([&] { data::ImageFolder(empty / "nothing"); }, {"not a directory"});
}

// ---------------------------------------------------------------------------------------------
// Transforms

TEST_CASE("ToTensor and Normalize") {
  // [H=2, W=2, C=2] uint8 -> [2, 2, 2] float
  Tensor img = from_vector(std::vector<int64_t>{0, 255, 51, 102, 10, 20, 30, 40}, {2, 2, 2})
                   .to(kUInt8);
  Tensor t = data::ToTensor()(img);
  CHECK(t.shape() == Shape{2, 2, 2});
  CHECK(t.dtype() == kFloat32);
  std::vector<double> want = {0, 51, 10, 30, 255, 102, 20, 40};
  auto got = t.to_vector();
  for (size_t i = 0; i < want.size(); i++) CHECK(got[i] == doctest::Approx(want[i] / 255.0));
  CHECK(data::ToTensor()(from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3}).to(kUInt8)).shape() ==
        Shape{1, 1, 3});
  tbtest::check_error([&] { data::ToTensor()(t); }, {"ToTensor", "uint8", "float32"});

  data::Normalize norm({0.5, 0.25}, {0.5, 2.0});
  auto n = norm(t).to_vector();
  for (int c = 0; c < 2; c++)
    for (int i = 0; i < 4; i++) {
      double mean = c == 0 ? 0.5 : 0.25, sd = c == 0 ? 0.5 : 2.0;
      CHECK(n[c * 4 + i] == doctest::Approx((want[c * 4 + i] / 255.0 - mean) / sd));
    }
  CHECK(data::Normalize({1.0}, {2.0})(t).to_vector()[4] == doctest::Approx((1.0 - 1.0) / 2.0));
  tbtest::check_error([&] { data::Normalize({0.1, 0.2, 0.3}, {1, 1, 1})(t); },
                      {"Normalize", "3 mean/std values", "2 channels"});
  tbtest::check_error([&] { data::Normalize({0.1}, {0.0}); }, {"Normalize", "non-zero"});
  tbtest::check_error([&] { data::Normalize({0.1, 0.2}, {1.0}); }, {"Normalize", "2 and 1"});
  tbtest::check_error([&] { norm(img); }, {"Normalize", "float32", "uint8"});
}

TEST_CASE("RandomCrop and RandomHorizontalFlip") {
  // [1, 3, 4] with values 1..12
  std::vector<float> v(12);
  for (int i = 0; i < 12; i++) v[i] = (float)(i + 1);
  Tensor x = from_vector(v, {1, 3, 4});
  Generator g(5);
  // no padding, crop == size: the image itself
  CHECK(data::RandomCrop(3, 4, 0)(x, g).to_vector() == x.to_vector());
  // padding 1, crop 3×4: every result is a window of the zero-padded 5×6 image
  std::set<std::pair<int, int>> seen;
  for (int trial = 0; trial < 200; trial++) {
    auto y = data::RandomCrop(3, 4, 1)(x, g).to_vector();
    bool found = false;
    for (int i = 0; i <= 2 && !found; i++)
      for (int j = 0; j <= 2 && !found; j++) {
        bool match = true;
        for (int r = 0; r < 3; r++)
          for (int c = 0; c < 4; c++) {
            int sr = i + r - 1, sc = j + c - 1;
            float want = (sr >= 0 && sr < 3 && sc >= 0 && sc < 4) ? v[sr * 4 + sc] : 0.0f;
            match = match && y[r * 4 + c] == want;
          }
        if (match) {
          found = true;
          seen.insert({i, j});
        }
      }
    CHECK(found);
  }
  CHECK(seen.size() == 9); // all 3×3 offsets occur
  // square size on a 2-D image
  CHECK(data::RandomCrop(2)(x.select(0, 0), g).shape() == Shape{2, 2});
  tbtest::check_error([&] { data::RandomCrop(4, 4, 0)(x, g); },
                      {"RandomCrop", "4×4", "larger", "3×4"});

  auto flipped = data::RandomHorizontalFlip(1.0)(x, g).to_vector();
  CHECK(flipped[0] == 4);
  CHECK(flipped[3] == 1);
  CHECK(flipped[11] == 9);
  CHECK(data::RandomHorizontalFlip(0.0)(x, g).to_vector() == x.to_vector());
  int flips = 0;
  for (int i = 0; i < 400; i++) flips += data::RandomHorizontalFlip(0.5)(x, g).to_vector()[0] == 4;
  CHECK(flips > 140);
  CHECK(flips < 260);
  tbtest::check_error([&] { data::RandomHorizontalFlip(1.5); }, {"RandomHorizontalFlip", "[0, 1]"});
  // same generator state -> same augmentation
  Generator g1(9), g2(9);
  data::Compose aug({data::RandomCrop(3, 3, 1), data::RandomHorizontalFlip()});
  CHECK(aug(x, g1).to_vector() == aug(x, g2).to_vector());
}

TEST_CASE("Resize: bilinear, align_corners=False, matches torchvision") {
  std::vector<float> v(30);
  for (int i = 0; i < 30; i++) v[i] = (float)((i * 7) % 11) / 10.0f;
  Tensor x = from_vector(v, {2, 3, 5});
  // Computed with torch 1.13 / torchvision 0.14:
  //   x = torch.tensor([((i*7)%11)/10.0 for i in range(30)]).reshape(2,3,5)
  //   F.resize(x, [5,3], interpolation=BILINEAR, antialias=False)  (== F.interpolate(...,
  //   mode='bilinear', align_corners=False)), and F.resize(x, 4, ...) -> [2, 4, 6].
  // Tolerance 1e-6: the same float32 formula, summed in the same order; only the last bit of a
  // rounding may differ.
  const std::vector<float> want53 = {
      0.233333319f, 0.300000012f, 0.733333349f, 0.313333303f, 0.380000025f, 0.666666627f,
      0.433333308f, 0.5f,         0.566666603f, 0.333333313f, 0.620000005f, 0.686666608f,
      0.266666681f, 0.699999928f, 0.766666591f, 0.466666698f, 0.899999917f, 0.233333379f,
      0.546666741f, 0.539999902f, 0.313333392f, 0.666666687f, 3.57627883e-08f, 0.433333367f,
      0.786666691f, 0.120000035f, 0.553333402f, 0.866666675f, 0.200000018f, 0.633333385f};
  const std::vector<float> want46 = {
      0.0f,         0.524999976f, 0.466666698f, 0.591666639f, 0.900000095f, 0.600000024f,
      0.125f,       0.649999976f, 0.591666698f, 0.430208325f, 0.509374976f, 0.725000024f,
      0.275000006f, 0.490624964f, 0.569791675f, 0.408333361f, 0.349999964f, 0.875f,
      0.400000006f, 0.100000001f, 0.408333272f, 0.533333361f, 0.474999964f, 1.0f,
      0.600000024f, 0.300000012f, 0.60833329f,  0.733333349f, 0.400000036f, 0.100000001f,
      0.725000024f, 0.425000012f, 0.332291663f, 0.457291663f, 0.525000036f, 0.224999994f,
      0.875f,       0.575000048f, 0.241666704f, 0.366666615f, 0.675000012f, 0.375f,
      1.0f,         0.700000048f, 0.366666704f, 0.491666615f, 0.800000072f, 0.5f};
  Tensor y = data::Resize(5, 3)(x);
  REQUIRE(y.shape() == Shape{2, 5, 3});
  CHECK(tbtest::max_abs_diff(y, from_vector(want53, {2, 5, 3})) < 1e-6);
  Tensor z = data::Resize(4)(x); // shorter side 3 -> 4, longer 5 -> int(4 * 5 / 3) = 6
  REQUIRE(z.shape() == Shape{2, 4, 6});
  CHECK(tbtest::max_abs_diff(z, from_vector(want46, {2, 4, 6})) < 1e-6);
  CHECK(data::Resize(3, 5)(x).to_vector() == x.to_vector()); // same size: unchanged
  CHECK(data::Resize(6)(x.select(0, 0)).shape() == Shape{6, 10});
  tbtest::check_error([&] { data::Resize(0); }, {"Resize"});
}

TEST_CASE("CenterCrop matches torchvision, including zero padding") {
  std::vector<float> v(40);
  for (int i = 0; i < 40; i++) v[i] = (float)i;
  Tensor x = from_vector(v, {2, 4, 5}); // torch.arange(40).reshape(2, 4, 5)
  // F.center_crop(x, [3, 2]): top = round(0.5) = 0 (half to even), left = round(1.5) = 2
  CHECK(data::CenterCrop(3, 2)(x).to_vector() ==
        std::vector<double>{2, 3, 7, 8, 12, 13, 22, 23, 27, 28, 32, 33});
  // F.center_crop(x, [7, 2]): 1 zero row above, 2 below
  CHECK(data::CenterCrop(7, 2)(x).to_vector() ==
        std::vector<double>{0, 0, 2, 3, 7, 8, 12, 13, 17, 18, 0, 0, 0, 0,
                            0, 0, 22, 23, 27, 28, 32, 33, 37, 38, 0, 0, 0, 0});
  // F.center_crop(x, [2, 8]): 1 zero column left, 2 right; rows 1..2
  CHECK(data::CenterCrop(2, 8)(x).to_vector() ==
        std::vector<double>{0, 5, 6, 7, 8, 9, 0, 0, 0, 10, 11, 12, 13, 14, 0, 0,
                            0, 25, 26, 27, 28, 29, 0, 0, 0, 30, 31, 32, 33, 34, 0, 0});
  CHECK(data::CenterCrop(2)(x.select(0, 1)).shape() == Shape{2, 2});
}

// ---------------------------------------------------------------------------------------------
// DataLoader

TEST_CASE("DataLoader: batching, drop_last, shuffle covers every index once per epoch") {
  const int64_t n = 10;
  Tensor inputs = arange(0, 2 * n, 1, kFloat32).reshape({n, 2});
  auto ds = std::make_shared<data::TensorDataset>(inputs, arange(n));

  DataLoader plain(ds, 3);
  CHECK(plain.size() == 4);
  auto batches = run_epoch(plain);
  REQUIRE(batches.size() == 4);
  CHECK(batches[0].inputs.shape() == Shape{3, 2});
  CHECK(batches[0].inputs.dtype() == kFloat32);
  CHECK(batches[0].targets.dtype() == kInt64);
  CHECK(batches[1].targets.to_int_vector() == std::vector<int64_t>{3, 4, 5});
  CHECK(batches[1].inputs.to_vector() == std::vector<double>{6, 7, 8, 9, 10, 11});
  CHECK(batches[3].inputs.shape() == Shape{1, 2});

  DataLoader dropping(ds, {.batch_size = 3, .drop_last = true});
  CHECK(dropping.size() == 3);
  CHECK(run_epoch(dropping).size() == 3);

  DataLoader shuffled(ds, {.batch_size = 4, .shuffle = true, .seed = 7});
  std::vector<std::vector<int64_t>> orders;
  for (int epoch = 0; epoch < 3; epoch++) {
    std::vector<int64_t> order;
    for (const Batch& b : shuffled) {
      auto t = b.targets.to_int_vector();
      order.insert(order.end(), t.begin(), t.end());
      // inputs travel with their targets
      auto in = b.inputs.to_vector();
      for (size_t k = 0; k < t.size(); k++) CHECK(in[2 * k] == 2.0 * (double)t[k]);
    }
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    CHECK(sorted == all);
    orders.push_back(order);
  }
  CHECK(orders[0] != orders[1]); // the epoch advances after each loop
  CHECK(shuffled.epoch() == 3);
  shuffled.set_epoch(1);
  CHECK(shuffled.epoch_order(1) == orders[1]);
  DataLoader again(ds, {.batch_size = 4, .shuffle = true, .seed = 7});
  again.set_epoch(1);
  std::vector<int64_t> order1;
  for (const Batch& b : again)
    for (int64_t t : b.targets.to_int_vector()) order1.push_back(t);
  CHECK(order1 == orders[1]);
  DataLoader other_seed(ds, {.batch_size = 4, .shuffle = true, .seed = 8});
  CHECK(other_seed.epoch_order(0) != shuffled.epoch_order(0));

  tbtest::check_error([&] { DataLoader(ds, 0); }, {"DataLoader", "batch_size"});
  tbtest::check_error([&] { DataLoader(ds, {.batch_size = 2, .num_workers = -1}); },
                      {"DataLoader", "num_workers"});
  tbtest::check_error([&] { DataLoader(nullptr, 2); }, {"DataLoader", "null"});
}

TEST_CASE("DataLoader: identical batches for num_workers 0 and 2, fast path == generic path") {
  TempDir dir;
  write_bytes(dir / "images", idx_images(37, 6, 5));
  std::vector<uint8_t> labels(37);
  for (int i = 0; i < 37; i++) labels[i] = (uint8_t)(i % 10);
  write_bytes(dir / "labels", idx_labels(labels));
  auto ds = std::make_shared<data::IdxDataset>(dir / "images", dir / "labels");

  // random augmentation: results depend only on (seed, epoch, index)
  data::Compose aug({data::ToTensor(), data::RandomCrop(6, 5, 2), data::RandomHorizontalFlip(),
                     data::Normalize({0.3}, {0.4})});
  std::vector<std::vector<Batch>> runs;
  for (int workers : {0, 2, 3}) {
    DataLoader loader(ds, {.batch_size = 8, .shuffle = true, .seed = 3, .num_workers = workers,
                           .transform = aug});
    loader.set_epoch(4);
    runs.push_back(run_epoch(loader));
  }
  REQUIRE(runs[0].size() == 5);
  CHECK(runs[0][4].inputs.shape() == Shape{5, 1, 6, 5});
  check_same_batches(runs[0], runs[1]);
  check_same_batches(runs[0], runs[2]);

  // Compose(ToTensor, Normalize) takes the uint8 fast path; a lambda doing the same does not.
  data::Compose fast({data::ToTensor(), data::Normalize({0.5}, {0.25})});
  data::Transform slow = [](const Tensor& x, Generator& g) {
    return data::Normalize({0.5}, {0.25})(data::ToTensor()(x, g), g);
  };
  for (int workers : {0, 2}) {
    DataLoader a(ds, {.batch_size = 8, .num_workers = workers, .transform = fast});
    DataLoader b(ds, {.batch_size = 8, .num_workers = workers, .transform = slow});
    check_same_batches(run_epoch(a), run_epoch(b));
  }
  // no transform on uint8 samples = ToTensor
  DataLoader none(ds, 4);
  DataLoader to_tensor(ds, {.batch_size = 4, .transform = [](const Tensor& x, Generator&) {
                              return data::ToTensor()(x);
                            }});
  auto nb = run_epoch(none);
  check_same_batches(nb, run_epoch(to_tensor));
  CHECK(nb[0].inputs.shape() == Shape{4, 1, 6, 5});
  CHECK(nb[0].inputs.to_vector()[7] == doctest::Approx(pixel_value(0, 1, 2) / 255.0));
}

TEST_CASE("DataLoader: workers run without grad, errors propagate, early exit joins") {
  auto probe = std::make_shared<ProbeDataset>();
  {
    enable_grad on;
    for (int workers : {0, 2}) {
      DataLoader loader(probe, {.batch_size = 3, .num_workers = workers});
      CHECK(run_epoch(loader).size() == 7);
    }
    CHECK(probe->grad_enabled_calls.load() == 0);
    CHECK(is_grad_enabled());
  }

  probe->fail_at = 13;
  for (int workers : {0, 2}) {
    DataLoader loader(probe, {.batch_size = 3, .num_workers = workers});
    int seen = 0;
    tbtest::check_error(
        [&] {
          for (const Batch& b : loader) {
            (void)b;
            seen++;
          }
        },
        {"ProbeDataset", "sample 13"});
    CHECK(seen == 4); // batches 0..3 arrive, batch 4 holds sample 13
    probe->fail_at = -1;
    CHECK(run_epoch(loader).size() == 7); // a fresh epoch after the failure
    probe->fail_at = 13;
  }
  probe->fail_at = -1;

  // leaving mid-epoch, restarting, and destroying with workers busy all join cleanly
  for (int rep = 0; rep < 5; rep++) {
    DataLoader loader(probe, {.batch_size = 2, .num_workers = 2, .prefetch_factor = 1});
    for (const Batch& b : loader) {
      CHECK(b.targets.to_int_vector()[0] == 0);
      break;
    }
    auto it = loader.begin(); // restart: ends the first iteration
    CHECK((*it).targets.to_int_vector()[0] == 0);
    ++it;
    CHECK(it->targets.to_int_vector()[0] == 2);
  }

  // samples of different shapes in one batch
  struct Ragged : data::Dataset {
    int64_t size() const override { return 4; }
    data::Example get(int64_t i) const override { return {zeros({i + 1}), 0}; }
  };
  DataLoader ragged(std::make_shared<Ragged>(), 2);
  tbtest::check_error([&] { run_epoch(ragged); }, {"DataLoader", "sample 1", "[2]", "[1]"});
  struct Doubles : data::Dataset {
    int64_t size() const override { return 2; }
    data::Example get(int64_t) const override { return {zeros({2}, kFloat64), 0}; }
  };
  DataLoader doubles(std::make_shared<Doubles>(), 2);
  tbtest::check_error([&] { run_epoch(doubles); }, {"DataLoader", "float64", "float32"});
}

TEST_CASE("data.h usage snippet compiles and runs") {
  TempDir dir;
  write_gzip(dir / "train-images-idx3-ubyte.gz", idx_images(130, 28, 28));
  std::vector<uint8_t> labels(130);
  for (int i = 0; i < 130; i++) labels[i] = (uint8_t)(i % 10);
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_labels(labels));
  ScopedEnv env("TB_FASHION_MNIST_DIR", dir.path.c_str());
  int64_t batches = 0;
  // --- as in include/tb/data.h ---
  auto train = std::make_shared<tb::data::FashionMNIST>("", /*train=*/true); // default root
  tb::data::Compose tf({tb::data::ToTensor(), tb::data::Normalize({0.2860}, {0.3530})});
  tb::data::DataLoader loader(train, {.batch_size = 64, .shuffle = true, .seed = 1,
                                      .num_workers = 2, .transform = tf});
  for (int epoch = 0; epoch < 3; epoch++) {
    loader.set_epoch(epoch);
    for (const tb::data::Batch& b : loader) { /* b.inputs [64, 1, 28, 28] f32, b.targets [64] i64 */
      CHECK(b.inputs.size(0) == b.targets.size(0));
      CHECK(b.inputs.shape() == Shape{b.targets.size(0), 1, 28, 28});
      batches++;
    }
  }
  // ---
  CHECK(batches == 3 * 3); // 130 = 64 + 64 + 2
}

TEST_CASE("DataLoader: Fashion-MNIST-sized batch collation is well under 1 ms") {
  TempDir dir;
  write_bytes(dir / "images", idx_images(640, 28, 28));
  write_bytes(dir / "labels", idx_labels(std::vector<uint8_t>(640, 1)));
  auto ds = std::make_shared<data::IdxDataset>(dir / "images", dir / "labels");
  DataLoader loader(ds, {.batch_size = 64, .transform = data::Compose({data::ToTensor(),
                                                                       data::Normalize({0.2860},
                                                                                       {0.3530})})});
  std::vector<int64_t> order = loader.epoch_order(0);
  loader.make_batch(0, order, 0); // warm the allocator
  // the fastest of 10 (the machine is shared; the best run shows what the code costs)
  double ms = 1e9;
  for (int b = 0; b < 10; b++) {
    auto t0 = std::chrono::steady_clock::now();
    Batch batch = loader.make_batch(0, order, b);
    ms = std::min(ms, std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - t0).count());
    REQUIRE(batch.inputs.shape() == Shape{64, 1, 28, 28});
  }
  MESSAGE("collation of a 64x1x28x28 batch: " << ms << " ms");
#if defined(__OPTIMIZE__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  CHECK(ms < 1.0); // about 0.01 ms in a release build; unoptimised/sanitised builds are exempt
#endif
}

TEST_CASE("Fashion-MNIST from the Debian package (skipped when not installed)") {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(root + "/train-labels-idx1-ubyte.gz")) {
    MESSAGE("skipped: " << root << " not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  data::FashionMNIST train(root, true), test(root, false);
  CHECK(train.size() == 60000);
  CHECK(test.size() == 10000);
  CHECK(train.rows() == 28);
  CHECK(train.cols() == 28);
  // the first labels, read with Python's gzip module
  CHECK(std::vector<int64_t>(train.targets().begin(), train.targets().begin() + 10) ==
        std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  CHECK(std::vector<int64_t>(test.targets().begin(), test.targets().begin() + 10) ==
        std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
  auto px = train.get(0).input.to_int_vector();
  int64_t sum = 0;
  for (auto p : px) sum += p;
  CHECK(sum == 76247); // sum of the first training image's pixels
  CHECK(px[14 * 28 + 12] == 0xed); // row 14 = 000001040607020000000000ede2d9...
}

} // TEST_SUITE
