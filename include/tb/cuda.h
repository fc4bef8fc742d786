// tb/cuda.h — the CUDA device, as users and benchmarks see it.
// A binary built with CUDA still runs on a machine without a GPU: is_available() says false there
// and every CUDA op raises tb::Error; tests skip with a message.
#pragma once

#include <tb/core.h>

namespace tb::cuda {
bool is_built();       // compiled with nvcc (meson option cuda)
bool is_available();   // built, a driver and at least one GPU present
int device_count();
void synchronize();    // waits for the device's stream
std::string device_name(int index = 0);
} // namespace tb::cuda
