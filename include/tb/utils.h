// tb/utils.h — gradient checkpointing (PyTorch's torch.utils.checkpoint): trade compute for
// memory by dropping a segment's activations in forward and recomputing them in backward.
//
//   #include <tb/utils.h>
//   Tensor h = tb::utils::checkpoint(*block, x);                 // one module
//   Tensor y = tb::utils::checkpoint_sequential(*net, 4, x);     // a Sequential in 4 segments
//   loss(y).backward();                                          // same gradients as without
//
// How (src/nn/checkpoint.cpp): forward runs the segment under no_grad, so none of its
// intermediate tensors is kept, and records ONE autograd node whose inputs are the segment's input
// and the parameters that require grad. Its backward re-runs the segment with grad enabled (on a
// detached copy of the input), back-propagates the incoming gradient through that recomputed
// graph with tb::grad, and hands the input's and the parameters' gradients on to the engine, which
// accumulates them as usual. Memory: a segment keeps only its input (plus, during its backward,
// its own recomputed activations). Cost: one extra forward of every checkpointed segment.
//
// Same results, as PyTorch: the default generator's state and the autocast state are saved at
// forward and restored for the recompute, so dropout draws the same mask and a segment run under
// tb::amp::autocast is recomputed in the same dtypes (a generator passed explicitly to an op is
// not tracked). Side effects of forward happen twice: a BatchNorm in training mode updates its
// running statistics (and num_batches_tracked) in forward AND in the recompute, exactly as
// PyTorch's checkpoint does; forward hooks run twice.
// The module must stay alive, and its parameters unchanged, until backward has run (a parameter
// modified in place in between raises tb::Error from the saved-tensor version check).
//
// Layer: nn (it needs modules and autograd, nothing above).
#pragma once

#include <tb/nn.h>

#include <functional>

namespace tb::utils {

// y = fn(x), with fn's activations recomputed in backward. `params`: the tensors fn uses besides
// x that need gradients (a module's parameters()); gradients reach only x and these.
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x,
                  const std::vector<Tensor>& params);

// y = module(x) (through operator(), so hooks run), checkpointed; params = module.parameters().
Tensor checkpoint(nn::Module& module, const Tensor& x);

// Runs `seq`'s children in `segments` consecutive groups of (almost) equal size, each but the last
// checkpointed (the last one's activations are needed right away by backward, as PyTorch's
// checkpoint_sequential). tb::Error unless 1 <= segments <= number of children.
Tensor checkpoint_sequential(nn::Sequential& seq, int64_t segments, const Tensor& x);

} // namespace tb::utils
