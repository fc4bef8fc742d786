// src/quant/walk.h — helpers shared by prepare.cpp and convert.cpp (not public API).
#pragma once

#include <tb/quant.h>

namespace tb::quant::walk {

// What prepare / convert do with a module.
enum class Role {
  Conv,        // Conv2d, ConvReLU2d, ConvBn2d, QATConv2d, QATConvBn2d: weights + output
  Linear,      // Linear, LinearReLU, QATLinear
  Converted,   // QuantizedConv2d, QuantizedLinear
  Activation,  // float op whose output is quantized (BN, activations, avg pools, joins, QuantStub)
  PassThrough, // keeps its input's values (Identity, Flatten, Dropout, MaxPool2d, DeQuantStub, ...)
  Internal,    // observers, fake-quant modules, Quantize
  Container,   // anything else with children: visited
  Unknown,     // a leaf without a quantized form: stays float
};
Role role(nn::Module& m);
// path == prefix or path is below prefix ("a.b" is under "a", "ab" is not).
bool under(const std::string& path, const std::string& prefix);
const QConfig& resolve(const QConfigMapping& m, const std::string& path, const nn::Module& mod);
// Sets child "activation_post_process" and, the first time, the forward hook that runs it.
void attach_output(nn::Module& m, nn::ModulePtr post);
ObserverPtr make_tensor_observer(const TensorQConfig& c);
nn::ModulePtr make_fake_quant(const TensorQConfig& c, int64_t channels, const std::string& path);
FusedAct act_of(const nn::ModulePtr& m);

// One module call seen by trace(): the storages it read and the one it returned, as ids (a
// storage freed during the pass may have its address reused by a later one: ids tell them apart
// without keeping every activation alive).
using StorageId = int64_t;
struct TraceCall {
  nn::Module* module; // nullptr: the caller reading the model's output (the last entry)
  std::vector<StorageId> inputs;
  StorageId output;
  Shape input_shape;
};
// Runs `model` once (no_grad) on random data of `shape` with a recording hook on every module;
// the calls in the order they returned, then the caller's read of the output. (convert.cpp)
std::vector<TraceCall> trace(nn::Module& model, const Shape& shape);

} // namespace tb::quant::walk
