// tb/core.h — the tensor engine's foundation: dtypes, devices, errors, storage, the caching
// allocators, the random generator and the Tensor handle itself.
//
// A Tensor is a view: a shared Storage (bytes on one device) plus sizes, strides (in elements) and
// an offset. Views (reshape of contiguous data, permute, narrow, expand, ...) share storage; every
// in-place op bumps the storage's version counter so autograd can refuse stale saved tensors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace tb {

// ---------------------------------------------------------------------------------------------
// Errors

// Every bad input raises tb::Error; its message names the op, the offending shapes/dtypes/devices
// and what was expected.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// TB_CHECK(cond, "fmt", args...) throws tb::Error with the formatted message when cond is false.
#define TB_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) throw ::tb::Error(::fmt::format(__VA_ARGS__));          \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Shapes

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);    // "[2, 3, 4]"
int64_t numel_of(const Shape& s);         // product of sizes (1 for a scalar)
Shape contiguous_strides(const Shape& s); // row-major strides in elements
// The broadcast of two shapes (numpy rules); tb::Error naming `op` and both shapes if they clash.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// ---------------------------------------------------------------------------------------------
// Dtypes

enum class DType : uint8_t { Float32, Float64, Float16, BFloat16, Int8, UInt8, Int32, Int64, Bool };
constexpr DType kFloat32 = DType::Float32, kFloat64 = DType::Float64, kFloat16 = DType::Float16,
                kBFloat16 = DType::BFloat16, kInt8 = DType::Int8, kUInt8 = DType::UInt8,
                kInt32 = DType::Int32, kInt64 = DType::Int64, kBool = DType::Bool;

size_t dtype_size(DType t);         // bytes per element
const char* dtype_name(DType t);    // "float32", ... (safetensors spells them F32, see io.h)
bool is_floating(DType t);          // float32/64, float16, bfloat16
// The dtype of a binary op's result, PyTorch's promotion for tensor-tensor ops
// (bool < uint8/int8 < int32 < int64 < float16/bfloat16 < float32 < float64).
DType promote_types(DType a, DType b);

// Half-precision conversions (round to nearest even). Storage only: arithmetic is done in float32.
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
uint16_t float_to_bfloat16(float f);
float bfloat16_to_float(uint16_t b);

// ---------------------------------------------------------------------------------------------
// Devices

enum class DeviceType : uint8_t { CPU, CUDA };
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const; // "cpu" or "cuda:0"
};
inline const Device kCPU{DeviceType::CPU, 0};
inline Device cuda_device(int index = 0) { return Device{DeviceType::CUDA, index}; }
// Parses "cpu", "cuda", "cuda:1".
Device parse_device(const std::string& s);

// ---------------------------------------------------------------------------------------------
// Memory: one caching allocator per device. Freed blocks go to size-bucketed free lists and are
// reused, so a training step does not pay page faults for its large activations every time.

struct MemoryStats {
  size_t in_use = 0;    // bytes handed out and not yet freed
  size_t reserved = 0;  // bytes held from the system (in use + cached)
  size_t peak = 0;      // highest in_use seen since the last reset
  size_t allocations = 0, cache_hits = 0;
};
MemoryStats memory_stats(Device d = kCPU);
void reset_peak_memory(Device d = kCPU);
void empty_cache(Device d = kCPU); // returns cached blocks to the system

// Raw device memory from the caching allocator. Blocks are at least 64-byte aligned.
void* device_alloc(Device d, size_t nbytes);
void device_free(Device d, void* p, size_t nbytes);

// Bytes on one device, owned by the caching allocator. `version` counts in-place writes.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  uint64_t version = 0;
  bool owned = true;  // false for storage wrapping user memory (from_blob)
  Storage(Device d, size_t nbytes);
  Storage(void* user_data, size_t nbytes, Device d); // borrowed, never freed
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// ---------------------------------------------------------------------------------------------
// Threads: one setting governs OpenMP, OpenBLAS (OpenMP build) and oneDNN together.

void set_num_threads(int n);
int get_num_threads(); // defaults to the number of cores

// Which CPU kernels ops call: the fast ones (OpenMP, OpenBLAS, oneDNN; default) or the plain-loop
// reference twins in kernels/ref/. Tests run ops both ways and compare.
enum class CpuKernels { Fast, Reference };
void set_cpu_kernels(CpuKernels k);
CpuKernels cpu_kernels();

// ---------------------------------------------------------------------------------------------
// Random numbers: a seeded generator (Philox-free, plain mt19937_64), one global default.

struct Generator {
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }
  void manual_seed(uint64_t seed);
  uint64_t next_u64();
  double next_double(); // uniform in [0, 1)
  double next_normal(); // standard normal (Box-Muller)
  uint64_t state[4];    // xoshiro256** state: small, fast, copyable (checkpointable)
};
Generator& default_generator();
void manual_seed(uint64_t seed); // seeds the default generator

// ---------------------------------------------------------------------------------------------
// Tensor

struct Node;          // autograd graph node (autograd.h)
struct TensorImpl;
class Tensor;

// Hook on a tensor's gradient: receives the gradient, may return a replacement (or an undefined
// Tensor to keep it as is).
using TensorHook = std::function<Tensor(const Tensor&)>;

struct TensorOptions {
  DType dtype = kFloat32;
  Device device = kCPU;
  bool requires_grad = false;
  TensorOptions() = default;
  TensorOptions(DType t) : dtype(t) {}
  TensorOptions(Device d) : device(d) {}
  TensorOptions(DType t, Device d, bool rg = false) : dtype(t), device(d), requires_grad(rg) {}
  TensorOptions with_dtype(DType t) const { auto o = *this; o.dtype = t; return o; }
  TensorOptions with_device(Device d) const { auto o = *this; o.device = d; return o; }
  TensorOptions with_requires_grad(bool r) const { auto o = *this; o.requires_grad = r; return o; }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& sizes() const { return shape(); }
  const Shape& strides() const;
  int64_t offset() const;
  int64_t dim() const { return (int64_t)shape().size(); }
  int64_t size(int64_t d) const;   // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  size_t element_size() const { return dtype_size(dtype()); }
  bool is_contiguous() const;
  // true when the logical N×C×H×W tensor is laid out as N×H×W×C in memory (channels-last)
  bool is_channels_last() const;

  // Raw data (storage data + offset), typed. data<T>() checks that T matches dtype().
  void* raw_data() const;
  template <typename T> T* data() const;
  const std::shared_ptr<Storage>& storage() const;
  // A scalar's value (any dtype) converted to double; numel() must be 1.
  double item() const;
  // All elements (any dtype) as doubles / int64, in logical row-major order. For tests and tools.
  std::vector<double> to_vector() const;
  std::vector<int64_t> to_int_vector() const;

  // Conversions (copies only when needed; differentiable).
  Tensor to(DType t) const;
  Tensor to(Device d) const;
  Tensor cpu() const { return to(kCPU); }
  Tensor cuda(int index = 0) const { return to(cuda_device(index)); }
  Tensor contiguous() const;
  Tensor contiguous_channels_last() const; // 4-D only: same logical shape, NHWC memory
  Tensor clone() const;

  // Views (share storage, differentiable).
  Tensor view(const Shape& s) const;    // needs compatible strides; -1 infers one size
  Tensor reshape(const Shape& s) const; // view when possible, else copy
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor narrow(int64_t d, int64_t start, int64_t length) const;
  Tensor slice(int64_t d, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t d, int64_t index) const; // removes dim d
  Tensor operator[](int64_t i) const { return select(0, i); }
  Tensor expand(const Shape& s) const;           // -1 keeps a size; size-1 dims broadcast
  Tensor squeeze(int64_t d) const;
  Tensor unsqueeze(int64_t d) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;

  // Autograd.
  bool requires_grad() const;
  Tensor& requires_grad_(bool r = true);  // only on leaves
  bool is_leaf() const;
  Tensor grad() const;                    // undefined until a backward reaches this leaf
  void set_grad(const Tensor& g) const;
  std::shared_ptr<Node> grad_fn() const;
  int output_nr() const;
  Tensor detach() const;                  // same storage, no history
  // backward on a scalar, or with an explicit gradient of the same shape.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  // Runs on this tensor's gradient during backward; returns a handle to remove it.
  int register_hook(TensorHook hook) const;
  void remove_hook(int handle) const;
  // Keeps .grad on a non-leaf tensor too.
  void retain_grad() const;

  // In-place (bump the version counter; refused on tensors that need grad while grad mode is on).
  Tensor& zero_();
  Tensor& fill_(double v);
  Tensor& copy_(const Tensor& src); // broadcasts src, converts dtype, may cross devices
  Tensor& add_(const Tensor& o, double alpha = 1.0);
  Tensor& mul_(const Tensor& o);
  Tensor& mul_(double s);
  Tensor& clamp_(double lo, double hi);
  void bump_version() const;
  uint64_t version() const;

  // Arithmetic sugar (see ops.h for the full list).
  Tensor operator-() const;

  std::string str() const; // "tensor([[...]], shape=[2, 3], dtype=float32, device=cpu)"
  const std::shared_ptr<TensorImpl>& impl() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Autograd bookkeeping carried by a tensor that takes part in a graph.
struct AutogradMeta {
  bool requires_grad = false;
  bool retains_grad = false;
  Tensor grad;                      // accumulated gradient (leaves, or retained non-leaves)
  std::shared_ptr<Node> grad_fn;    // the node that produced this tensor (null for leaves)
  int output_nr = 0;                // which output of grad_fn this tensor is
  std::weak_ptr<Node> grad_accumulator; // leaves: the node that adds into .grad (shared by uses)
  std::vector<std::pair<int, TensorHook>> hooks;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape sizes, strides;
  int64_t offset = 0;
  DType dtype = kFloat32;
  std::unique_ptr<AutogradMeta> autograd; // null until needed
  AutogradMeta& meta() {
    if (!autograd) autograd = std::make_unique<AutogradMeta>();
    return *autograd;
  }
};

template <> float* Tensor::data<float>() const;
template <> double* Tensor::data<double>() const;
template <> int8_t* Tensor::data<int8_t>() const;
template <> uint8_t* Tensor::data<uint8_t>() const;
template <> int32_t* Tensor::data<int32_t>() const;
template <> int64_t* Tensor::data<int64_t>() const;
template <> bool* Tensor::data<bool>() const;
template <> uint16_t* Tensor::data<uint16_t>() const; // float16 or bfloat16 bits

// A tensor with the given geometry over existing storage (no copy, no autograd).
Tensor make_view(const Tensor& base, const Shape& sizes, const Shape& strides, int64_t offset);
// A fresh tensor with uninitialised memory.
Tensor empty(const Shape& s, TensorOptions o = {});
// Same as empty, but strides in channels-last order for a 4-D N×C×H×W shape.
Tensor empty_channels_last(const Shape& s, TensorOptions o = {});
// A fresh tensor with the given strides (must describe a dense, non-overlapping layout).
Tensor empty_strided(const Shape& s, const Shape& strides, TensorOptions o = {});
// True when the tensor's elements fill exactly numel() consecutive slots of its storage in some
// dimension order (contiguous, channels-last, or any permutation): flat kernels can then walk it.
bool is_dense(const Tensor& t);
Tensor empty_like(const Tensor& t); // same shape, dtype, device (contiguous)

// Factories.
Tensor zeros(const Shape& s, TensorOptions o = {});
Tensor ones(const Shape& s, TensorOptions o = {});
Tensor full(const Shape& s, double value, TensorOptions o = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor scalar_tensor(double v, TensorOptions o = {});
Tensor arange(double start, double end, double step = 1.0, TensorOptions o = {kInt64});
Tensor arange(int64_t end, TensorOptions o = {kInt64});
Tensor from_vector(const std::vector<float>& v, const Shape& s, TensorOptions o = {});
Tensor from_vector(const std::vector<double>& v, const Shape& s, TensorOptions o = {kFloat64});
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s, TensorOptions o = {kInt64});
// Copies `nbytes` of raw memory laid out contiguously in dtype `o.dtype`.
Tensor from_buffer(const void* data, const Shape& s, TensorOptions o = {});
// Wraps user memory without copying; the memory must outlive the tensor.
Tensor from_blob(void* data, const Shape& s, TensorOptions o = {});

// Random factories (default generator unless one is given).
Tensor rand(const Shape& s, TensorOptions o = {}, Generator* g = nullptr);  // U[0, 1)
Tensor randn(const Shape& s, TensorOptions o = {}, Generator* g = nullptr); // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& s, TensorOptions o = {kInt64},
               Generator* g = nullptr);
Tensor randperm(int64_t n, Generator* g = nullptr); // int64
// In-place initialisers (under no_grad), as torch.nn.init.
Tensor& uniform_(Tensor& t, double lo, double hi, Generator* g = nullptr);
Tensor& normal_(Tensor& t, double mean, double std, Generator* g = nullptr);
// fan_in/fan_out from a weight shape (Linear: [out, in]; Conv: [out, in/groups, kh, kw]).
std::pair<int64_t, int64_t> fan_in_out(const Shape& weight_shape);
// gain for nonlinearity "linear", "relu", "leaky_relu" (param = slope), "tanh", "sigmoid".
double calculate_gain(const std::string& nonlinearity, double param = 0.01);
Tensor& kaiming_uniform_(Tensor& t, double a = 0, const std::string& mode = "fan_in",
                         const std::string& nonlinearity = "leaky_relu", Generator* g = nullptr);
Tensor& kaiming_normal_(Tensor& t, double a = 0, const std::string& mode = "fan_in",
                        const std::string& nonlinearity = "leaky_relu", Generator* g = nullptr);
Tensor& xavier_uniform_(Tensor& t, double gain = 1.0, Generator* g = nullptr);
Tensor& xavier_normal_(Tensor& t, double gain = 1.0, Generator* g = nullptr);

std::ostream& operator<<(std::ostream& os, const Tensor& t);
const char* node_name(const Node* n); // an autograd node's op name ("conv2d"), for messages

// ---------------------------------------------------------------------------------------------
// Checking helpers used by every op (they throw tb::Error with the op's name in the message).

void check_defined(const char* op, const Tensor& t, const char* name);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_floating(const char* op, const Tensor& t);
void check_dim(const char* op, const Tensor& t, int64_t dim, const char* name);
// Wraps a possibly negative dim into [0, ndim); error names the op when out of range.
int64_t wrap_dim(const char* op, int64_t d, int64_t ndim);

} // namespace tb

template <> struct fmt::formatter<tb::DType> : fmt::formatter<const char*> {
  auto format(tb::DType t, format_context& ctx) const {
    return fmt::formatter<const char*>::format(tb::dtype_name(t), ctx);
  }
};
template <> struct fmt::formatter<tb::Device> : fmt::formatter<std::string> {
  auto format(const tb::Device& d, format_context& ctx) const {
    return fmt::formatter<std::string>::format(d.str(), ctx);
  }
};
