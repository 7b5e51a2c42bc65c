// Per-sample Gaussian noise, bit for bit the contract of runtime/noise.py: Philox4x32-10 (Salmon et al.,
// SC'11) on the counter (block j, stream, index lo, index hi) with key (seed lo, seed hi), then Box-Muller
// in double precision, rounded to float32. Stream 0 is the prior draw, stream k + 1 the noise of step k,
// so sample i is the same whatever the batch, the chunking or the language.
#pragma once

#include <cmath>
#include <cstdint>

namespace gencc {

struct Philox4x32 {
  uint32_t c[4];
};

// Random123's Philox4x32 with 10 rounds; the key is bumped by the Weyl constants before every round but the first.
inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    uint64_t p0 = uint64_t(0xD2511F53u) * ctr.c[0], p1 = uint64_t(0xCD9E8D57u) * ctr.c[2];
    ctr = {{uint32_t(p1 >> 32) ^ ctr.c[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ ctr.c[3] ^ k1, uint32_t(p0)}};
  }
  return ctr;
}

// Fills out[0 .. n) with the standard normals of (seed, sample index, stream): normal e is number e % 4 of
// Philox block e / 4, so a smaller sample shape reads a prefix of the same row.
inline void sample_normals(uint64_t seed, uint64_t index, uint32_t stream, int64_t n, float* out) {
  const double two_pi = 2.0 * M_PI;   // Python evaluates 2.0 * np.pi * u left to right: the same rounding
  for (int64_t j = 0; 4 * j < n; ++j) {
    Philox4x32 x = philox4x32_10({{uint32_t(j), stream, uint32_t(index), uint32_t(index >> 32)}},
                                 uint32_t(seed), uint32_t(seed >> 32));
    double u[4];
    for (int i = 0; i < 4; ++i) u[i] = (double(x.c[i]) + 0.5) * 0x1p-32;   // strictly inside (0, 1)
    double r0 = std::sqrt(-2.0 * std::log(u[0])), r1 = std::sqrt(-2.0 * std::log(u[2]));
    double t0 = two_pi * u[1], t1 = two_pi * u[3];
    double z[4] = {r0 * std::cos(t0), r0 * std::sin(t0), r1 * std::cos(t1), r1 * std::sin(t1)};
    for (int i = 0; i < 4 && 4 * j + i < n; ++i) out[4 * j + i] = float(z[i]);
  }
}

}  // namespace gencc
