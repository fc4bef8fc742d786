// kernels/qconv.h — integer (u8 x s8 -> u8) convolution and linear for converted models, and the
// integer elementwise / pooling loops around them. Raw pointers and sizes, never a Tensor.
//
// Shapes: activations are uint8 CHANNELS-LAST: x [N, H, W, C], y [N, OH, OW, O] (linear: x [N, I],
// y [N, O]); weights int8 contiguous [O, C/groups, KH, KW] (linear [O, I]) with weight zero point 0
// (symmetric: the default qconfig; a converted layer with other weights keeps the float path and
// convert's report says why). Geometry as kernels/conv.h.
//
// The arithmetic (one rule, the same in ref and cpu):
//   acc_o  = sum over taps of (x_q - in_zp) * w_q                     int32, exact; a padded tap
//                                                                     contributes 0 (real zero)
//   v      = (float(acc_o) + float(bias_q[o])) * M[o]                 float32
//            M[o] = in_scale * w_scale[o] / out_scale (the caller computes it in float32)
//            bias_q[o] = round_half_even(b[o] / (in_scale * w_scale[o])) (int32, as PyTorch's
//            fbgemm / onednn quantize the bias), or no bias
//   ReLU:  v = max(v, 0);   Clip (ReLU6): v = min(max(v, 0), clip_hi), clip_hi = 6 / out_scale
//   y_q    = clamp(round_half_even(v + float(out_zp)), 0, 255)
// i.e. oneDNN 2.6's int8 order (bias before the output scale, post-ops before the destination
// zero point, rounding to nearest even by the CPU's default mode). float(acc) is exact while
// |acc| < 2^24; beyond (e.g. 3x3x64 taps all at the range ends) both round it to nearest even
// the same way, so ref and cpu still agree bit for bit.
// Note the zero point is added BEFORE rounding (oneDNN), where fake-quant rounds first and adds
// the zero point after: at an exact .5 tie with an odd zero point the two differ by one step.
//
// Three tables:
//   QConvKernels::ref  — kernels/ref/qconv.cpp: plain loops, the specification;
//   QConvKernels::cpu  — kernels/cpu/qconv_onednn.cpp: oneDNN u8 x s8 convolution / matmul with
//                        output scales, src / dst zero points, s32 bias, ReLU / clip post-ops and
//                        a fused residual add (QSum below) as a chain ending in the sum post-op,
//                        primitives cached per geometry (and, for convs, output scales);
//   QConvKernels::cuda — none (null).
// QElementwiseKernels (add, mul, cat, activations, max / average pooling): the
// reference loops (kernels/ref/qelementwise.cpp) and the same arithmetic in OpenMP-parallel loops
// (kernels/cpu/qelementwise.cpp; equal bit for bit, tested); see that struct.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/conv.h"

namespace tb::kernels {

// The activation fused into the requantization (see the rule above).
enum class QAct { None, ReLU, Clip };

// One quantization grid of an activation: real = (q - zp) * scale, q in [0, 255].
struct QGrid {
  float scale = 1;
  int32_t zp = 0;
};

// The integer elementwise arithmetic (QElementwiseKernels below, and a residual add fused into
// a convolution): dequantize, compute in float32, quantize with fake-quant's rule
// clamp(round_half_even(v * (1.0f / scale)) + zp, 0, 255) (v * (1.0f / scale) as PyTorch).
inline float qdeq(int32_t q, QGrid g) { return (float)(q - g.zp) * g.scale; }
inline uint8_t qquant(float v, QGrid g) {
  float r = std::nearbyintf(v * (1.0f / g.scale)) + (float)g.zp;
  return (uint8_t)std::min(255.0f, std::max(0.0f, r));
}

// A residual add fused into a convolution (oneDNN's sum post-op): y holds the residual's levels
// (grid `residual`) when the convolution runs; each element becomes the integer add of the
// convolution's level q (the rule above: q on the conv's own grid `conv`, whose zero point is
// Requant::out_zp) and that residual level, exactly as QElementwiseKernels::add computes it, with
// the convolution as input `conv_input` (0: a, 1: b) of the add:
//   y = qquant(qdeq(a, ga) + qdeq(b, gb), out)
// So a fused layer equals the two layers it replaces bit for bit, q's rounding included.
struct QSum {
  QGrid conv, residual, out;
  int conv_input = 1;
};

// How the int32 accumulator becomes the uint8 output (the rule above).
struct Requant {
  int32_t in_zp = 0, out_zp = 0;  // in [0, 255]
  const float* multiplier = nullptr; // [O] M[o] (a per-tensor scale repeated O times)
  const int32_t* bias = nullptr;     // [O] bias_q in accumulator units, or nullptr
  QAct act = QAct::None;
  float clip_hi = 0;                 // QAct::Clip: the upper bound of v (6 / out_scale)
  const QSum* sum = nullptr;         // a fused residual add (conv2d only), or nullptr
};

// A convolution prepared once for a geometry, its weights and its requantization constants
// (multiplier, act, clip_hi, whether there is a bias): the cpu plan holds the oneDNN primitive and
// the weights already reordered into its blocked layout (with the src-zero-point compensation),
// the ref plan a copy of the weights. Opaque to the caller, immutable once made.
struct QConvPlan {
  virtual ~QConvPlan() = default;
};

struct QConvKernels {
  // y = requant(conv(x - in_zp, w)): x uint8 [N, H, W, C], w int8 [O, C/groups, KH, KW],
  // y uint8 [N, OH, OW, O] (every element written).
  void (*conv2d)(const Conv2dGeom& g, const uint8_t* x, const int8_t* w, const Requant& r,
                 uint8_t* y);
  // The same in two steps, for a layer that runs many times: prepare once (w and the bias are
  // copied or reordered; the caller may free them after), then run (r's zero points must be
  // those the plan was made with; its multiplier, act, clip_hi and bias are the plan's).
  // Measured on MobileNetV2 (1 thread, batch 1): the per-call weight reorder of conv2d was half
  // of the int8 model's time.
  std::shared_ptr<const QConvPlan> (*prepare_conv2d)(const Conv2dGeom& g, const int8_t* w,
                                                     const Requant& r);
  void (*run_conv2d)(const QConvPlan& plan, const uint8_t* x, const Requant& r, uint8_t* y);
  // y = requant((x - in_zp) w^T): x uint8 [N, I], w int8 [O, I], y uint8 [N, O].
  void (*linear)(int64_t N, int64_t I, int64_t O, const uint8_t* x, const int8_t* w,
                 const Requant& r, uint8_t* y);

  static const QConvKernels ref, cpu, cuda;
};

// The cpu table picks, per geometry, the fastest of the implementations oneDNN offers (timed when
// the primitive is created; kernels/cpu/onednn_common.h, fastest_impl). For tests, which check
// each of them against the reference: their names in oneDNN's order, and a conv2d run with the
// one at `position`.
std::vector<std::string> cpu_qconv2d_impls(const Conv2dGeom& g, const Requant& r);
void cpu_qconv2d_at(int position, const Conv2dGeom& g, const uint8_t* x, const int8_t* w,
                    const Requant& r, uint8_t* y);

// The activations with integer kernels (PyTorch's formulas, those of tb's float ops,
// kernels/ref/elementwise.cpp): relu, relu6, hardswish x relu6(x + 3) / 6, sigmoid
// 1 / (1 + exp(-x)), silu x / (1 + exp(-x)), hardsigmoid relu6(x + 3) / 6.
enum class QActivation { ReLU, ReLU6, Hardswish, Sigmoid, SiLU, Hardsigmoid };

// The integer elementwise and pooling ops between integer layers. Each computes the real result
// from the dequantized inputs in float32 and quantizes it onto the output grid with
// y = clamp(round_half_even(v / out.scale) + out.zp, 0, 255) (fake-quant's rule, v * (1.0f / scale)
// as PyTorch), so an integer layer equals the fake-quant one exactly (up to the order of a sum).
// Two tables: ref (plain loops, the specification) and cpu (the same float operations in the same
// order per element, OpenMP over rows: equal bit for bit).
struct QElementwiseKernels {
  // y = q((a - a.zp) a.scale + (b - b.zp) b.scale), n elements (the residual join).
  void (*add)(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t n);
  // y = q(a~ * b~), a and y [N, P, C]; b [N, C] broadcast over P if b_broadcast, else [N, P, C].
  // The SE scale on channels-last data: a [N, H*W, C] times b [N, C].
  void (*mul)(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t N, int64_t P, int64_t C, bool b_broadcast);
  // Concatenation of k inputs along the last of [outer, width_i]: y [outer, sum width_i], each
  // input requantized to gy.
  void (*cat)(const uint8_t* const* xs, const QGrid* gs, const int64_t* widths, int64_t k,
              uint8_t* y, QGrid gy, int64_t outer);
  // f(x~) for f in QActivation, n elements, requantized to gy (with gy == gx, ReLU is
  // max(x, zp) exactly, as PyTorch's quantized relu). The input has 256 levels, so the exact
  // result is a table: y = table[x], table[q] = quant(f(deq(q))) with f the float op's float32
  // formula, which is what the fake-quant model computes (the float op on dequantized values,
  // then fake-quant). The cpu table builds it once per call for sigmoid / silu / hardsigmoid
  // (an exp per element otherwise) and computes relu / relu6 / hardswish per element.
  void (*activation)(QActivation kind, const uint8_t* x, QGrid gx, uint8_t* y, QGrid gy,
                     int64_t n);
  // Max pooling on uint8 directly (the order is preserved by the affine map): x [N, H, W, C],
  // y [N, OH, OW, C]; padded taps are ignored (PyTorch's -inf padding). Same grid in and out.
  void (*max_pool2d)(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uint8_t* y,
                     int64_t OH, int64_t OW);
  // Average pooling (count_include_pad, PyTorch's default): y = q(mean of x~ over the window,
  // padded taps counted as real zero), x [N, H, W, C], y [N, OH, OW, C].
  void (*avg_pool2d)(const uint8_t* x, QGrid gx, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     uint8_t* y, QGrid gy, int64_t OH, int64_t OW);

  static const QElementwiseKernels ref, cpu;
};

} // namespace tb::kernels
