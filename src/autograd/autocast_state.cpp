// src/autograd/autocast_state.cpp — the thread-local autocast state (tb/autograd.h), one per
// device type. tb::amp::autocast (src/amp/autocast.cpp) sets it; ops read it.
#include <tb/autograd.h>

namespace tb {

static thread_local AutocastState t_autocast[2]; // [CPU, CUDA]

AutocastState autocast_state(DeviceType device) { return t_autocast[(int)device]; }
void set_autocast_state(DeviceType device, AutocastState s) { t_autocast[(int)device] = s; }

} // namespace tb
