// src/quant/int8.h — the integer forward of converted layers (src/quant/int8.cpp); not public.
#pragma once

#include <tb/quant.h>

#include "kernels/qconv.h"

namespace tb::quant::int8 {

// ---- float carriers (the fallback flow, see int8.cpp) -----------------------------------------

// Records that float `y` (its whole storage) holds values on grid `g`: what Quantize produced. A
// converted layer looks its input up here first (views such as Flatten or a channel split share
// the storage, so they are found too). Thread-local, the last 64 tensors; an entry is dropped when
// its storage is freed or written in place (its version counter moved).
void tag_grid(const Tensor& y, const QParams& p);
void tag_grid(const Tensor& y, kernels::QGrid g);
std::optional<kernels::QGrid> tagged_grid(const Tensor& x);
// The distinct grids of the last tagged tensors, newest first (alive or not).
std::vector<kernels::QGrid> recent_grids();

// Why a layer cannot run the integer kernels ("" when it can): weights not int8 with zero point
// 0, or an activation quantizer that is not 8-bit [0, 255].
std::string unsupported_reason(const QParams& weight, const std::optional<QParams>& input,
                               const std::optional<QParams>& output);

// ---- uint8 activations (src/ops/qactivation.h) ------------------------------------------------

// The grid of per-tensor qparams (tb::Error naming `who` for per-channel ones).
kernels::QGrid grid_of(const QParams& p, const std::string& who);
// The grid of a uint8 quantized activation, nullopt for any other tensor.
std::optional<kernels::QGrid> activation_grid(const Tensor& x);
// A new uint8 activation of logical shape `s` on grid g (4-D: channels-last), contents unset.
Tensor new_activation(const Shape& s, kernels::QGrid g);
// x's levels in dense memory order (4-D: N×H×W×C; else row-major): x itself or a copy.
Tensor dense_activation(const Tensor& x, kernels::QGrid g);
// Float x (any layout) quantized onto g with fake-quant's rule, as a uint8 activation.
Tensor quantize_activation(const Tensor& x, kernels::QGrid g);
// The reals of uint8 activation q on g: float32 in q's memory order, tagged with g (a carrier).
Tensor dequantize_activation(const Tensor& q, kernels::QGrid g);
// [N, C, H, W] activation (any layout) -> [N, C*H*W] in the logical order (c, h, w), same grid:
// a transposing copy of the N×H×W×C levels.
Tensor flatten_nhwc(const Tensor& x, kernels::QGrid g);
// The grid of module m's Quantize (its activation_post_process), when it has an 8-bit [0, 255] one.
std::optional<kernels::QGrid> output_grid_of(const nn::Module& m);
// The grid of a uint8 [0, 255] Quantize module (nullopt for anything else); `owner` names the
// module it belongs to in errors.
std::optional<kernels::QGrid> quantize_grid(const nn::Module& q, const std::string& owner);

// ---- the integer forwards ---------------------------------------------------------------------

// Conv / linear: x is a uint8 activation or a float carrier on a known grid; the result is a uint8
// activation on the layer's output grid. An undefined Tensor when x (float) lies on no known
// quantization grid (the caller then runs the float path).
Tensor conv2d_forward(QuantizedConv2d& m, const Tensor& x);
Tensor linear_forward(QuantizedLinear& m, const Tensor& x);

// Joins, activations and pools on uint8 activations (kernels/qconv.h, QElementwiseKernels); each
// returns an undefined Tensor when the integer kernel does not apply (an input that is not a
// uint8 activation, a layout or option it does not cover, no 8-bit output grid): the module then
// runs its float op on the dequantized inputs.
Tensor add_forward(const nn::Module& m, const std::vector<Tensor>& xs);
Tensor mul_forward(const nn::Module& m, const std::vector<Tensor>& xs);
Tensor cat_forward(const nn::Module& m, const std::vector<Tensor>& xs, int64_t dim);
Tensor activation_forward(const nn::Module& m, kernels::QActivation kind, const Tensor& x);
Tensor max_pool2d_forward(const Tensor& x, const Pool2dParams& p);
Tensor avg_pool2d_forward(const nn::Module& m, const Tensor& x, const Pool2dParams& p);
Tensor adaptive_avg_pool2d_forward(const nn::Module& m, const Tensor& x, int64_t oh, int64_t ow);
// The channel shuffle of a 4-D uint8 activation: a permutation of each pixel's channels, same
// grid (undefined when x is not a 4-D uint8 activation or groups does not divide its channels).
Tensor channel_shuffle_forward(const Tensor& x, int64_t groups);

} // namespace tb::quant::int8
