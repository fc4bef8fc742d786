// src/ops/dispatch.h — how an op reaches its kernel: the one dispatch point of every op file.
//
// A kernel family (kernels/<family>.h) declares its kernels once, as a struct of function
// pointers, with three tables of it: Family::ref (kernels/ref/, plain loops, the specification),
// Family::cpu (kernels/cpu/, the fast CPU kernels) and Family::cuda (kernels/cuda/). An op calls
//
//   kernel(&kernels::SoftmaxKernels::forward, "softmax", x.device(), dtype)(dtype, log, ...);
//
// which takes the entry from the CUDA table for CUDA tensors, and on the CPU from the fast or the
// reference table as tb::set_cpu_kernels chose (tests run an op both ways and compare). A null
// entry is a kernel not written yet for that backend: a tb::Error naming the op, the device and
// the dtype, never a silent fallback. The cost is one indirect call per kernel launch.
#pragma once

#include <tb/core.h>

namespace tb {

// The table of `Family` that runs tensors on device d.
template <class Family> const Family& kernels_for(Device d) {
  if (d.is_cuda()) return Family::cuda;
  return cpu_kernels() == CpuKernels::Fast ? Family::cpu : Family::ref;
}

// The kernel `entry` of `Family` for device d, or tb::Error when that backend has none.
template <class Family, class Fn>
Fn kernel(Fn Family::*entry, const char* op, Device d, DType dtype) {
  Fn fn = kernels_for<Family>(d).*entry;
  TB_CHECK(fn != nullptr, "{}: no {} kernel yet (device {}, dtype {})", op,
           d.is_cuda() ? "CUDA" : cpu_kernels() == CpuKernels::Fast ? "fast CPU" : "reference CPU",
           d, dtype);
  return fn;
}

} // namespace tb
