// src/amp/autocast.cpp — tb::amp::autocast, the RAII scope over the thread-local autocast state
// that ops read (tb/autograd.h, src/ops/autocast.h).
#include <tb/amp.h>

namespace tb::amp {

autocast::autocast(AutocastOptions o) : device_(o.device), prev_(autocast_state(o.device)) {
  if (o.enabled) {
    const char* dev = o.device == DeviceType::CPU ? "cpu" : "cuda";
    TB_CHECK(o.dtype == kBFloat16 || o.dtype == kFloat16,
             "autocast: dtype {} cannot be an autocast dtype on {}: expected bfloat16 or float16",
             o.dtype, dev);
    TB_CHECK(o.device == DeviceType::CPU,
             "autocast: no {} kernels on cuda yet (matmul, conv2d), so autocast cannot run there; "
             "use device CPU", o.dtype);
  }
  set_autocast_state(o.device, {.enabled = o.enabled, .dtype = o.dtype});
}

autocast::~autocast() { set_autocast_state(device_, prev_); }

bool is_autocast_enabled(DeviceType device) { return autocast_state(device).enabled; }
DType get_autocast_dtype(DeviceType device) { return autocast_state(device).dtype; }

} // namespace tb::amp
