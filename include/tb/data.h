// tb/data.h — data sets, per-sample transforms and the DataLoader (as torch.utils.data and
// torchvision.transforms/datasets).
//
//   auto train = std::make_shared<tb::data::FashionMNIST>("", /*train=*/true); // default root
//   tb::data::Compose tf({tb::data::ToTensor(), tb::data::Normalize({0.2860}, {0.3530})});
//   tb::data::DataLoader loader(train, {.batch_size = 64, .shuffle = true, .seed = 1,
//                                       .num_workers = 2, .transform = tf});
//   for (int epoch = 0; epoch < 3; epoch++) {
//     loader.set_epoch(epoch);
//     for (const tb::data::Batch& b : loader) { /* b.inputs [64, 1, 28, 28] f32, b.targets [64] i64 */ }
//   }
//
// Raw image data sets keep their pixels in memory as uint8 and return one sample at a time as a
// uint8 tensor shaped like a numpy image: [H, W] (grayscale) or [H, W, C]. ToTensor turns that
// into float32 [C, H, W] in [0, 1]; the geometric transforms and Normalize then work on float32
// [C, H, W] (or [H, W]).
#pragma once

#include <tb/autograd.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tb::data {

// ---------------------------------------------------------------------------------------------
// Data sets

// One sample: the input (any dtype/shape) and its class index.
struct Example {
  Tensor input;
  int64_t target = 0;
};

// Pixels of an in-memory uint8 image data set, all samples the same size: sample i occupies
// channels*height*width bytes at pixels + i * channels*height*width, in [C, H, W] order
// (channels_last = false) or [H, W, C] (true). The DataLoader uses it to collate a batch without
// per-sample tensors.
struct UInt8Images {
  const uint8_t* pixels = nullptr;
  const int64_t* targets = nullptr; // n class indices
  int64_t n = 0, channels = 1, height = 0, width = 0;
  bool channels_last = false;
};

// The interface (torch.utils.data.Dataset, map style). get() must be safe to call from several
// threads at once: DataLoader workers share one data set.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual Example get(int64_t index) const = 0;
  // Set for in-memory uint8 image sets (the DataLoader's fast path); must agree with get().
  virtual std::optional<UInt8Images> uint8_images() const { return std::nullopt; }
};

// Samples from tensors in memory: input i = inputs[i] (a contiguous copy), target i = targets[i].
// inputs [N, ...] (any dtype), targets int64 [N].
class TensorDataset : public Dataset {
 public:
  TensorDataset(Tensor inputs, Tensor targets);
  int64_t size() const override { return inputs_.size(0); }
  Example get(int64_t index) const override;

 private:
  Tensor inputs_;
  std::vector<int64_t> targets_;
};

// The samples of `dataset` at `indices`, in that order (torch.utils.data.Subset): sample i is
// dataset->get(indices[i]). Indices must be in range (tb::Error naming the first bad one). A run of
// consecutive indices over a uint8 image set keeps the DataLoader's fast path.
//   auto small = tb::data::Subset::first(train_set, 1000); // the first 1000 samples (or all)
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<const Dataset> dataset, std::vector<int64_t> indices);
  // Samples 0 .. min(n, dataset->size()) - 1.
  static std::shared_ptr<Subset> first(std::shared_ptr<const Dataset> dataset, int64_t n);
  int64_t size() const override { return (int64_t)indices_.size(); }
  Example get(int64_t index) const override;
  std::optional<UInt8Images> uint8_images() const override;

 private:
  std::shared_ptr<const Dataset> dataset_;
  std::vector<int64_t> indices_;
};

// MNIST-format (IDX) images + labels: an images file (magic 0x00000803, uint8 [N, R, C]) and a
// labels file (magic 0x00000801, uint8 [N]), plain or gzip-compressed (detected from the bytes).
// Samples are uint8 [R, C].
class IdxDataset : public Dataset {
 public:
  IdxDataset(const std::string& images_path, const std::string& labels_path);
  int64_t size() const override { return (int64_t)targets_.size(); }
  Example get(int64_t index) const override;
  std::optional<UInt8Images> uint8_images() const override;
  const std::vector<int64_t>& targets() const { return targets_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }

 private:
  std::vector<uint8_t> pixels_; // [N, rows, cols]
  std::vector<int64_t> targets_;
  int64_t rows_ = 0, cols_ = 0;
};

// Fashion-MNIST / MNIST from a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte, with or
// without ".gz". An empty root means default_fashion_mnist_root() (FashionMNIST) and is an error
// for MNIST. 60000 training / 10000 test images of 28×28, labels 0..9.
class FashionMNIST : public IdxDataset {
 public:
  explicit FashionMNIST(const std::string& root = "", bool train = true);
  static const std::vector<std::string>& classes(); // "T-shirt/top", "Trouser", ...
};
class MNIST : public IdxDataset {
 public:
  MNIST(const std::string& root, bool train = true);
};
// $TB_FASHION_MNIST_DIR when set and non-empty, else /usr/share/datasets/fashion-mnist (Debian
// package dataset-fashion-mnist).
std::string default_fashion_mnist_root();

// CIFAR-10 / CIFAR-100 "binary version" batches. root is the extracted folder
// (cifar-10-batches-bin: data_batch_1.bin..data_batch_5.bin, test_batch.bin, records of
// 1 label byte + 3072 pixel bytes; cifar-100-binary: train.bin, test.bin, records of coarse + fine
// label bytes + 3072 pixel bytes). The pixels of a record are 3 planes of 32×32 (R, G, B).
// An empty root means $TB_CIFAR10_DIR / $TB_CIFAR100_DIR. Samples are uint8 [32, 32, 3].
class CifarBinary : public Dataset {
 public:
  int64_t size() const override { return (int64_t)targets_.size(); }
  Example get(int64_t index) const override;
  std::optional<UInt8Images> uint8_images() const override;
  const std::vector<int64_t>& targets() const { return targets_; }

 protected:
  // Reads whole records from `files`; label_bytes = 1 (CIFAR-10: the class) or 2 (CIFAR-100:
  // coarse, fine); labels must be < num_classes (and coarse < 20).
  void load(const char* op, const std::vector<std::string>& files, int label_bytes,
            int64_t num_classes);
  std::vector<uint8_t> pixels_; // [N, 3, 32, 32]
  std::vector<int64_t> targets_, coarse_targets_;
};
class CIFAR10 : public CifarBinary {
 public:
  explicit CIFAR10(const std::string& root = "", bool train = true);
};
// Targets are the 100 fine labels; coarse_targets() holds the 20 super-classes.
class CIFAR100 : public CifarBinary {
 public:
  explicit CIFAR100(const std::string& root = "", bool train = true);
  const std::vector<int64_t>& coarse_targets() const { return coarse_targets_; }
};

// torchvision's ImageFolder: root/<class>/<image>, classes = sorted sub-folder names (index =
// position), images = the files with an image extension (.png .jpg .jpeg .bmp .ppm .pgm .tga
// .gif, any case) in each class folder, sorted by path. Images are decoded with stb_image when
// get() is called and converted to `channels` channels (3 = RGB as PIL's convert("RGB"), 1 =
// grayscale). Samples are uint8 [H, W, channels].
class ImageFolder : public Dataset {
 public:
  explicit ImageFolder(const std::string& root, int channels = 3);
  int64_t size() const override { return (int64_t)samples_.size(); }
  Example get(int64_t index) const override;
  const std::vector<std::string>& classes() const { return classes_; }
  const std::vector<std::pair<std::string, int64_t>>& samples() const { return samples_; }

 private:
  std::string root_;
  int channels_;
  std::vector<std::string> classes_;
  std::vector<std::pair<std::string, int64_t>> samples_; // (path, class index)
};

// Decodes one image file (PNG, JPEG, BMP, ...) to uint8 [H, W, channels] (channels 1..4).
Tensor read_image(const std::string& path, int channels = 3);

// ---------------------------------------------------------------------------------------------
// Transforms: callables Tensor -> Tensor on one sample; random ones draw from the Generator they
// are given (the DataLoader gives each sample its own, seeded from (seed, epoch, index)).

using Transform = std::function<Tensor(const Tensor&, Generator&)>;

// Runs transforms in order.
struct Compose {
  std::vector<Transform> transforms;
  Compose(std::vector<Transform> ts) : transforms(std::move(ts)) {}
  Tensor operator()(const Tensor& x, Generator& g) const;
};

// uint8 [H, W] -> float32 [1, H, W]; uint8 [H, W, C] -> float32 [C, H, W]; values / 255.
struct ToTensor {
  Tensor operator()(const Tensor& x, Generator& g) const;
  Tensor operator()(const Tensor& x) const;
};

// (x[c] - mean[c]) / std[c] on float32 [C, H, W]; mean and std have C values (or 1, shared).
struct Normalize {
  std::vector<double> mean, std;
  Normalize(std::vector<double> mean, std::vector<double> std);
  Tensor operator()(const Tensor& x, Generator& g) const;
  Tensor operator()(const Tensor& x) const;
};

// Pads every side with `padding` zeros, then crops a size_h × size_w window at a uniformly random
// position (torchvision RandomCrop with constant padding).
struct RandomCrop {
  int64_t size_h, size_w, padding;
  RandomCrop(int64_t size, int64_t padding = 0) : RandomCrop(size, size, padding) {}
  RandomCrop(int64_t size_h, int64_t size_w, int64_t padding);
  Tensor operator()(const Tensor& x, Generator& g) const;
};

// Mirrors the width axis with probability p.
struct RandomHorizontalFlip {
  double p;
  explicit RandomHorizontalFlip(double p = 0.5);
  Tensor operator()(const Tensor& x, Generator& g) const;
};

// Bilinear resize, align_corners = False, no antialiasing (F.interpolate / torchvision's Resize on
// tensors with antialias=False). Resize(s): the shorter side becomes s, the longer keeps the aspect
// ratio (truncated), as torchvision; Resize(h, w): exactly h × w.
struct Resize {
  int64_t size_h, size_w; // size_w < 0: shorter side = size_h
  explicit Resize(int64_t size) : Resize(size, -1) {}
  Resize(int64_t size_h, int64_t size_w);
  Tensor operator()(const Tensor& x, Generator& g) const;
  Tensor operator()(const Tensor& x) const;
};

// Crops the central size_h × size_w window (top = round((H - h) / 2), half to even, as
// torchvision); a window larger than the image is zero-padded.
struct CenterCrop {
  int64_t size_h, size_w;
  explicit CenterCrop(int64_t size) : CenterCrop(size, size) {}
  CenterCrop(int64_t size_h, int64_t size_w);
  Tensor operator()(const Tensor& x, Generator& g) const;
  Tensor operator()(const Tensor& x) const;
};

// ---------------------------------------------------------------------------------------------
// DataLoader

// A collated batch: inputs [B, ...] contiguous float32, targets int64 [B].
struct Batch {
  Tensor inputs, targets;
};

struct DataLoaderOptions {
  int64_t batch_size = 1;
  bool shuffle = false;
  uint64_t seed = 0;       // shuffle order and random transforms depend on (seed, epoch) only
  bool drop_last = false;  // drop a last batch smaller than batch_size
  int num_workers = 0;     // 0: batches are made in the calling thread
  // Applied to every sample; empty = ToTensor for uint8 samples, float32 samples as they are.
  // Its output must be float32 and of one shape for all samples.
  Transform transform;
  int prefetch_factor = 2; // batches in flight per worker
};

// Iterates over a data set in batches. Each iteration (begin()) runs one epoch: the order is the
// identity, or with shuffle a permutation drawn from (seed, epoch); after begin() the epoch
// advances by one, so consecutive loops reshuffle, and set_epoch(e) (as DistributedSampler's)
// pins the epoch the next loop uses. Worker threads (num_workers > 0) build batches ahead of the
// consumer, at most prefetch_factor * num_workers at a time, and hand them out in order; the
// batches are identical for any num_workers. A worker's error is rethrown by the iteration that
// reaches its batch. Only one iteration is live at a time: begin() ends the previous one.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options);
  DataLoader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, bool shuffle = false,
             uint64_t seed = 0, bool drop_last = false, int num_workers = 0,
             Transform transform = {});
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t size() const;  // batches per epoch (len(loader))
  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  int64_t epoch() const { return epoch_; } // the epoch the next begin() uses
  const DataLoaderOptions& options() const { return opts_; }
  const Dataset& dataset() const { return *dataset_; }
  // The sample order of an epoch (a permutation with shuffle, else 0..N-1).
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  // Batch `b` of epoch `epoch`, made in the calling thread (what the workers run).
  Batch make_batch(int64_t epoch, const std::vector<int64_t>& order, int64_t b) const;

  struct Sentinel {};
  class Iterator {
   public:
    const Batch& operator*() const { return batch_; }
    const Batch* operator->() const { return &batch_; }
    Iterator& operator++();
    bool operator!=(Sentinel) const { return !done_; }
    bool operator==(Sentinel) const { return done_; }

   private:
    friend class DataLoader;
    DataLoader* loader_ = nullptr;
    Batch batch_;
    bool done_ = true;
  };
  Iterator begin();
  Sentinel end() { return {}; }

 private:
  struct Epoch; // the live iteration: order, worker threads, finished batches
  bool next_batch(Batch& out);
  void stop_epoch();
  Batch collate_uint8(const UInt8Images& im, const std::vector<int64_t>& indices) const;

  std::shared_ptr<const Dataset> dataset_;
  DataLoaderOptions opts_;
  // Fast path: a uint8 in-memory data set whose transform is [ToTensor, Normalize...] (or empty):
  // batches are collated straight from the bytes, with these normalisations.
  bool fast_uint8_ = false;
  std::vector<Normalize> fast_norms_;
  int64_t epoch_ = 0;
  std::unique_ptr<Epoch> live_;
};

} // namespace tb::data
