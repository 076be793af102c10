// The small per-sample problem of one Anderson step, shared by the CPU and CUDA kernels.
//
// Given the Gram matrix H (n x n, row stride `stride`) of the n residuals in the window, find the mixing weights
//     alpha = argmin ||sum_i alpha_i g_i||^2  subject to  sum_i alpha_i = 1,
// i.e. alpha = w / sum(w) with (H + lam I) w = 1. H is first divided by its mean diagonal so that `lam` is relative
// to the residual scale, then factorized with Cholesky. Whenever the system is singular, ill-conditioned beyond
// repair or produces a non-finite weight, the step falls back to plain fixed-point iteration (alpha = e_newest):
// an Anderson step never yields NaN from its own linear algebra. Slots whose residual is not finite are left out of
// the system (anderson_weights_of_finite_slots), so one non-finite step does not poison the m - 1 steps after it.
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

// The weights over the slots of the window whose residual is finite, 0 for the others; the mixes skip every slot
// whose weight is 0. A slot holding a non-finite residual (an f(x) that was NaN or overflowed at some earlier step)
// stays in the ring buffer for up to m - 1 more steps. Left in, it made every Gram system non-finite, so each of those
// steps fell back to a plain step, whose mix still multiplied that slot's image by its weight 0: NaN again, though
// x and f(x) were finite. A slot is finite exactly when its Gram diagonal is (a sum of squares of its residual in
// float64; and g = f - x finite means f and x are), and the newest row is checked too, as it was just computed.
// `gram` is a local n x n copy (row stride n), compacted in place onto the finite slots. Returns whether the
// Anderson weights were used (false: a plain step, alpha = e_newest).
template <typename acc_t>
WTEXT_HD bool anderson_weights_of_finite_slots(acc_t* gram, int n, int newest, acc_t lam, acc_t* alpha) {
  int finite_slots[kMaxAndersonWindow];
  int count = 0;
  int newest_at = -1;
  for (int i = 0; i < n; ++i) {
    if (finite_value(gram[i * n + i]) && finite_value(gram[newest * n + i])) {
      if (i == newest) newest_at = count;
      finite_slots[count++] = i;
    }
  }
  if (newest_at < 0) {  // the newest residual itself is not finite: nothing to mix it with
    plain_step_weights(n, newest, alpha);
    return false;
  }
  // In place: entry (a, b) moves to a position at or before its own, never onto one still to be read.
  if (count < n) {
    for (int a = 0; a < count; ++a) {
      for (int b = 0; b < count; ++b) gram[a * n + b] = gram[finite_slots[a] * n + finite_slots[b]];
    }
  }
  acc_t compact[kMaxAndersonWindow];
  const bool mixed = anderson_weights(gram, n, count, newest_at, lam, compact);
  for (int i = 0; i < n; ++i) alpha[i] = acc_t(0);
  for (int a = 0; a < count; ++a) alpha[finite_slots[a]] = compact[a];
  return mixed;
}

}  // namespace wtext
