// The random generator: xoshiro256** seeded through splitmix64. Small state (copyable, so a
// checkpoint can hold it), fast, and the same stream on every platform.
#include <tb/core.h>

#include <cmath>

namespace tb {

static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void Generator::manual_seed(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : state) s = splitmix64(x);
}

uint64_t Generator::next_u64() {
  uint64_t result = rotl(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return result;
}

// 53 random bits -> [0, 1)
double Generator::next_double() { return (double)(next_u64() >> 11) * 0x1.0p-53; }

// Box-Muller; one draw per call (the twin is discarded: simpler state, still exact).
double Generator::next_normal() {
  double u1 = next_double(), u2 = next_double();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

Generator& default_generator() {
  static Generator g(0);
  return g;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

} // namespace tb
