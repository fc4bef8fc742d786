// The Tensor handle: geometry, raw data access, fresh allocations. Its autograd members
// (backward, hooks, grad) are in src/autograd/tensor_autograd.cpp.
// Differentiable views and copies (view, permute, contiguous, to, ...) live in src/ops/view.cpp
// and src/ops/copy.cpp, because they record autograd nodes.
#include <tb/core.h>

#include <algorithm>
#include <numeric>

namespace tb {

// ---- shapes ----------------------------------------------------------------------------------

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    TB_CHECK(d >= 0, "shape {}: negative size", shape_str(s));
    TB_CHECK(d == 0 || n <= INT64_MAX / d, "shape {}: element count overflows int64", shape_str(s));
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = (int64_t)s.size() - 1; i >= 0; i--) {
    st[i] = acc;
    // Size 0 counts as 1 (as PyTorch), so an empty tensor's strides can overflow: [0, 2^40, 2^40].
    TB_CHECK(i == 0 || !__builtin_mul_overflow(acc, std::max<int64_t>(s[i], 1), &acc),
             "shape {}: stride calculation overflows int64", shape_str(s));
  }
  return st;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; i++) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    TB_CHECK(da == db || da == 1 || db == 1,
             "{}: shapes {} and {} cannot be broadcast together (dim {}: {} vs {})", op,
             shape_str(a), shape_str(b), i, da, db);
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int64_t wrap_dim(const char* op, int64_t d, int64_t ndim) {
  int64_t n = std::max<int64_t>(ndim, 1); // a scalar accepts dim 0 and -1
  TB_CHECK(d >= -n && d < n, "{}: dim {} out of range for a {}-d tensor (expected [{}, {}])", op, d,
           ndim, -n, n - 1);
  return d < 0 ? d + n : d;
}

// ---- checks ----------------------------------------------------------------------------------

void check_defined(const char* op, const Tensor& t, const char* name) {
  TB_CHECK(t.defined(), "{}: {} is an undefined tensor", op, name);
}
void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  TB_CHECK(a.device() == b.device(),
           "{}: expected all tensors on the same device, got {} (shape {}) and {} (shape {})", op,
           a.device().str(), shape_str(a.shape()), b.device().str(), shape_str(b.shape()));
}
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  TB_CHECK(a.dtype() == b.dtype(), "{}: expected the same dtype, got {} (shape {}) and {} (shape {})",
           op, dtype_name(a.dtype()), shape_str(a.shape()), dtype_name(b.dtype()),
           shape_str(b.shape()));
}
void check_floating(const char* op, const Tensor& t) {
  TB_CHECK(is_floating(t.dtype()), "{}: expected a floating-point tensor, got {} (shape {})", op,
           dtype_name(t.dtype()), shape_str(t.shape()));
}
void check_dim(const char* op, const Tensor& t, int64_t dim, const char* name) {
  TB_CHECK(t.dim() == dim, "{}: expected {} to be {}-d, got shape {}", op, name, dim,
           shape_str(t.shape()));
}

// ---- the handle --------------------------------------------------------------------------------

static const TensorImpl& impl_of(const std::shared_ptr<TensorImpl>& p) {
  TB_CHECK(p, "tensor: use of an undefined tensor");
  return *p;
}

const Shape& Tensor::shape() const { return impl_of(impl_).sizes; }
const Shape& Tensor::strides() const { return impl_of(impl_).strides; }
int64_t Tensor::offset() const { return impl_of(impl_).offset; }
DType Tensor::dtype() const { return impl_of(impl_).dtype; }
Device Tensor::device() const { return impl_of(impl_).storage->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { return impl_of(impl_).storage; }
int64_t Tensor::numel() const { return numel_of(shape()); }
int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim("size", d, dim())]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim("stride", d, dim())]; }

bool Tensor::is_contiguous() const {
  const auto& s = shape();
  const auto& st = strides();
  int64_t expected = 1;
  for (int64_t i = (int64_t)s.size() - 1; i >= 0; i--) {
    if (s[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

bool Tensor::is_channels_last() const {
  if (dim() != 4) return false;
  const auto& s = shape();
  const auto& st = strides();
  // memory order N, H, W, C: C innermost
  int64_t order[4] = {1, 3, 2, 0}, expected = 1;
  for (int64_t k : order) {
    if (s[k] != 1 && st[k] != expected) return false;
    expected *= s[k];
  }
  return true;
}

bool is_dense(const Tensor& t) {
  // Sort dims by stride; dense when each stride equals the product of the sizes inside it.
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < t.dim(); i++)
    if (t.shape()[i] != 1) idx.push_back(i);
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return t.strides()[a] < t.strides()[b];
  });
  int64_t expected = 1;
  for (int64_t i : idx) {
    if (t.strides()[i] != expected) return false;
    expected *= t.shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  const auto& im = impl_of(impl_);
  return static_cast<char*>(im.storage->data) + im.offset * (int64_t)dtype_size(im.dtype);
}

#define TB_DATA_ACCESSOR(T, CHECK)                                                              \
  template <> T* Tensor::data<T>() const {                                                     \
    TB_CHECK(CHECK, "data<" #T ">: tensor has dtype {} (shape {})", dtype_name(dtype()),       \
             shape_str(shape()));                                                              \
    return static_cast<T*>(raw_data());                                                        \
  }
TB_DATA_ACCESSOR(float, dtype() == kFloat32)
TB_DATA_ACCESSOR(double, dtype() == kFloat64)
TB_DATA_ACCESSOR(int8_t, dtype() == kInt8)
TB_DATA_ACCESSOR(uint8_t, dtype() == kUInt8)
TB_DATA_ACCESSOR(int32_t, dtype() == kInt32)
TB_DATA_ACCESSOR(int64_t, dtype() == kInt64)
TB_DATA_ACCESSOR(bool, dtype() == kBool)
TB_DATA_ACCESSOR(uint16_t, dtype() == kFloat16 || dtype() == kBFloat16)
#undef TB_DATA_ACCESSOR

double Tensor::item() const {
  TB_CHECK(numel() == 1, "item: expected a tensor with one element, got shape {}",
           shape_str(shape()));
  return to_vector()[0];
}

std::vector<double> Tensor::to_vector() const {
  Tensor c = detach().to(kCPU).to(kFloat64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

std::vector<int64_t> Tensor::to_int_vector() const {
  Tensor c = detach().to(kCPU).to(kInt64).contiguous();
  const int64_t* p = c.data<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

void Tensor::bump_version() const { storage()->version++; }
uint64_t Tensor::version() const { return storage()->version; }

// ---- fresh tensors -------------------------------------------------------------------------------

Tensor make_view(const Tensor& base, const Shape& sizes, const Shape& strides, int64_t offset) {
  auto v = std::make_shared<TensorImpl>();
  v->storage = base.storage();
  v->sizes = sizes;
  v->strides = strides;
  v->offset = offset;
  v->dtype = base.dtype();
  return Tensor(v);
}

Tensor empty_strided(const Shape& s, const Shape& strides, TensorOptions o) {
  TB_CHECK(s.size() == strides.size(), "empty_strided: shape {} and strides {} differ in length",
           shape_str(s), shape_str(strides));
  TB_CHECK(s.size() <= 8, "empty: at most 8 dims are supported, got shape {}", shape_str(s));
  int64_t n = numel_of(s);
  TB_CHECK((uint64_t)n <= (uint64_t)(INT64_MAX / 8), "empty: shape {} is too large", shape_str(s));
  auto t = std::make_shared<TensorImpl>();
  t->storage = std::make_shared<Storage>(o.device, (size_t)n * dtype_size(o.dtype));
  t->sizes = s;
  t->strides = strides;
  t->dtype = o.dtype;
  Tensor out(t);
  if (o.requires_grad) out.requires_grad_(true);
  return out;
}

Tensor empty(const Shape& s, TensorOptions o) { return empty_strided(s, contiguous_strides(s), o); }

Tensor empty_channels_last(const Shape& s, TensorOptions o) {
  TB_CHECK(s.size() == 4, "empty_channels_last: expected a 4-d shape [N, C, H, W], got {}",
           shape_str(s));
  int64_t C = s[1], H = s[2], W = s[3];
  return empty_strided(s, {H * W * C, 1, W * C, C}, o);
}

Tensor empty_like(const Tensor& t) { return empty(t.shape(), TensorOptions(t.dtype(), t.device())); }

} // namespace tb
