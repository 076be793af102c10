// The small per-sample problem of one Anderson step, shared by the CPU and CUDA kernels.
//
// Given the Gram matrix H (n x n, row stride `stride`) of the n residuals in the window, find the mixing weights
//     alpha = argmin ||sum_i alpha_i g_i||^2  subject to  sum_i alpha_i = 1,
// i.e. alpha = w / sum(w) with (H + lam I) w = 1. H is first divided by its mean diagonal so that `lam` is relative
// to the residual scale, then factorized with Cholesky. Whenever the system is singular, ill-conditioned beyond
// repair or produces a non-finite weight, the step falls back to plain fixed-point iteration (alpha = e_newest):
// an Anderson step never yields NaN from its own linear algebra.
#pragma once

#include <cmath>

#include "mask/mask_hash.h"  // WTEXT_HD

namespace wtext {

constexpr int kMaxAndersonWindow = 16;

// Math helpers that resolve to CUDA's device functions in device code and to <cmath> on the host.
template <typename T>
WTEXT_HD bool finite_value(T v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

template <typename T>
WTEXT_HD T square_root(T v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

template <typename T>
WTEXT_HD T absolute(T v) {
#if defined(__CUDA_ARCH__)
  return fabs(v);
#else
  return std::fabs(v);
#endif
}

template <typename acc_t>
WTEXT_HD void plain_step_weights(int n, int newest, acc_t* alpha) {
  for (int i = 0; i < n; ++i) alpha[i] = acc_t(0);
  alpha[newest] = acc_t(1);
}

// Returns true when the Anderson weights were used, false when it fell back to a plain step.
template <typename acc_t>
WTEXT_HD bool anderson_weights(const acc_t* gram, int stride, int n, int newest, acc_t lam, acc_t* alpha) {
  acc_t scale = 0;
  for (int i = 0; i < n; ++i) scale += gram[i * stride + i];
  scale /= n;
  if (!(scale > acc_t(0)) || !finite_value(scale)) {  // all residuals zero (converged) or non-finite: nothing to mix
    plain_step_weights(n, newest, alpha);
    return false;
  }
  // Cholesky factor L of (H / scale + lam I), lower triangle, in place of a local copy.
  acc_t factor[kMaxAndersonWindow * kMaxAndersonWindow];
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) {
      acc_t sum = gram[i * stride + j] / scale + (i == j ? lam : acc_t(0));
      for (int k = 0; k < j; ++k) sum -= factor[i * kMaxAndersonWindow + k] * factor[j * kMaxAndersonWindow + k];
      if (i == j) {
        // A pivot this small means the residuals are (numerically) linearly dependent beyond what lam repairs.
        if (!(sum > acc_t(1e-10) * (acc_t(1) + lam))) {
          plain_step_weights(n, newest, alpha);
          return false;
        }
        factor[i * kMaxAndersonWindow + i] = square_root(sum);
      } else {
        factor[i * kMaxAndersonWindow + j] = sum / factor[j * kMaxAndersonWindow + j];
      }
    }
  }
  // Solve L y = 1, then L^T w = y.
  acc_t w[kMaxAndersonWindow];
  for (int i = 0; i < n; ++i) {
    acc_t sum = 1;
    for (int k = 0; k < i; ++k) sum -= factor[i * kMaxAndersonWindow + k] * w[k];
    w[i] = sum / factor[i * kMaxAndersonWindow + i];
  }
  for (int i = n - 1; i >= 0; --i) {
    acc_t sum = w[i];
    for (int k = i + 1; k < n; ++k) sum -= factor[k * kMaxAndersonWindow + i] * w[k];
    w[i] = sum / factor[i * kMaxAndersonWindow + i];
  }
  acc_t total = 0;
  for (int i = 0; i < n; ++i) total += w[i];
  if (!finite_value(total) || !(absolute(total) > acc_t(1e-30))) {
    plain_step_weights(n, newest, alpha);
    return false;
  }
  for (int i = 0; i < n; ++i) alpha[i] = w[i] / total;
  return true;
}

}  // namespace wtext
