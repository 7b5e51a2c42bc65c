// The VP-SDE closed forms, the time grid and the Euler-Maruyama step scalars, rounded as runtime/sde.py and
// runtime/samplers.py round them (the same operations, or groupings equal bit for bit as sde.py explains, in
// double precision), so the step receives the same float32 scalars as the Python runtime. Build with -ffp-contract=off: a fused
// multiply-add would round differently.
#pragma once

#include <cmath>
#include <vector>

namespace gencc {

struct VPSDE {
  double beta_min, beta_max, t_eps;

  double beta(double t) const { return beta_min + t * (beta_max - beta_min); }
  double int_beta(double t) const { return beta_min * t + 0.5 * t * t * (beta_max - beta_min); }   // B(t)
  double gamma(double t) const { return std::exp(-0.5 * int_beta(t)); }          // mean coefficient of q(x_t | x_0)
  double sigma(double t) const { return std::sqrt(-std::expm1(-int_beta(t))); }  // its std
};

// np.linspace(1.0, t_eps, steps + 1): k * step + start, the last point set to t_eps exactly.
inline std::vector<double> time_grid(const VPSDE& sde, long steps) {
  std::vector<double> ts(steps + 1);
  double step = (sde.t_eps - 1.0) / double(steps);
  for (long k = 0; k <= steps; ++k) ts[k] = double(k) * step + 1.0;
  ts[steps] = sde.t_eps;
  return ts;
}

// The fused step computes x_next = c0 x + c1 eps(x, t) + c2 z + c3 x_prev + c4 e_prev.
struct Coef {
  float c[5];
};

// Reverse-SDE Euler-Maruyama: x + h [1/2 beta x - beta eps / sigma] + sqrt(beta h) z, with h > 0.
inline Coef em_coef(const VPSDE& sde, double t, double h) {
  double beta = sde.beta(t), sigma = sde.sigma(t);
  return {{float(1.0 + 0.5 * h * beta), float(-h * beta / sigma), float(std::sqrt(beta * h)), 0.0f, 0.0f}};
}

// Tweedie's denoised estimate x0 = (x - sigma_t eps) / gamma_t; adds no noise.
inline Coef denoise_coef(const VPSDE& sde, double t) {
  double g = sde.gamma(t), s = sde.sigma(t);
  return {{float(1.0 / g), float(-s / g), 0.0f, 0.0f, 0.0f}};
}

}  // namespace gencc
