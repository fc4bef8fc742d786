// Factories: filled tensors, ranges, tensors from host data, random tensors and the
// torch.nn.init initialisers. Random values are drawn on the CPU (one stream, reproducible on
// every device) and copied to the target device.
#include <tb/core.h>

#include <kernels/copy.h>

#include <cmath>
#include <cstring>

namespace tb {

Tensor full(const Shape& s, double value, TensorOptions o) {
  bool rg = o.requires_grad;
  Tensor t = empty(s, o.with_requires_grad(false));
  if (o.device.is_cuda()) kernels::cuda_fill(o.dtype, t.raw_data(), t.numel(), value);
  else kernels::ref_fill(o.dtype, t.raw_data(), t.numel(), value);
  if (rg) t.requires_grad_(true);
  return t;
}

Tensor zeros(const Shape& s, TensorOptions o) { return full(s, 0.0, o); }
Tensor ones(const Shape& s, TensorOptions o) { return full(s, 1.0, o); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), {t.dtype(), t.device()}); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), {t.dtype(), t.device()}); }
Tensor scalar_tensor(double v, TensorOptions o) { return full({}, v, o); }

// Host data of dtype o.dtype laid out contiguously -> a tensor on o.device.
Tensor from_buffer(const void* data, const Shape& s, TensorOptions o) {
  Tensor cpu = empty(s, {o.dtype, kCPU});
  if (cpu.numel() > 0) std::memcpy(cpu.raw_data(), data, cpu.numel() * dtype_size(o.dtype));
  Tensor t = o.device.is_cpu() ? cpu : cpu.to(o.device);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor from_blob(void* data, const Shape& s, TensorOptions o) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(data, numel_of(s) * dtype_size(o.dtype), o.device);
  impl->sizes = s;
  impl->strides = contiguous_strides(s);
  impl->dtype = o.dtype;
  Tensor t(impl);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

template <typename T>
static Tensor from_host_vector(const char* op, const std::vector<T>& v, const Shape& s,
                               TensorOptions o, DType host_dtype) {
  TB_CHECK((int64_t)v.size() == numel_of(s), "{}: {} values do not fill shape {} ({} elements)",
           op, v.size(), shape_str(s), numel_of(s));
  Tensor t = from_buffer(v.data(), s, {host_dtype, kCPU});
  t = t.to(o.dtype).to(o.device);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor from_vector(const std::vector<float>& v, const Shape& s, TensorOptions o) {
  return from_host_vector("from_vector", v, s, o, kFloat32);
}
Tensor from_vector(const std::vector<double>& v, const Shape& s, TensorOptions o) {
  return from_host_vector("from_vector", v, s, o, kFloat64);
}
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s, TensorOptions o) {
  return from_host_vector("from_vector", v, s, o, kInt64);
}

Tensor arange(double start, double end, double step, TensorOptions o) {
  TB_CHECK(step != 0 && std::isfinite(start) && std::isfinite(end),
           "arange: expected finite bounds and a nonzero step, got ({}, {}, {})", start, end, step);
  int64_t n = (int64_t)std::ceil((end - start) / step);
  if (n < 0) n = 0;
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; i++) v[i] = start + i * step;
  return from_vector(v, {n}, o);
}
Tensor arange(int64_t end, TensorOptions o) { return arange(0.0, (double)end, 1.0, o); }

// ---- random --------------------------------------------------------------------------------------

static Tensor random_tensor(const Shape& s, TensorOptions o, Generator* g, bool normal) {
  TB_CHECK(is_floating(o.dtype), "{}: expected a floating dtype, got {}", normal ? "randn" : "rand",
           dtype_name(o.dtype));
  Generator& gen = g ? *g : default_generator();
  std::vector<double> v(numel_of(s));
  for (auto& x : v) x = normal ? gen.next_normal() : gen.next_double();
  return from_vector(v, s, o);
}

Tensor rand(const Shape& s, TensorOptions o, Generator* g) { return random_tensor(s, o, g, false); }
Tensor randn(const Shape& s, TensorOptions o, Generator* g) { return random_tensor(s, o, g, true); }

Tensor randint(int64_t low, int64_t high, const Shape& s, TensorOptions o, Generator* g) {
  TB_CHECK(high > low, "randint: expected low < high, got [{}, {})", low, high);
  Generator& gen = g ? *g : default_generator();
  std::vector<int64_t> v(numel_of(s));
  uint64_t range = (uint64_t)(high - low);
  for (auto& x : v) x = low + (int64_t)(gen.next_u64() % range);
  return from_vector(v, s, o);
}

// Fisher-Yates shuffle of 0..n-1.
Tensor randperm(int64_t n, Generator* g) {
  TB_CHECK(n >= 0, "randperm: expected n >= 0, got {}", n);
  Generator& gen = g ? *g : default_generator();
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; i++) v[i] = i;
  for (int64_t i = n - 1; i > 0; i--) std::swap(v[i], v[gen.next_u64() % (uint64_t)(i + 1)]);
  return from_vector(v, {n}, {kInt64});
}

// ---- initialisers (torch.nn.init) ------------------------------------------------------------------

// Overwrites t's values (keeping its identity, dtype and device) with host values.
// Writing through detach() (same storage, no autograd) is how an initialiser may touch a parameter.
static Tensor& assign_host(Tensor& t, const std::vector<double>& v) {
  t.detach().copy_(from_vector(v, t.shape(), {kFloat64}));
  return t;
}

Tensor& uniform_(Tensor& t, double lo, double hi, Generator* g) {
  Generator& gen = g ? *g : default_generator();
  std::vector<double> v(t.numel());
  for (auto& x : v) x = lo + (hi - lo) * gen.next_double();
  return assign_host(t, v);
}

Tensor& normal_(Tensor& t, double mean, double std, Generator* g) {
  Generator& gen = g ? *g : default_generator();
  std::vector<double> v(t.numel());
  for (auto& x : v) x = mean + std * gen.next_normal();
  return assign_host(t, v);
}

// fan_in = in_channels * receptive field, fan_out = out_channels * receptive field.
std::pair<int64_t, int64_t> fan_in_out(const Shape& w) {
  TB_CHECK(w.size() >= 2, "fan_in_out: expected a weight with at least 2 dims, got {}", shape_str(w));
  int64_t receptive = 1;
  for (size_t i = 2; i < w.size(); i++) receptive *= w[i];
  return {w[1] * receptive, w[0] * receptive};
}

double calculate_gain(const std::string& nl, double param) {
  if (nl == "linear" || nl == "conv2d" || nl == "sigmoid") return 1.0;
  if (nl == "tanh") return 5.0 / 3.0;
  if (nl == "relu") return std::sqrt(2.0);
  if (nl == "leaky_relu") return std::sqrt(2.0 / (1 + param * param));
  if (nl == "selu") return 0.75;
  throw Error(fmt::format("calculate_gain: unknown nonlinearity '{}'", nl));
}

static double kaiming_std(const Tensor& t, double a, const std::string& mode, const std::string& nl) {
  auto [fan_in, fan_out] = fan_in_out(t.shape());
  TB_CHECK(mode == "fan_in" || mode == "fan_out", "kaiming init: mode must be fan_in or fan_out, got '{}'",
           mode);
  int64_t fan = mode == "fan_in" ? fan_in : fan_out;
  TB_CHECK(fan > 0, "kaiming init: zero fan for weight shape {}", shape_str(t.shape()));
  return calculate_gain(nl, a) / std::sqrt((double)fan);
}

Tensor& kaiming_uniform_(Tensor& t, double a, const std::string& mode, const std::string& nl,
                         Generator* g) {
  double bound = std::sqrt(3.0) * kaiming_std(t, a, mode, nl);
  return uniform_(t, -bound, bound, g);
}

Tensor& kaiming_normal_(Tensor& t, double a, const std::string& mode, const std::string& nl,
                        Generator* g) {
  return normal_(t, 0.0, kaiming_std(t, a, mode, nl), g);
}

Tensor& xavier_uniform_(Tensor& t, double gain, Generator* g) {
  auto [fan_in, fan_out] = fan_in_out(t.shape());
  double bound = gain * std::sqrt(6.0 / (double)(fan_in + fan_out));
  return uniform_(t, -bound, bound, g);
}

Tensor& xavier_normal_(Tensor& t, double gain, Generator* g) {
  auto [fan_in, fan_out] = fan_in_out(t.shape());
  return normal_(t, 0.0, gain * std::sqrt(2.0 / (double)(fan_in + fan_out)), g);
}

} // namespace tb
