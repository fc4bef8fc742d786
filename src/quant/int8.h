// src/quant/int8.h — the integer forward of converted layers (src/quant/int8.cpp); not public.
#pragma once

#include <tb/quant.h>

#include "kernels/qconv.h"

namespace tb::quant::int8 {

// Records that `y` (its whole storage) holds values on grid `g`: what Quantize produced. A
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

// The integer forward; an undefined Tensor when x lies on no known quantization grid (the caller
// then runs the float path).
Tensor conv2d_forward(QuantizedConv2d& m, const Tensor& x);
Tensor linear_forward(QuantizedLinear& m, const Tensor& x);

} // namespace tb::quant::int8
