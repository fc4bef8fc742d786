// kernels/ref/half.h — element access for the reference kernels that take float16/bfloat16:
// 2-byte storage types whose load() gives the value (exactly, as float) and whose store() rounds
// once to nearest even. The loops accumulate in double and round each output once.
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels::ref_half {

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline double load(float v) { return v; }
inline double load(double v) { return v; }
inline double load(BF16 v) { return bfloat16_to_float(v.bits); }
inline double load(F16 v) { return half_to_float(v.bits); }

inline void store(float& d, double v) { d = (float)v; }
inline void store(double& d, double v) { d = v; }
// double -> float -> half: the first rounding is exact for any sum of products of half values
// up to float's 24 bits; beyond that a tie may round twice (a one-ulp-of-half difference at most).
inline void store(BF16& d, double v) { d.bits = float_to_bfloat16((float)v); }
inline void store(F16& d, double v) { d.bits = float_to_half((float)v); }

} // namespace tb::kernels::ref_half
