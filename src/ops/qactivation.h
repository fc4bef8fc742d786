// src/ops/qactivation.h — quantized activations: uint8 tensors that integer layers pass to each
// other (src/quant/int8.cpp), and the check every float op makes against them.
//
// A quantized activation is an ordinary uint8 tensor (4-D ones channels-last: logical
// [N, C, H, W], memory N×H×W×C) whose values q stand for the reals (q - zero_point) * scale. The
// grid (scale, zero point) is not in the tensor: it is recorded here, keyed by the tensor's
// storage, by whoever made the tensor. Views (flatten, chunk, narrow) share the storage and so the
// grid. An entry lives as long as the storage (it is dropped when the storage is freed).
//
// The ops layer only keeps the record and refuses such tensors in float ops (conv2d, linear,
// the elementwise and activation ops, pooling, batch_norm, softmax, reductions): adding raw
// levels as if they were reals is a silent error, so it is a tb::Error telling the caller to
// dequantize first. A uint8 tensor that no integer layer made (an image, a mask) is not affected.
#pragma once

#include <tb/core.h>

#include <optional>

namespace tb {

struct ActivationGrid {
  float scale = 1;
  int32_t zero_point = 0;
};

// Records that uint8 tensor `t` (its whole storage) is a quantized activation on grid g.
void mark_quantized_activation(const Tensor& t, ActivationGrid g);
// The grid of a quantized activation, or nullopt for any other tensor.
std::optional<ActivationGrid> quantized_activation_grid(const Tensor& t);
// tb::Error naming `op` when t is a quantized activation: a float op cannot take one.
void check_not_quantized(const char* op, const Tensor& t);

} // namespace tb
