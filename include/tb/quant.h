// tb/quant.h — quantization: affine qparams, fake-quant ops with straight-through gradients,
// observers, fake-quantize modules (incl. LSQ and PACT), fusion, and the prepare / calibrate /
// convert flow on any module tree. Names and numbers follow torch.ao.quantization (PyTorch 1.13);
// the tests compare against PyTorch fixtures (tools/make_quant_fixtures.py). Not part of tb.h:
//
//   #include <tb/quant.h>
//   namespace q = tb::quant;
//   auto model = std::make_shared<q::QuantWrapper>(float_model);   // quantizes the input
//   q::fuse_modules(*model, {{"module.0", "module.1", "module.2"}}); // conv+bn+relu (eval)
//   q::QConfig cfg = q::default_qconfig();                           // int8, histogram
//   q::prepare(*model, cfg);                                         // observers
//   for (auto& b : calibration_loader) (*model)(b.inputs);           // calibration
//   q::ConversionReport report = q::convert(*model);                 // int8 weights + qparams
//
// Affine quantization (one rounding rule everywhere: half to even, as PyTorch's fake-quant):
//   q  = clamp(round(x / scale) + zero_point, qmin, qmax)
//   x̂  = (q - zero_point) * scale
// computed as PyTorch does, x * (1/scale) in float32, so results are bit-identical to it.
//
// The design (docs/quantization.md): observers and fake-quant modules are modules with buffers,
// attached as the child "activation_post_process" of the layer whose output they watch, and run
// by a forward hook; layers are swapped through set_submodule (no tracing). Quantized weights are
// plain int8 tensors with their qparams as buffers next to them.
#pragma once

#include <tb/nn.h>
#include <tb/data.h>

#include <cfloat>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tb::quant {

// =============================================================================================
// 1. Quantization parameters

// The integer type a value is quantized to (PyTorch's quint8 / qint8): unsigned or signed.
enum class QDType { QUInt8, QInt8 };
// Per-tensor or per-channel; affine (zero point from the range) or symmetric (range centred on 0).
enum class QScheme { PerTensorAffine, PerTensorSymmetric, PerChannelAffine, PerChannelSymmetric };

bool is_per_channel(QScheme s);
bool is_symmetric(QScheme s);
const char* qscheme_name(QScheme s); // "per_tensor_affine", ...
const char* qdtype_name(QDType t);   // "quint8", "qint8"

// How a tensor is quantized: PyTorch's observer arguments. `bits` (2..8) sets the range
// [0, 2^b - 1] (QUInt8) or [-2^(b-1), 2^(b-1) - 1] (QInt8); explicit quant_min/quant_max
// override it. bits < 8 or an explicit range is PyTorch's "customized qrange" (it changes the
// symmetric quint8 zero point from 128 to (qmin + qmax) / 2, as PyTorch).
struct QuantSpec {
  QDType dtype = QDType::QUInt8;
  QScheme qscheme = QScheme::PerTensorAffine;
  int bits = 8;
  std::optional<int64_t> quant_min, quant_max;
  bool reduce_range = false; // one bit less range (PyTorch's x86 setting); off by default
  int64_t ch_axis = 0;       // per-channel schemes: the channel dim (negative counts from the end)
  float eps = FLT_EPSILON;   // smallest scale
};

// [qmin, qmax] for a spec, PyTorch's calculate_qmin_qmax. tb::Error (naming `who`) for bits
// outside 2..8, qmin >= qmax, a range without 0 or one outside the dtype.
std::pair<int64_t, int64_t> quant_range(const QuantSpec& s, const std::string& who = "QuantSpec");
// True when PyTorch would call this range "customized" (bits != 8 or explicit quant_min/max).
bool has_customized_qrange(const QuantSpec& s);

// Parameters of an affine quantizer. scale float32 and zero_point int32, both [1] (per tensor)
// or [C] (per channel along `axis`; negative counts from the end).
struct QParams {
  Tensor scale, zero_point;
  bool per_channel = false;
  int64_t axis = 0;
  int64_t qmin = 0, qmax = 255;
};

// PyTorch's UniformQuantizationObserverBase._calculate_qparams, in float32 as PyTorch: from
// min_val/max_val (scalars or [C], float32) to scale and zero point.
//   affine:    scale = (max(max,0) - min(min,0)) / (qmax - qmin), at least eps;
//              zp = clamp(qmin - round(min(min,0) / scale), qmin, qmax)
//   symmetric: scale = max(-min(min,0), max(max,0)) / ((qmax - qmin) / 2), at least eps;
//              zp = 0 (qint8), 128 (quint8), (qmin + qmax) / 2 (quint8, customized range)
// tb::Error when min > max somewhere (naming `who`).
QParams calculate_qparams(const Tensor& min_val, const Tensor& max_val, const QuantSpec& s,
                          const std::string& who = "calculate_qparams");

// =============================================================================================
// 2. Fake-quant ops (src/quant/fake_quant.cpp; kernels/{ref,cpu}/fake_quant.cpp)
//
// Forward as the formula above (float32 or float64 x, any layout). Backward: the straight-through
// estimator dx = dy where qmin <= round(x/scale) + zp <= qmax, 0 elsewhere. scale float32 > 0 and
// zero_point int32 in [qmin, qmax], [1] (per-tensor) or [x.size(axis)] (per-channel).

Tensor fake_quantize_per_tensor_affine(const Tensor& x, const Tensor& scale,
                                       const Tensor& zero_point, int64_t qmin, int64_t qmax);
Tensor fake_quantize_per_tensor_affine(const Tensor& x, double scale, int64_t zero_point,
                                       int64_t qmin, int64_t qmax);
Tensor fake_quantize_per_channel_affine(const Tensor& x, const Tensor& scale,
                                        const Tensor& zero_point, int64_t axis, int64_t qmin,
                                        int64_t qmax);
// Per tensor or per channel as `p` says.
Tensor fake_quantize(const Tensor& x, const QParams& p);

// LSQ / PyTorch's _fake_quantize_learnable_per_{tensor,channel}_affine: scale and zero_point are
// float32 parameters ([1] or [C]) and get gradients (x float32). With xq = round(x/s + z):
//   inside [qmin, qmax]:  dx = dy, ds = dy (x̂ - x) / s,  dz = 0
//   below qmin:           dx = 0,  ds = dy (qmin - z),    dz = -dy s
//   above qmax:           dx = 0,  ds = dy (qmax - z),    dz = -dy s
// ds and dz are multiplied by grad_factor (LSQ: 1 / sqrt(numel(x) * qmax)) and summed (over all
// but `axis` per channel). The forward rounds z half to even; the per-tensor backward uses
// trunc(z + 0.5) as PyTorch does.
Tensor fake_quantize_learnable_per_tensor_affine(const Tensor& x, const Tensor& scale,
                                                 const Tensor& zero_point, int64_t qmin,
                                                 int64_t qmax, double grad_factor);
Tensor fake_quantize_learnable_per_channel_affine(const Tensor& x, const Tensor& scale,
                                                  const Tensor& zero_point, int64_t axis,
                                                  int64_t qmin, int64_t qmax, double grad_factor);

// PACT (Choi et al. 2018): y = clamp(x, 0, alpha) quantized to [0, qmax] levels with
// scale = alpha / qmax; dx = dy on [0, alpha), d alpha = sum of dy where x >= alpha. alpha is a
// float32 [1] tensor (a parameter).
Tensor pact_fake_quantize(const Tensor& x, const Tensor& alpha, int64_t qmax);

// Integer tensors from float ones and back (convert, checkpoints): int8 (QInt8) or uint8.
Tensor quantize_tensor(const Tensor& x, const QParams& p, QDType dtype);
Tensor dequantize_tensor(const Tensor& q, const QParams& p);

// =============================================================================================
// 3. Observers (src/quant/observer.cpp, src/quant/histogram.cpp). forward(x) records statistics
// and returns x unchanged. calculate_qparams() raises tb::Error before any data was seen. State
// lives in buffers with PyTorch's names (min_val, max_val, histogram, eps), so it is in the
// state_dict; per-channel statistics are sized on first use.

class ObserverBase : public nn::Module {
 public:
  explicit ObserverBase(QuantSpec spec);
  virtual QParams calculate_qparams() = 0;
  virtual bool has_data() const = 0;
  // The range the qparams come from (after any clipping search), float32 scalars or [C].
  virtual std::pair<Tensor, Tensor> observed_range() = 0;
  QuantSpec spec;
  int64_t quant_min, quant_max;
};
using ObserverPtr = std::shared_ptr<ObserverBase>;

// Running min and max over everything seen.
class MinMaxObserver : public ObserverBase {
 public:
  explicit MinMaxObserver(QuantSpec spec = {});
  Tensor forward(const Tensor& x) override;
  QParams calculate_qparams() override;
  bool has_data() const override;
  std::pair<Tensor, Tensor> observed_range() override;
  TB_MODULE(MinMaxObserver)
};

// min += c (batch_min - min) (the first batch sets it), same for max.
class MovingAverageMinMaxObserver : public MinMaxObserver {
 public:
  explicit MovingAverageMinMaxObserver(QuantSpec spec = {}, double averaging_constant = 0.01);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(MovingAverageMinMaxObserver)
  double averaging_constant;
};

// min/max per slice along spec.ch_axis ([C] buffers, sized by the first tensor).
class PerChannelMinMaxObserver : public ObserverBase {
 public:
  explicit PerChannelMinMaxObserver(QuantSpec spec = {.dtype = QDType::QInt8,
                                                      .qscheme = QScheme::PerChannelSymmetric});
  Tensor forward(const Tensor& x) override;
  QParams calculate_qparams() override;
  bool has_data() const override;
  std::pair<Tensor, Tensor> observed_range() override;
  TB_MODULE(PerChannelMinMaxObserver)

 protected:
  std::pair<Tensor, Tensor> channel_minmax(const Tensor& x) const; // [C] each, float32
};

class MovingAveragePerChannelMinMaxObserver : public PerChannelMinMaxObserver {
 public:
  explicit MovingAveragePerChannelMinMaxObserver(
      QuantSpec spec = {.dtype = QDType::QInt8, .qscheme = QScheme::PerChannelSymmetric},
      double averaging_constant = 0.01);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(MovingAveragePerChannelMinMaxObserver)
  double averaging_constant;
};

// PyTorch's HistogramObserver: a running histogram of `bins` bins over [min_val, max_val]
// (re-binned, by up- then down-sampling, when the range grows), and calculate_qparams() searches
// for the sub-range with the least L2 quantization error (caffe2's NonlinearQuantizationParams
// search). Per-tensor only. One deliberate difference from 1.13 exactly: 1.13 passes
// int(min)/int(max) to histc (dropping values outside the truncated range, a regression fixed
// later); here the histogram covers the true range, as in PyTorch 1.12 and 2.x.
class HistogramObserver : public ObserverBase {
 public:
  explicit HistogramObserver(QuantSpec spec = {}, int64_t bins = 2048, int64_t upsample_rate = 128);
  Tensor forward(const Tensor& x) override;
  QParams calculate_qparams() override;
  bool has_data() const override;
  std::pair<Tensor, Tensor> observed_range() override;
  TB_MODULE(HistogramObserver)
  int64_t bins, upsample_rate;

 protected:
  // The histogram's support after the search: [new_min, new_max] (float32 scalars).
  virtual std::pair<Tensor, Tensor> search_range();
  void observe(const Tensor& x); // adds x (float32, contiguous) to the running histogram
};

// Clips the histogram's tails: keeps [quantile(1 - p), quantile(p)] (p = percentile / 100),
// linear inside a bin; symmetric schemes use max(|lo|, |hi|) both ways.
class PercentileObserver : public HistogramObserver {
 public:
  explicit PercentileObserver(QuantSpec spec = {}, double percentile = 99.99, int64_t bins = 2048);
  TB_MODULE(PercentileObserver)
  double percentile;

 protected:
  std::pair<Tensor, Tensor> search_range() override;
};

// TensorRT's entropy calibration: the range whose quantization loses least information, by
// KL(P || Q) between the clipped reference histogram P (outliers folded into its last bin) and its
// quantization Q to the levels the range gets. Symmetric schemes (TensorRT's case): a histogram of
// |x| (max_val = max |x|; data_min keeps the signed minimum) and a threshold T with the positive
// half of the levels (all of them for x >= 0): range [max(data_min, -T), T]. Affine schemes: the
// signed histogram and all levels over [min, min + T] (only the upper tail is clipped; |x| would
// fold an asymmetric distribution such as a normalised image onto itself).
class EntropyObserver : public HistogramObserver {
 public:
  explicit EntropyObserver(QuantSpec spec = {}, int64_t bins = 2048);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(EntropyObserver)

 protected:
  std::pair<Tensor, Tensor> search_range() override;
};

// Which observer a qconfig builds.
enum class ObserverKind {
  MinMax, MovingAverageMinMax, PerChannelMinMax, MovingAveragePerChannelMinMax, Histogram,
  Percentile, Entropy
};
const char* observer_kind_name(ObserverKind k); // "minmax", "moving_average_minmax", ...
ObserverPtr make_observer(ObserverKind k, const QuantSpec& spec);

// =============================================================================================
// 4. Fake-quantize modules (src/quant/fake_quantize.cpp)

// Observer + fake-quant (PyTorch's FakeQuantize): buffers scale, zero_point (updated from the
// observer on every forward while the observer is enabled), fake_quant_enabled,
// observer_enabled (uint8 [1]); the observer is child "activation_post_process".
class FakeQuantizeBase : public nn::Module {
 public:
  FakeQuantizeBase();
  void enable_fake_quant(bool on = true);
  void disable_fake_quant() { enable_fake_quant(false); }
  virtual void enable_observer(bool on = true);
  void disable_observer() { enable_observer(false); }
  bool fake_quant_enabled() const;
  bool observer_enabled() const;
  // The qparams fake-quant uses now (convert reads these).
  virtual QParams qparams() = 0;
  virtual bool has_qparams() const = 0;
};

class FakeQuantize : public FakeQuantizeBase {
 public:
  explicit FakeQuantize(ObserverPtr observer);
  Tensor forward(const Tensor& x) override;
  QParams qparams() override;
  bool has_qparams() const override;
  ObserverBase& observer() const;
  TB_MODULE(FakeQuantize)
};

// LSQ (Esser et al. 2020) as PyTorch's _LearnableFakeQuantize with use_grad_scaling: scale and
// zero_point are parameters; the gradients are scaled by 1/sqrt(numel * qmax). Initialised on the
// first forward at scale = 2 mean|x| / sqrt(qmax), zero_point 0 (symmetric) or the observer's
// (affine); buffer "initialized" (uint8 [1]) records it. Per channel ([C] parameters) for
// per-channel specs. Affine zero points are learned too, as PyTorch.
class LearnableFakeQuantize : public FakeQuantizeBase {
 public:
  // `channels`: the size of the channel axis for per-channel specs (the parameters' length).
  explicit LearnableFakeQuantize(QuantSpec spec, int64_t channels = 1);
  Tensor forward(const Tensor& x) override;
  QParams qparams() override;
  bool has_qparams() const override;
  TB_MODULE(LearnableFakeQuantize)
  QuantSpec spec;
  int64_t quant_min, quant_max;
};

// PACT for activations: clamp to [0, alpha] with a learnable alpha (parameter "alpha", init
// `init_alpha`), quantized to [0, 2^bits - 1].
class PACTFakeQuantize : public FakeQuantizeBase {
 public:
  explicit PACTFakeQuantize(int bits = 8, double init_alpha = 10.0);
  Tensor forward(const Tensor& x) override;
  QParams qparams() override;
  bool has_qparams() const override { return true; }
  TB_MODULE(PACTFakeQuantize)
  int64_t quant_max;
};

// For model.apply(...): each acts on FakeQuantizeBase modules and ignores the others (PyTorch's
// torch.ao.quantization.{enable,disable}_{observer,fake_quant}).
void enable_observer(nn::Module& m);
void disable_observer(nn::Module& m);
void enable_fake_quant(nn::Module& m);
void disable_fake_quant(nn::Module& m);

// =============================================================================================
// 5. Stubs, fused and quantized modules (src/quant/modules.cpp, src/quant/fuse.cpp)

// Marks where float becomes quantized (QuantStub: gets an output observer in prepare) and back
// (DeQuantStub). Both are identities in float.
class QuantStub : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  TB_MODULE(QuantStub)
};
// DeQuantStub turns a uint8 quantized activation (the output of an integer layer) back into
// float32 (tb::quant::dequantize); any other tensor passes unchanged.
class DeQuantStub : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override;
  TB_MODULE(DeQuantStub)
};
// QuantStub -> module -> DeQuantStub (children "quant", "dequant", "module", as PyTorch).
class QuantWrapper : public nn::Module {
 public:
  explicit QuantWrapper(nn::ModulePtr module);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantWrapper)
};

// Activation fused after a conv (ReLU, ReLU6) or none.
enum class FusedAct { None, ReLU, ReLU6 };

// Conv2d (+ activation) with the BN already folded in: children "0" (Conv2d) and "1" (ReLU or
// ReLU6), as PyTorch's intrinsic ConvReLU2d. fuse_modules builds it.
// (Not Sequential subclasses, so that prepare can give them an activation_post_process child.)
class ConvReLU2d : public nn::Module {
 public:
  ConvReLU2d(nn::ModulePtr conv, nn::ModulePtr act);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(ConvReLU2d)
};
class LinearReLU : public nn::Module {
 public:
  LinearReLU(nn::ModulePtr linear, nn::ModulePtr act);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(LinearReLU)
};
// Conv2d + BatchNorm2d (+ activation) kept apart for QAT (children "0", "1"[, "2"]), as
// PyTorch's intrinsic ConvBn2d / ConvBnReLU2d; prepare_qat turns it into a QATConvBn2d.
class ConvBn2d : public nn::Module {
 public:
  ConvBn2d(nn::ModulePtr conv, nn::ModulePtr bn, nn::ModulePtr act = nullptr);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(ConvBn2d)
};

// QAT conv: weight fake-quantized by child "weight_fake_quant" (keys weight, bias as Conv2d).
class QATConv2d : public nn::Module {
 public:
  QATConv2d(const nn::Conv2d& conv, nn::ModulePtr weight_fake_quant, FusedAct act);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QATConv2d)
  Conv2dParams params;
  FusedAct act;
};
class QATLinear : public nn::Module {
 public:
  QATLinear(const nn::Linear& linear, nn::ModulePtr weight_fake_quant, FusedAct act);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QATLinear)
  FusedAct act;
};

// PyTorch's intrinsic QAT ConvBn2d / ConvBnReLU2d (_forward_approximate): with
// s = bn.weight / sqrt(bn.running_var + eps),
//   y = bn(conv(x, fake_quant(W * s)) / s + b)
// where bn uses batch statistics (and updates its running ones) until freeze_bn_stats(), and
// running statistics after; then the activation. Children "bn" (BatchNorm2d) and
// "weight_fake_quant"; parameters weight[, bias].
class QATConvBn2d : public nn::Module {
 public:
  // Shares the conv's parameters and the BN module itself (an optimizer built before keeps working).
  QATConvBn2d(const nn::Conv2d& conv, std::shared_ptr<nn::BatchNorm2d> bn,
              nn::ModulePtr weight_fake_quant, FusedAct act);
  Tensor forward(const Tensor& x) override;
  Module& train(bool on = true) override; // a frozen BN stays in eval mode
  void freeze_bn_stats();
  void update_bn_stats();
  TB_MODULE(QATConvBn2d)
  Conv2dParams params;
  FusedAct act;
  bool freeze_bn = false;
};
// model.apply(tb::quant::freeze_bn_stats) freezes every QATConvBn2d (PyTorch's
// torch.nn.intrinsic.qat.freeze_bn_stats).
void freeze_bn_stats(nn::Module& m);
void update_bn_stats(nn::Module& m);

// Converted conv / linear: buffer "weight" int8 [O, I/g, kh, kw] (or [O, I]; uint8 for unsigned
// ranges; ranges of at most 16 levels packed two a byte as uint8 [ceil(n/2)] holding q - qmin, low
// nibble first) with "weight_scale" float32 [O] or [1] and "weight_zero_point" int32; "bias"
// float32. Its output is quantized by its "activation_post_process" (a Quantize).
// Integer inference (src/quant/int8.cpp, docs/quantization.md): when convert finds the layer's
// input quantized (it records that quantizer's qparams as buffers "input_scale" float32 [1] and
// "input_zero_point" int32 [1]), 8-bit uint8 activations on both sides and signed int8 weights
// with zero point 0, it sets `integer` and forward runs the u8 x s8 kernels of kernels/qconv.h
// (int32 accumulation, bias quantized to int32 with scale input_scale * weight_scale, fused
// ReLU / ReLU6 in the requantization). Its input is a uint8 quantized activation (an integer
// layer's output, taken as it is) or a float tensor on a quantization grid (the one a Quantize
// tagged it with, else the recorded one; checked element by element); its result is a uint8
// activation that the layer's Quantize passes on or dequantizes (Quantize::emit_uint8).
// Otherwise (`float_reason` says why) forward dequantizes the weight (once, cached) and runs the
// float op, as the fake-quant model does; so does an integer layer given a float input on no
// known grid (not quantized in the fake-quant model either, e.g. after a functional mean in a
// parent's forward), counted in `off_grid_calls`.
// The kernels follow tb::set_cpu_kernels: oneDNN (Fast) or the reference loops (Reference).
// Inference only: no gradient flows through the integer path.
// A residual add folded into the integer conv that feeds it (ConvertOptions::fuse_add): the conv
// runs oneDNN's sum post-op and returns conv + residual on the add's grid, bit for bit what the
// conv and then the add compute (kernels/qconv.h, QSum); the add hands that result on. convert
// plans it from the trace where the add is the only reader of the conv's output and the add's
// other input is made before the conv runs; a forward hook on the module that makes it stores
// it here for the conv. Shared by the conv, the add and that hook; a copy of a module (clone())
// does not take it (the copy runs unfused).
struct ConvAddFusion {
  int conv_input = 1;                 // which input of the add the conv's output is (0 or 1)
  std::weak_ptr<nn::Module> add_output; // the add's Quantize: the sum's grid
  const nn::Module* producer = nullptr; // the module whose output is the residual (compared only)
  Tensor residual;              // set by the producer's hook, taken by the conv
  Tensor result, residual_used; // the conv's fused output and its residual, for the add's check
};
// The holder in the conv and the add: a copy is empty (see above).
struct ConvAddLink {
  std::shared_ptr<ConvAddFusion> f;
  ConvAddLink() = default;
  ConvAddLink(const ConvAddLink&) {}
  ConvAddLink& operator=(const ConvAddLink&) { f.reset(); return *this; }
};

class QuantizedConv2d : public nn::Module {
 public:
  QuantizedConv2d(const Tensor& weight_float, const Tensor& bias, Conv2dParams params,
                  const QParams& wq, FusedAct act);
  Tensor forward(const Tensor& x) override;
  QParams weight_qparams() const;
  Tensor int_weight() const; // the integer weight [O, I/g, kh, kw], unpacked
  // Registers the input quantizer's qparams (buffers input_scale, input_zero_point).
  void set_input_qparams(const QParams& p);
  TB_MODULE(QuantizedConv2d)
  Conv2dParams params;
  FusedAct act;
  int64_t wqmin, wqmax;
  Shape weight_shape;
  bool integer = false;     // forward runs the integer kernels
  std::string float_reason; // why not, when it does not
  int64_t off_grid_calls = 0; // integer layer, calls whose input was on no grid (ran float)
  // The prepared integer kernel (src/quant/int8.cpp): remade when the input shape or grid, the
  // output grid or a buffer (weight, weight_scale, bias: storage or version) changes.
  std::shared_ptr<void> int8_plan;
  std::shared_ptr<void> float_weight; // the dequantized weight of the float path (cached)
  ConvAddLink fused_add;              // the add it runs (ConvertOptions::fuse_add), if any
};
class QuantizedLinear : public nn::Module {
 public:
  QuantizedLinear(const Tensor& weight_float, const Tensor& bias, const QParams& wq, FusedAct act);
  Tensor forward(const Tensor& x) override;
  QParams weight_qparams() const;
  Tensor int_weight() const; // [O, I], unpacked
  void set_input_qparams(const QParams& p); // as QuantizedConv2d's
  TB_MODULE(QuantizedLinear)
  FusedAct act;
  int64_t wqmin, wqmax;
  Shape weight_shape;
  bool integer = false; // as QuantizedConv2d's: x [..., I] -> [..., O]
  std::string float_reason;
  int64_t off_grid_calls = 0;
  std::shared_ptr<void> int8_plan; // requantization constants and the contiguous weight
  std::shared_ptr<void> float_weight; // the dequantized weight of the float path (cached)
};
// A fixed quantize-dequantize of an activation (per tensor): buffers scale [1] float32,
// zero_point [1] int32. What convert leaves where an observer was. Its output is marked as lying
// on its grid (for the integer layers after it); a tensor an integer layer already produced on
// this same grid passes through unchanged (quantizing it again would give the same values).
// With `emit_uint8` (set by convert when every consumer of this output takes uint8 activations,
// 8-bit [0, 255] grids only) its output is the uint8 quantized activation itself: a float input
// is quantized to uint8 (channels-last for 4-D), a uint8 one on its grid passes unchanged.
// Without it, a uint8 input is dequantized (a float carrier for float neighbours).
class Quantize : public nn::Module {
 public:
  explicit Quantize(const QParams& p);
  Tensor forward(const Tensor& x) override;
  QParams qparams() const;
  TB_MODULE(Quantize)
  int64_t qmin, qmax;
  bool emit_uint8 = false;
};

// Integer joins, activations and pools (src/quant/int8_modules.cpp). convert puts them in place
// of the float modules of a prepared model (subclasses of those: same options, same children,
// same state_dict keys, the same role for prepare / convert). On uint8 quantized activations,
// with an 8-bit output Quantize (activation_post_process), they run the integer kernels of
// kernels/qconv.h (QElementwiseKernels: the float result of the dequantized inputs quantized
// with fake-quant's rule, so they equal the fake-quant model up to the order of a sum) and return
// a uint8 activation; on anything else (float inputs, a broadcast or option the kernels do not
// cover) they dequantize uint8 inputs and run the float op, as the fake-quant model.
// Max pooling, flatten and channel shuffle keep their input's grid (no Quantize): like Quantize
// they return uint8 only with `emit_uint8`, else the float carrier.
class QuantizedAdd : public nn::Add {
 public:
  explicit QuantizedAdd(const nn::Add& m) : nn::Add(m) {}
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(QuantizedAdd)
  ConvAddLink fused_conv; // the conv that computes this add (ConvertOptions::fuse_add), if any
};
// Same-shape products, and the SE gate [N, C, H, W] * [N, C, 1, 1] (either order).
class QuantizedMul : public nn::Mul {
 public:
  explicit QuantizedMul(const nn::Mul& m) : nn::Mul(m) {}
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(QuantizedMul)
};
// Along the channels (dim 1) of 4-D or 2-D activations.
class QuantizedCat : public nn::Cat {
 public:
  explicit QuantizedCat(const nn::Cat& m) : nn::Cat(m) {}
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(QuantizedCat)
};
class QuantizedReLU : public nn::ReLU {
 public:
  explicit QuantizedReLU(const nn::ReLU& m) : nn::ReLU(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedReLU)
};
class QuantizedReLU6 : public nn::ReLU6 {
 public:
  explicit QuantizedReLU6(const nn::ReLU6& m) : nn::ReLU6(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedReLU6)
};
class QuantizedHardswish : public nn::Hardswish {
 public:
  explicit QuantizedHardswish(const nn::Hardswish& m) : nn::Hardswish(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedHardswish)
};
// Sigmoid, SiLU and Hardsigmoid: a 256-entry table per call (the float op on each input level,
// quantized onto the output grid; kernels/qconv.h). Their output grid is the one prepare's
// observer measured (PyTorch's QAT uses the fixed 1/256, zero point 0 for sigmoid and
// hardsigmoid instead).
class QuantizedSigmoid : public nn::Sigmoid {
 public:
  explicit QuantizedSigmoid(const nn::Sigmoid& m) : nn::Sigmoid(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedSigmoid)
};
class QuantizedSiLU : public nn::SiLU {
 public:
  explicit QuantizedSiLU(const nn::SiLU& m) : nn::SiLU(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedSiLU)
};
class QuantizedHardsigmoid : public nn::Hardsigmoid {
 public:
  explicit QuantizedHardsigmoid(const nn::Hardsigmoid& m) : nn::Hardsigmoid(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedHardsigmoid)
};
// On a uint8 activation [N, C, H, W] (channels-last) the shuffle permutes the channels of each
// pixel: the same levels on the same grid (no Quantize), bit exact.
class QuantizedChannelShuffle : public nn::ChannelShuffle {
 public:
  explicit QuantizedChannelShuffle(const nn::ChannelShuffle& m) : nn::ChannelShuffle(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedChannelShuffle)
  bool emit_uint8 = false;
};
// No ceil_mode (the float op runs then).
class QuantizedMaxPool2d : public nn::MaxPool2d {
 public:
  explicit QuantizedMaxPool2d(const nn::MaxPool2d& m) : nn::MaxPool2d(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedMaxPool2d)
  bool emit_uint8 = false;
};
// count_include_pad, no ceil_mode.
class QuantizedAvgPool2d : public nn::AvgPool2d {
 public:
  explicit QuantizedAvgPool2d(const nn::AvgPool2d& m) : nn::AvgPool2d(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedAvgPool2d)
};
// Output sizes that divide the input's (the global pool).
class QuantizedAdaptiveAvgPool2d : public nn::AdaptiveAvgPool2d {
 public:
  explicit QuantizedAdaptiveAvgPool2d(const nn::AdaptiveAvgPool2d& m) : nn::AdaptiveAvgPool2d(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedAdaptiveAvgPool2d)
};
class QuantizedFlatten : public nn::Flatten {
 public:
  explicit QuantizedFlatten(const nn::Flatten& m) : nn::Flatten(m) {}
  Tensor forward(const Tensor& x) override;
  TB_MODULE(QuantizedFlatten)
  bool emit_uint8 = false;
};

// True for a uint8 quantized activation (the output of an integer layer; its grid is recorded
// with it, src/ops/qactivation.h). Float ops refuse such tensors (tb::Error): dequantize first.
bool is_quantized_activation(const Tensor& x);
// The float32 reals of a quantized activation, (q - zero_point) * scale (channels-last for 4-D);
// any other tensor is returned as it is.
Tensor dequantize(const Tensor& x);

// Folds eval-mode BN into conv weights: w' = w * gamma / sqrt(var + eps) (per out channel),
// b' = (b - mean) * gamma / sqrt(var + eps) + beta. Returns {w', b'} (PyTorch's
// fuse_conv_bn_weights).
std::pair<Tensor, Tensor> fuse_conv_bn_weights(const Tensor& w, const Tensor& b,
                                               const nn::BatchNormBase& bn);

// Fuses each group of module paths in place (eval): [Conv2d, BatchNorm2d] -> Conv2d with BN
// folded; [Conv2d, BatchNorm2d, ReLU|ReLU6] and [Conv2d, ReLU|ReLU6] -> ConvReLU2d;
// [Linear, ReLU|ReLU6] -> LinearReLU. The first path gets the fused module, the others
// Identity (as PyTorch). tb::Error naming the paths and types for any other sequence.
void fuse_modules(nn::Module& model, const std::vector<std::vector<std::string>>& groups);
// The QAT variant (training): [Conv2d, BatchNorm2d(, act)] -> ConvBn2d keeping the BN apart;
// [Conv2d, act] -> ConvReLU2d; [Linear, act] -> LinearReLU.
void fuse_modules_qat(nn::Module& model, const std::vector<std::vector<std::string>>& groups);
// Every conv/BN(/ReLU|ReLU6) and linear/ReLU run of consecutive children of a Sequential found in
// the tree (e.g. each ConvBNAct of the zoo, the CNN's conv-bn-relu), as groups for fuse_modules.
std::vector<std::vector<std::string>> find_fusable_groups(nn::Module& model);
// The same groups found from the data flow, wherever the modules sit (a ResNet block's
// conv1/bn1, its downsample's conv/BN): runs the model once on random data of `input_shape`
// (eval mode and no_grad, each module's mode restored after) and groups a Conv2d with the
// BatchNorm2d that alone reads its output (and the ReLU|ReLU6 that alone reads the BN's), or a
// Conv2d / Linear with the activation that alone reads its output. Every module of a group must
// be called once: a block's ReLU called twice is left out. Code in a forward that reads a
// module's output outside any module is not seen (fusing would change what it reads).
std::vector<std::vector<std::string>> find_fusable_groups(nn::Module& model,
                                                          const Shape& input_shape);

// =============================================================================================
// 6. QConfig, prepare, convert (src/quant/qconfig.cpp, src/quant/convert.cpp)

// How weights or activations of a layer are fake-quantized / observed.
enum class FakeQuantKind { Observer, LSQ, PACT };
struct TensorQConfig {
  ObserverKind observer = ObserverKind::Histogram;
  QuantSpec spec;
  FakeQuantKind fake_quant = FakeQuantKind::Observer; // QAT: FakeQuantize(observer), LSQ or PACT
  double percentile = 99.99;                          // ObserverKind::Percentile
};
struct QConfig {
  TensorQConfig activation, weight;
};
// Defaults: weights per-channel symmetric int8 (PerChannelMinMax), activations per-tensor affine
// uint8 with the Histogram observer. Bits for both as given.
QConfig default_qconfig(int weight_bits = 8, int act_bits = 8);
// The QAT defaults: moving-average observers (MovingAveragePerChannelMinMax for weights,
// MovingAverageMinMax for activations), as PyTorch's default_qat_qconfig.
QConfig default_qat_qconfig(int weight_bits = 8, int act_bits = 8);

// A qconfig per module: `global`, overridden by module type (type_name(), e.g. "Linear"), then by
// module path ("features.1.conv.1" and everything below it; the longest matching path wins);
// `skip` paths (and everything below) stay float.
struct QConfigMapping {
  QConfig global = default_qconfig();
  std::map<std::string, QConfig> by_type, by_path;
  std::vector<std::string> skip;
};

// One layer in the report: path, type, what happened ("quantized", "observed", "skipped") and why.
// With ConvertOptions::keep_faster, the timed conv / linear layers also carry their median times
// per call in both precisions (0 when not timed).
struct LayerReport {
  std::string path, type, action, reason;
  double int8_ms = 0, float_ms = 0;
};
struct ConversionReport {
  std::vector<LayerReport> layers;
  int64_t quantized = 0, skipped = 0;
  // With ConvertOptions::input_shape: the module outputs that travel as uint8 activations and
  // those that stay float (each with the path of its producer and the reason).
  int64_t uint8_outputs = 0, float_outputs = 0;
  std::vector<std::string> float_output_reasons;
  // With ConvertOptions::fuse_add: the residual adds folded into the conv before them.
  int64_t fused_adds = 0;
  std::string str() const; // a table
};

// Inserts observers (activation_post_process children + forward hooks) after every quantizable
// leaf: Conv2d, Linear, the fused modules, BatchNorm2d, activations, average pools, joins (Add,
// Mul, Cat) and QuantStub. Value-preserving layers (Identity, Flatten, Dropout, MaxPool2d,
// ChannelShuffle) and DeQuantStub are left without one. Eval/calibration use.
ConversionReport prepare(nn::Module& model, const QConfigMapping& config = {});
// For QAT: swaps Conv2d / Linear / ConvReLU2d / LinearReLU / ConvBn2d for QATConv2d / QATLinear /
// QATConvBn2d (weights fake-quantized) and inserts FakeQuantize (or LSQ / PACT) modules where
// prepare inserts observers. The model should be in training mode.
ConversionReport prepare_qat(nn::Module& model, const QConfigMapping& config = {});

struct ConvertOptions {
  // Allow observers that saw no data (placeholder qparams 1/0): to build the structure that a
  // converted checkpoint is loaded into. Default: tb::Error naming the uncalibrated layer.
  bool allow_uncalibrated = false;
  // The shape of a model input (e.g. {1, 3, 224, 224}). With it, convert runs the converted model
  // once on random data of that shape and records which module feeds which (by the storage of
  // the tensors passed between modules); every output whose consumers are all integer-capable
  // modules then travels as a uint8 activation (Quantize::emit_uint8). Without it (or for an
  // output read by a float module, the model's caller, or code in a parent's forward that no
  // module sees) outputs stay float carriers. The report says how many outputs go uint8.
  Shape input_shape;
  // Never slower than float (needs input_shape): time each integer conv / linear on the shape it
  // sees in both precisions (the u8 x s8 kernel on uint8 input against the float conv / linear
  // with the dequantized weight on float input; median of `timing_runs`), and keep float where
  // int8 is not faster. The report gives both times and the choice.
  bool keep_faster = false;
  int timing_runs = 7;
  // With input_shape: fold each residual add into the integer conv that feeds it (oneDNN's sum
  // post-op; ConvAddFusion says when). The result is equal bit for bit; the report counts them
  // and names the pairs. Off by default: to stay exact, the conv's own rounding is replayed as
  // eight post-ops, which cost as much as the add they save (MobileNetV2 int8 2.03 -> 2.04 ms
  // p50) or more (ResNet-18 2.53 -> 2.67 ms: oneDNN's AMX kernels run the chain slowly), measured
  // on this machine's AVX-512 / AMX CPU, 2 threads (docs/benchmarks.md, session 7).
  bool fuse_add = false;
};
// Replaces conv / linear (float, fused, QAT) by QuantizedConv2d / QuantizedLinear with int8
// weights and their qparams, and every observer / fake-quant by a fixed Quantize. Each converted
// layer whose input and output are quantized to uint8 and whose weights are symmetric int8 runs
// the integer kernels (see QuantizedConv2d); the report says which kernel each layer runs and why.
ConversionReport convert(nn::Module& model, ConvertOptions o = {});

// Post-training quantization in one call: prepare, run `calibration` (at most max_batches
// batches, 0 = all) in eval mode under no_grad, convert.
ConversionReport quantize(nn::Module& model, const QConfigMapping& config,
                          data::DataLoader& calibration, int64_t max_batches = 0);

// Each observed layer's range and qparams after running `loader` through a prepared model.
struct LayerStatistics {
  std::string path, observer;
  double min = 0, max = 0;     // the observed range (per-tensor; per-channel: over channels)
  double scale = 0;            // per-tensor scale (per-channel: the largest)
  int64_t zero_point = 0;
  int64_t qmin = 0, qmax = 0;
};
struct QuantizationStatistics {
  std::vector<LayerStatistics> layers;
  std::string str() const; // a table
};
QuantizationStatistics get_quantization_statistics(nn::Module& model, data::DataLoader& loader,
                                                   int64_t max_batches = 0);

// =============================================================================================
// 7. Dynamic quantization (src/quant/dynamic.cpp): PyTorch's quantize_dynamic. Weights are int8
// ahead of time (symmetric, per output channel by default); activations are quantized on the fly,
// per call and per tensor, to uint8 from the batch's own min and max; the product is an int8 GEMM
// with int32 accumulation and a float output. Inference only; no calibration.
//
//   tb::quant::ConversionReport r = tb::quant::quantize_dynamic(*model);  // Linear and LSTM
//
// Activation qparams, as PyTorch 1.13's x86 dynamic kernels (ChooseQuantizationParams with
// reduce_range, range [0, 127], so that u8 x s8 pairs cannot saturate 16-bit intermediate sums):
//   lo = min(min x, 0), hi = max(max x, 0), scale = (hi - lo) / 127 (0.1 when that is 0; raised
//   to 6.1e-5 with the range widened when below), zero_point = the nearer-error of
//   0 - lo/scale and 127 - hi/scale, rounded and clamped;
//   xq = clamp(nearbyint(x * (1/scale)) + zp, 0, 255)
//   y[m, n] = float(sum_k (xq[m,k] - zp) * wq[n,k]) * (scale * w_scale[n]) + bias[n]
// The LSTM quantizes its input sequence once per layer ([T*N, in], one min/max over all steps,
// as PyTorch's precomputed input projection) and its hidden state at every step.

// Which float layers quantize_dynamic converts.
enum class DynamicType { Linear, LSTM };

struct DynamicQuantOptions {
  // Weights per output channel (PyTorch's per_channel_dynamic_qconfig) or per tensor (its
  // default_dynamic_qconfig); symmetric int8 [-128, 127] either way.
  bool per_channel = true;
  // Activations in [0, 127] (PyTorch's x86 setting) instead of [0, 255].
  bool reduce_range = true;
};

// The activation qparams above, for a batch whose values lie in [min, max].
struct DynamicQParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};
DynamicQParams choose_dynamic_qparams(float min, float max, bool reduce_range = true);

// y = dynamic-quantized x [..., K] times int8 weight [N, K] (scales float32 [N] or [1]) plus
// bias float32 [N] (optional); float32 [..., N]. Runs oneDNN's u8 x s8 -> s32 matmul, or the
// plain loop under set_cpu_kernels(CpuKernels::Reference); both give the same int32 sums.
Tensor dynamic_linear(const Tensor& x, const Tensor& weight_int8, const Tensor& weight_scale,
                      const Tensor& bias, bool reduce_range = true);

// A Linear with int8 weights: buffers "weight" int8 [O, I], "weight_scale" float32 [O] or [1]
// (symmetric: no zero point is stored, it is 0), "bias" float32 [O] (when the Linear had one).
class DynamicQuantizedLinear : public nn::Module {
 public:
  DynamicQuantizedLinear(const nn::Linear& linear, DynamicQuantOptions o = {});
  Tensor forward(const Tensor& x) override;
  int64_t in_features() const { return get("weight").size(1); }
  int64_t out_features() const { return get("weight").size(0); }
  TB_MODULE(DynamicQuantizedLinear)
  std::string extra_repr() const override;
  bool reduce_range = true;
};

// An LSTM with int8 weights: per layer k, buffers "weight_ih_l{k}" / "weight_hh_l{k}" int8 with
// "<name>_scale" float32 [4H] or [1] (zero point 0), and "bias_ih_l{k}" / "bias_hh_l{k}"
// float32 (state_dict keys as the float LSTM's plus the qparams). Same inputs and outputs as
// nn::LSTM.
class DynamicQuantizedLSTM : public nn::Module {
 public:
  DynamicQuantizedLSTM(const nn::LSTM& lstm, DynamicQuantOptions o = {});
  Tensor forward(const Tensor& x) override;
  nn::LSTMResult forward_with_state(const Tensor& x, const Tensor& h0 = Tensor(),
                                    const Tensor& c0 = Tensor());
  int64_t input_size() const { return get("weight_ih_l0").size(1); }
  int64_t hidden_size() const { return get("weight_hh_l0").size(1); }
  TB_MODULE(DynamicQuantizedLSTM)
  std::string extra_repr() const override;
  int64_t num_layers = 1;
  bool batch_first = false, reduce_range = true;
};

// Replaces every Linear / LSTM of the listed types in the tree (in place) by its dynamic
// quantized twin; the report lists each converted layer ("quantized") and each other leaf with
// parameters that stays float ("skipped", with the reason). The root itself must be a container
// (wrap a lone layer in a Sequential). Checkpoints: quant::save / quant::load.
ConversionReport quantize_dynamic(nn::Module& model,
                                  const std::vector<DynamicType>& types = {DynamicType::Linear,
                                                                           DynamicType::LSTM},
                                  DynamicQuantOptions o = {});

// Checkpoints: the state_dict plus metadata "tb.quant" = "prepared" | "qat" | "converted"
// (docs/quantization.md). load() needs a model of the same structure (float model put through
// the same prepare / prepare_qat / convert with allow_uncalibrated) and checks the stage.
// A converted model's file also holds its run plan ("tb.quant.uint8": the outputs that travel as
// uint8; "tb.quant.float_kernel": the layers kept float and why, e.g. by keep_faster), which load
// puts back: a model converted without input_shape runs the saved uint8 flow after loading.
void save(nn::Module& model, const std::string& path);
void load(nn::Module& model, const std::string& path);
// The stage of a model's tree: "float", "prepared", "qat", "converted" or "dynamic".
std::string stage(nn::Module& model);

} // namespace tb::quant
