/* Native CPU kernels of timnet's fast training path (timnet/fast.py, timnet/native.py).
 *
 * Every activation is channels-last float32, (B, T, C) contiguous, with C a multiple of 8 (the
 * network's 39 channels are padded to 40 by the caller). Per-(utterance, channel) arrays are
 * (B, C); per-channel sums are accumulated in double. The code uses GCC/Clang vector extensions
 * (8 floats), which the compiler maps onto AVX/FMA, NEON or plain scalar code alike.
 *
 * The causal convolution with kernel 2 and dilation d is out(t) = x(t) Wr + x(t-d) Wl: two
 * products with a (C, C) matrix per row, the second skipped where t < d (the zero padding). The
 * input gradient has the same form with the shift reversed, and reads dA(t+d) instead of
 * scattering into dx(t-d). No [x(t-d), x(t)] matrix is ever materialised.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32)));

#define MAXV 16 /* C <= 128: accumulators of one row */
#define LD(p) (*(const v8u *)(p))
#define ST(p, v) (*(v8u *)(p) = (v))
#define INLINE static inline __attribute__((always_inline))

INLINE v8 splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }
/* Lane-wise select: C has no vector ?: operator, so blend the bits with the comparison mask. */
INLINE v8 vsel(v8i m, v8 a, v8 b) { return (v8)(((v8i)a & m) | ((v8i)b & ~m)); }
INLINE v8 vmax(v8 a, v8 b) { return vsel(a > b, a, b); }

/* exp of a vector, Cephes' single-precision polynomial (about 1 ulp on the range used here). */
INLINE v8 vexp(v8 x) {
    x = vmax(x, splat(-87.3f));
    x = vsel(x < splat(88.3f), x, splat(88.3f));
    v8 fx = x * splat(1.44269504088896341f);
    v8i n = __builtin_convertvector(fx + vsel(fx >= splat(0.f), splat(0.5f), splat(-0.5f)), v8i);
    v8 nf = __builtin_convertvector(n, v8);
    x = x - nf * splat(0.693359375f) - nf * splat(-2.12194440e-4f);
    v8 z = x * x;
    v8 y = splat(1.9875691500e-4f);
    y = y * x + splat(1.3981999507e-3f);
    y = y * x + splat(8.3334519073e-3f);
    y = y * x + splat(4.1665795894e-2f);
    y = y * x + splat(1.6666665459e-1f);
    y = y * x + splat(5.0000001201e-1f);
    y = y * z + x + splat(1.f);
    v8i bits = (n + 127) << 23;
    v8 pow2;
    memcpy(&pow2, &bits, sizeof pow2);
    return y * pow2;
}

/* acc0 += xa Wr-row-block, acc1 += xb (two rows share each weight load). */
INLINE void mac2(const float *xa, const float *xb, const float *w, v8 *acc0, v8 *acc1, int C, int NV) {
    for (int k = 0; k < C; k++) {
        v8 a0 = splat(xa[k]), a1 = splat(xb[k]);
        const float *wk = w + (size_t)k * C;
        for (int v = 0; v < NV; v++) {
            v8 wv = LD(wk + 8 * v);
            acc0[v] += a0 * wv;
            acc1[v] += a1 * wv;
        }
    }
}

INLINE void mac1(const float *xa, const float *w, v8 *acc0, int C, int NV) {
    for (int k = 0; k < C; k++) {
        v8 a0 = splat(xa[k]);
        const float *wk = w + (size_t)k * C;
        for (int v = 0; v < NV; v++) acc0[v] += a0 * LD(wk + 8 * v);
    }
}

INLINE void init_acc(v8 *acc, const float *bias, const float *prev, int NV) {
    for (int v = 0; v < NV; v++) {
        v8 a = bias ? LD(bias + 8 * v) : splat(0.f);
        acc[v] = prev ? a + LD(prev + 8 * v) : a;
    }
}

INLINE void finish_row(float *o, const v8 *acc, double *sum, double *sumsq, int C, int NV) {
    for (int v = 0; v < NV; v++) ST(o + 8 * v, acc[v]);
    if (sum) {
        for (int c = 0; c < C; c++) {
            double a = o[c];
            sum[c] += a;
            sumsq[c] += a * a;
        }
    }
}

/* out(t) = [bias] + [out(t) if accumulate] + x(t) wr + x(t - shift) ws, the last term only where
 * 0 <= t - shift < T. Weights are (C_in, C_out) row-major. With sum/sumsq (length C, double),
 * the per-channel sum and sum of squares of out over all rows are added to them. */
INLINE void conv_impl(const float *x, const float *ws, const float *wr, const float *bias, float *out,
                      int B, int T, int C, int shift, int accumulate, double *sum, double *sumsq, int NV) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * C;
        float *ob = out + (size_t)b * T * C;
        for (int t = 0; t < T; t += 2) {
            int two = t + 1 < T;
            float *o0 = ob + (size_t)t * C, *o1 = o0 + C;
            v8 a0[MAXV], a1[MAXV];
            init_acc(a0, bias, accumulate ? o0 : NULL, NV);
            int s0 = t - shift, s1 = t + 1 - shift;
            int v0 = s0 >= 0 && s0 < T, v1 = two && s1 >= 0 && s1 < T;
            if (two) {
                init_acc(a1, bias, accumulate ? o1 : NULL, NV);
                mac2(xb + (size_t)t * C, xb + (size_t)(t + 1) * C, wr, a0, a1, C, NV);
                if (v0 && v1)
                    mac2(xb + (size_t)s0 * C, xb + (size_t)s1 * C, ws, a0, a1, C, NV);
                else if (v0)
                    mac1(xb + (size_t)s0 * C, ws, a0, C, NV);
                else if (v1)
                    mac1(xb + (size_t)s1 * C, ws, a1, C, NV);
                finish_row(o0, a0, sum, sumsq, C, NV);
                finish_row(o1, a1, sum, sumsq, C, NV);
            } else {
                mac1(xb + (size_t)t * C, wr, a0, C, NV);
                if (v0) mac1(xb + (size_t)s0 * C, ws, a0, C, NV);
                finish_row(o0, a0, sum, sumsq, C, NV);
            }
        }
    }
}

void conv(const float *x, const float *ws, const float *wr, const float *bias, float *out, int B, int T, int C,
          int shift, int accumulate, double *sum, double *sumsq) {
    /* Specialised for C = 40 (the paper's network), generic up to MAXV vectors. */
    if (C == 40)
        conv_impl(x, ws, wr, bias, out, B, T, C, shift, accumulate, sum, sumsq, 5);
    else
        conv_impl(x, ws, wr, bias, out, B, T, C, shift, accumulate, sum, sumsq, C / 8);
}

/* dws = sum over rows with 0 <= t - shift < T of x(t - shift)^T g(t); dwr = sum over all rows of
 * x(t)^T g(t). Both (C_in, C_out), overwritten. */
INLINE void wgrad_impl(const float *x, const float *g, float *dws, float *dwr, int B, int T, int C, int shift,
                       int NV) {
    memset(dws, 0, sizeof(float) * C * C);
    memset(dwr, 0, sizeof(float) * C * C);
    int t0 = shift > 0 ? shift : 0, t1 = shift < 0 ? T + shift : T; /* rows t with a valid t - shift */
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * C, *gb = g + (size_t)b * T * C;
        for (int pass = 0; pass < 2; pass++) {
            float *dw = pass ? dws : dwr;
            int lo = pass ? t0 : 0, hi = pass ? t1 : T, off = pass ? shift : 0;
            for (int k = 0; k < C; k += 2) {
                v8 a0[MAXV], a1[MAXV];
                for (int v = 0; v < NV; v++) {
                    a0[v] = LD(dw + (size_t)k * C + 8 * v);
                    a1[v] = LD(dw + (size_t)(k + 1) * C + 8 * v);
                }
                for (int t = lo; t < hi; t++) {
                    const float *xr = xb + (size_t)(t - off) * C;
                    v8 x0 = splat(xr[k]), x1 = splat(xr[k + 1]);
                    const float *gr = gb + (size_t)t * C;
                    for (int v = 0; v < NV; v++) {
                        v8 gv = LD(gr + 8 * v);
                        a0[v] += x0 * gv;
                        a1[v] += x1 * gv;
                    }
                }
                for (int v = 0; v < NV; v++) {
                    ST(dw + (size_t)k * C + 8 * v, a0[v]);
                    ST(dw + (size_t)(k + 1) * C + 8 * v, a1[v]);
                }
            }
        }
    }
}

void wgrad(const float *x, const float *g, float *dws, float *dwr, int B, int T, int C, int shift) {
    if (C == 40)
        wgrad_impl(x, g, dws, dwr, B, T, C, shift, 5);
    else
        wgrad_impl(x, g, dws, dwr, B, T, C, shift, C / 8);
}

/* h = relu((a - mean) * scale[b] + shift[b]): batch norm with the dropout scale folded in. */
INLINE v8 bn_relu(v8 a, v8 mean, v8 scale, v8 shift) { return vmax((a - mean) * scale + shift, splat(0.f)); }

void bn_relu_fwd(const float *a, const float *mean, const float *scale, const float *shift, float *h, int B, int T,
                 int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c += 8)
                ST(h + r + c, bn_relu(LD(a + r + c), LD(mean + c), LD(scale + (size_t)b * C + c),
                                      LD(shift + (size_t)b * C + c)));
        }
}

/* The end of a block: h2 = bn_relu(a2), s = sigmoid(h2), y = x * s; level[b] = sum over t of y. */
void gate_fwd(const float *x, const float *a, const float *mean, const float *scale, const float *shift, float *y,
              float *s, float *level, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        float *lev = level + (size_t)b * C;
        memset(lev, 0, sizeof(float) * C);
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c += 8) {
                v8 h = bn_relu(LD(a + r + c), LD(mean + c), LD(scale + (size_t)b * C + c),
                               LD(shift + (size_t)b * C + c));
                v8 sg = splat(1.f) / (splat(1.f) + vexp(-h));
                v8 yv = LD(x + r + c) * sg;
                ST(s + r + c, sg);
                ST(y + r + c, yv);
                ST(lev + c, LD(lev + c) + yv);
            }
        }
    }
}

/* Backward of the gate and of the second ReLU/dropout:
 *   dyt = dy + dlevel[b] (dy may be NULL: the last block feeds only its level)
 *   dx  = dyt * s                                 (the gate's direct path)
 *   g   = dyt * x * s (1 - s) * mscale[b] * [h2 > 0]   (gradient at the batch norm's output)
 * and per channel sum(g), sum(g * (a - mean)) for the batch norm backward. g overwrites s. */
void gate_bwd(const float *dy, const float *dlevel, const float *x, float *s, const float *a, const float *mean,
              const float *scale, const float *shift, const float *mscale, float *dx, double *sum_g,
              double *sum_ga, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c += 8) {
                size_t bc = (size_t)b * C + c;
                v8 dyt = LD(dlevel + bc);
                if (dy) dyt += LD(dy + r + c);
                v8 sg = LD(s + r + c), xv = LD(x + r + c);
                v8 dev = LD(a + r + c) - LD(mean + c);
                v8 pre = dev * LD(scale + bc) + LD(shift + bc);
                ST(dx + r + c, dyt * sg);
                v8 g = dyt * xv * sg * (splat(1.f) - sg) * LD(mscale + bc);
                g = vsel(pre > splat(0.f), g, splat(0.f));
                ST(s + r + c, g);
                for (int i = 0; i < 8; i++) {
                    sum_g[c + i] += g[i];
                    sum_ga[c + i] += (double)g[i] * dev[i];
                }
            }
        }
}

/* Backward of the first ReLU/dropout: g = dh * mscale[b] * [h > 0], and the two sums as above. */
void relu_bwd(const float *dh, const float *h, const float *a, const float *mean, const float *mscale, float *g,
              double *sum_g, double *sum_ga, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c += 8) {
                v8 gv = LD(dh + r + c) * LD(mscale + (size_t)b * C + c);
                gv = vsel(LD(h + r + c) > splat(0.f), gv, splat(0.f));
                v8 dev = LD(a + r + c) - LD(mean + c);
                ST(g + r + c, gv);
                for (int i = 0; i < 8; i++) {
                    sum_g[c + i] += gv[i];
                    sum_ga[c + i] += (double)gv[i] * dev[i];
                }
            }
        }
}

/* Batch norm backward, in place: g <- k * g + (a - mean) * ca + c0 (coefficients from the sums),
 * and sum_da += per-channel sum of the result (the conv bias gradient). */
void bn_bwd(float *g, const float *a, const float *mean, const float *k, const float *ca, const float *c0,
            double *sum_da, int B, int T, int C) {
    size_t rows = (size_t)B * T;
    for (size_t r = 0; r < rows; r++) {
        size_t o = r * C;
        for (int c = 0; c < C; c += 8) {
            v8 d = LD(g + o + c) * LD(k + c) + (LD(a + o + c) - LD(mean + c)) * LD(ca + c) + LD(c0 + c);
            ST(g + o + c, d);
            for (int i = 0; i < 8; i++) sum_da[c + i] += d[i];
        }
    }
}
