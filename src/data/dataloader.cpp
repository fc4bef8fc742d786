// DataLoader: batches in a (seed, epoch)-determined order, built by worker threads ahead of use.
//
// Determinism: the order of an epoch and every sample's random transform come from generators
// seeded with (seed, epoch) and (seed, epoch, sample index) alone, and batch b always holds
// positions [b*B, (b+1)*B) of the order, so the batches do not depend on which thread made them.
//
// Threads: worker w repeatedly takes the next batch number k (a shared counter), but only while
// k < consumed + prefetch_factor * num_workers (the bound on batches in flight); finished batches
// wait in a map keyed by k until the consumer asks for k. Workers run under no_grad.
#include <tb/data.h>

#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

namespace tb::data {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
uint64_t mix(uint64_t a, uint64_t b) { return splitmix64(splitmix64(a) ^ (b + 0x632be59bd9b4e019ULL)); }

} // namespace

struct DataLoader::Epoch {
  int64_t epoch = 0;
  std::vector<int64_t> order;
  int64_t num_batches = 0;
  std::mutex m;
  std::condition_variable work_cv, ready_cv;
  std::map<int64_t, std::pair<Batch, std::exception_ptr>> ready; // finished, not yet consumed
  int64_t next_produce = 0, next_consume = 0, max_ahead = 1;
  bool stop = false;
  std::vector<std::thread> threads;
};

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, bool shuffle,
                       uint64_t seed, bool drop_last, int num_workers, Transform transform)
    : DataLoader(std::move(dataset), DataLoaderOptions{batch_size, shuffle, seed, drop_last,
                                                       num_workers, std::move(transform)}) {}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options)
    : dataset_(std::move(dataset)), opts_(std::move(options)) {
  TB_CHECK(dataset_ != nullptr, "DataLoader: the data set is null");
  TB_CHECK(opts_.batch_size >= 1, "DataLoader: batch_size must be >= 1, got {}", opts_.batch_size);
  TB_CHECK(opts_.num_workers >= 0, "DataLoader: num_workers must be >= 0, got {}",
           opts_.num_workers);
  TB_CHECK(opts_.prefetch_factor >= 1, "DataLoader: prefetch_factor must be >= 1, got {}",
           opts_.prefetch_factor);

  // The fast path needs the transform to be exactly ToTensor followed by Normalizes.
  if (auto im = dataset_->uint8_images()) {
    auto norms_fit = [&](const std::vector<Transform>& rest) {
      for (const auto& t : rest) {
        const Normalize* n = t ? t.target<Normalize>() : nullptr;
        if (!n || !(n->mean.size() == 1 || (int64_t)n->mean.size() == im->channels)) return false;
        fast_norms_.push_back(*n);
      }
      return true;
    };
    if (!opts_.transform || opts_.transform.target<ToTensor>()) {
      fast_uint8_ = true;
    } else if (const Compose* c = opts_.transform.target<Compose>()) {
      if (!c->transforms.empty() && c->transforms[0] && c->transforms[0].target<ToTensor>())
        fast_uint8_ = norms_fit({c->transforms.begin() + 1, c->transforms.end()});
      if (!fast_uint8_) fast_norms_.clear();
    }
  }
}

DataLoader::~DataLoader() { stop_epoch(); }

int64_t DataLoader::size() const {
  const int64_t n = dataset_->size(), b = opts_.batch_size;
  return opts_.drop_last ? n / b : (n + b - 1) / b;
}

// Fisher-Yates with a generator seeded from (seed, epoch).
std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order(dataset_->size());
  std::iota(order.begin(), order.end(), 0);
  if (opts_.shuffle) {
    Generator g(mix(opts_.seed, (uint64_t)epoch));
    for (int64_t i = (int64_t)order.size() - 1; i > 0; i--)
      std::swap(order[i], order[g.next_u64() % (uint64_t)(i + 1)]);
  }
  return order;
}

// inputs[b, c, i] = normalize((float)byte / 255) straight from the data set's bytes; the same
// float operations, in the same order, as ToTensor then Normalize, so both paths agree exactly.
Batch DataLoader::collate_uint8(const UInt8Images& im, const std::vector<int64_t>& indices) const {
  const int64_t B = (int64_t)indices.size(), C = im.channels, HW = im.height * im.width;
  Batch batch;
  batch.inputs = empty({B, C, im.height, im.width}, kFloat32);
  batch.targets = empty({B}, kInt64);
  float* out = batch.inputs.data<float>();
  int64_t* tgt = batch.targets.data<int64_t>();
  for (int64_t b = 0; b < B; b++) {
    const int64_t idx = indices[b];
    TB_CHECK(idx >= 0 && idx < im.n, "DataLoader: index {} out of range for {} samples", idx, im.n);
    const uint8_t* src = im.pixels + idx * C * HW;
    tgt[b] = im.targets[idx];
    for (int64_t c = 0; c < C; c++) {
      float* dst = out + (b * C + c) * HW;
      if (im.channels_last)
        for (int64_t i = 0; i < HW; i++) dst[i] = (float)src[i * C + c] / 255.0f;
      else
        for (int64_t i = 0; i < HW; i++) dst[i] = (float)src[c * HW + i] / 255.0f;
      for (const Normalize& n : fast_norms_) {
        const float m = (float)n.mean[n.mean.size() == 1 ? 0 : c];
        const float s = (float)n.std[n.std.size() == 1 ? 0 : c];
        for (int64_t i = 0; i < HW; i++) dst[i] = (dst[i] - m) / s;
      }
    }
  }
  return batch;
}

Batch DataLoader::make_batch(int64_t epoch, const std::vector<int64_t>& order, int64_t b) const {
  tb::no_grad guard;
  const int64_t n = (int64_t)order.size(), B = opts_.batch_size;
  TB_CHECK(b >= 0 && b * B < n, "DataLoader: batch {} out of range ({} samples, batch_size {})", b,
           n, B);
  std::vector<int64_t> indices(order.begin() + b * B, order.begin() + std::min(n, (b + 1) * B));
  if (fast_uint8_)
    if (auto im = dataset_->uint8_images()) return collate_uint8(*im, indices);

  Batch batch;
  batch.targets = empty({(int64_t)indices.size()}, kInt64);
  int64_t* tgt = batch.targets.data<int64_t>();
  Shape first_shape;
  for (size_t k = 0; k < indices.size(); k++) {
    const int64_t idx = indices[k];
    Example ex = dataset_->get(idx);
    Tensor x = ex.input;
    Generator g(mix(mix(opts_.seed, (uint64_t)epoch), (uint64_t)idx));
    if (opts_.transform)
      x = opts_.transform(x, g);
    else if (x.defined() && x.dtype() == kUInt8)
      x = ToTensor()(x);
    check_defined("DataLoader", x, "transformed sample");
    TB_CHECK(x.dtype() == kFloat32 && x.device().is_cpu(),
             "DataLoader: sample {} is {} {} on {} after the transform; batches need float32 on "
             "the CPU (add ToTensor() to the transform?)",
             idx, x.dtype(), shape_str(x.shape()), x.device());
    if (k == 0) {
      first_shape = x.shape();
      Shape s = {(int64_t)indices.size()};
      s.insert(s.end(), first_shape.begin(), first_shape.end());
      batch.inputs = empty(s, kFloat32);
    }
    TB_CHECK(x.shape() == first_shape,
             "DataLoader: sample {} has shape {} but sample {} of the same batch has {}; samples "
             "must share one shape (add Resize/CenterCrop to the transform)",
             idx, shape_str(x.shape()), indices[0], shape_str(first_shape));
    Tensor xc = x.contiguous();
    std::memcpy(batch.inputs.data<float>() + k * xc.numel(), xc.data<float>(),
                xc.numel() * sizeof(float));
    tgt[k] = ex.target;
  }
  return batch;
}

void DataLoader::stop_epoch() {
  if (!live_) return;
  {
    std::lock_guard<std::mutex> lk(live_->m);
    live_->stop = true;
  }
  live_->work_cv.notify_all();
  for (auto& t : live_->threads) t.join();
  live_.reset();
}

DataLoader::Iterator DataLoader::begin() {
  stop_epoch();
  auto e = std::make_unique<Epoch>();
  e->epoch = epoch_++;
  e->order = epoch_order(e->epoch);
  e->num_batches = size();
  e->max_ahead = std::max<int64_t>(1, (int64_t)opts_.prefetch_factor * opts_.num_workers);
  live_ = std::move(e);
  Epoch* ep = live_.get();
  try {
    for (int w = 0; w < opts_.num_workers && w < ep->num_batches; w++)
      ep->threads.emplace_back([this, ep] {
        tb::no_grad guard; // grad mode is thread-local: workers never record a graph
        for (;;) {
          int64_t k;
          {
            std::unique_lock<std::mutex> lk(ep->m);
            ep->work_cv.wait(lk, [&] {
              return ep->stop || ep->next_produce >= ep->num_batches ||
                     ep->next_produce < ep->next_consume + ep->max_ahead;
            });
            if (ep->stop || ep->next_produce >= ep->num_batches) return;
            k = ep->next_produce++;
          }
          std::pair<Batch, std::exception_ptr> item;
          try {
            item.first = make_batch(ep->epoch, ep->order, k);
          } catch (...) {
            item.second = std::current_exception();
          }
          {
            std::lock_guard<std::mutex> lk(ep->m);
            ep->ready.emplace(k, std::move(item));
          }
          ep->ready_cv.notify_all();
        }
      });
  } catch (const std::system_error& err) {
    stop_epoch();
    throw Error(fmt::format("DataLoader: cannot start {} worker threads: {}", opts_.num_workers,
                            err.what()));
  }
  Iterator it;
  it.loader_ = this;
  it.done_ = !next_batch(it.batch_);
  return it;
}

bool DataLoader::next_batch(Batch& out) {
  Epoch* ep = live_.get();
  if (!ep) return false;
  if (ep->next_consume >= ep->num_batches) {
    stop_epoch();
    return false;
  }
  if (ep->threads.empty()) { // num_workers == 0: build it here
    const int64_t k = ep->next_consume++;
    try {
      out = make_batch(ep->epoch, ep->order, k);
    } catch (...) {
      stop_epoch();
      throw;
    }
    return true;
  }
  std::pair<Batch, std::exception_ptr> item;
  {
    std::unique_lock<std::mutex> lk(ep->m);
    ep->ready_cv.wait(lk, [&] { return ep->ready.count(ep->next_consume) > 0; });
    auto it = ep->ready.find(ep->next_consume);
    item = std::move(it->second);
    ep->ready.erase(it);
    ep->next_consume++;
  }
  ep->work_cv.notify_all();
  if (item.second) {
    stop_epoch();
    std::rethrow_exception(item.second);
  }
  out = std::move(item.first);
  return true;
}

DataLoader::Iterator& DataLoader::Iterator::operator++() {
  done_ = true; // stays done if next_batch throws
  batch_ = Batch();
  done_ = !loader_->next_batch(batch_);
  return *this;
}

} // namespace tb::data
