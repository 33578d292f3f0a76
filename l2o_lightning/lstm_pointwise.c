/* The elementwise part of an LSTM step, forward and backward, one pass over memory each
 * (l2o_lightning/lstm_kernels.py builds this file with the system C compiler and calls it
 * through ctypes; the formulas are those of lstm_pointwise_forward/_backward there).
 *
 * Rows r < n, hidden h; row-major float32 arrays:
 *   z, s     [n, 4h]: pre-activations [z_i, z_f, 2 z_g, z_o] and s = sigmoid(z)
 *   c, ...   [n, h]
 * forward:  i, f, o = s_i, s_f, s_o;  g = 2 s_g - 1 (= tanh z_g);  c' = f c + i g;
 *           tanh(c') = 2 sigmoid(2 c') - 1;  h' = o tanh(c')
 * backward: dc' = grad_c' + grad_h' o (1 - tanh(c')^2);
 *           dz = [dc' g, dc' c, 2 dc' i, grad_h' tanh(c')] * s (1 - s);  dc = dc' f
 */
#include <math.h>
#include <stdint.h>

/* z is overwritten with s = sigmoid(z). */
void lstm_pointwise_forward(int64_t n, int64_t h, float *restrict z, const float *restrict c,
                            float *restrict h_next, float *restrict c_next, float *restrict tanh_c) {
  const int64_t h4 = 4 * h;
#pragma omp simd
  for (int64_t k = 0; k < n * h4; ++k) z[k] = 1.0f / (1.0f + expf(-z[k]));
  for (int64_t r = 0; r < n; ++r) {
    const float *restrict s = z + r * h4;
    const float *restrict c_r = c + r * h;
    float *restrict c_next_r = c_next + r * h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) c_next_r[j] = s[h + j] * c_r[j] + s[j] * (2.0f * s[2 * h + j] - 1.0f);
  }
#pragma omp simd
  for (int64_t k = 0; k < n * h; ++k) tanh_c[k] = 2.0f / (1.0f + expf(-2.0f * c_next[k])) - 1.0f;
  for (int64_t r = 0; r < n; ++r) {
    const float *restrict o = z + r * h4 + 3 * h;
    const float *restrict tanh_c_r = tanh_c + r * h;
    float *restrict h_next_r = h_next + r * h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) h_next_r[j] = o[j] * tanh_c_r[j];
  }
}

void lstm_pointwise_backward(int64_t n, int64_t h, const float *restrict grad_h,
                             const float *restrict grad_c_next, const float *restrict s,
                             const float *restrict c, const float *restrict tanh_c,
                             float *restrict grad_z, float *restrict grad_c) {
  const int64_t h4 = 4 * h;
  for (int64_t r = 0; r < n; ++r) {
    const float *restrict s_r = s + r * h4;
    float *restrict grad_z_r = grad_z + r * h4;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      const int64_t k = r * h + j;
      const float i = s_r[j], f = s_r[h + j], s_g = s_r[2 * h + j], o = s_r[3 * h + j];
      const float t = tanh_c[k], gh = grad_h[k];
      const float dc = grad_c_next[k] + gh * o * (1.0f - t * t);
      grad_z_r[j] = dc * (2.0f * s_g - 1.0f) * i * (1.0f - i);
      grad_z_r[h + j] = dc * c[k] * f * (1.0f - f);
      grad_z_r[2 * h + j] = 2.0f * dc * i * s_g * (1.0f - s_g);
      grad_z_r[3 * h + j] = gh * t * o * (1.0f - o);
      grad_c[k] = dc * f;
    }
  }
}
