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

/* h = relu((a - mean) * scale[b] + shift[b]): batch norm with the dropout scale folded in. */
INLINE v8 bn_relu(v8 a, v8 mean, v8 scale, v8 shift) { return vmax((a - mean) * scale + shift, splat(0.f)); }

/* One utterance's rows (T, C) through batch norm + ReLU into `scratch`, with that utterance's
 * scale and shift (C each). A block's second conv and its weight gradient read the first conv's
 * output this way, so the normalised tensor is never written to memory, and the utterance's
 * rows (T * C floats) stay in cache while the product sweeps them. */
INLINE const float *normalised(const float *a, const float *mean, const float *scale, const float *shift,
                               float *scratch, int T, int C) {
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c += 8)
            ST(scratch + (size_t)t * C + c,
               bn_relu(LD(a + (size_t)t * C + c), LD(mean + c), LD(scale + c), LD(shift + c)));
    return scratch;
}

/* acc0 += xa W, acc1 += xb W over the first kin input channels (the rest are zero padding);
 * the two rows share every weight load. */
INLINE void mac2(const float *xa, const float *xb, const float *w, v8 *acc0, v8 *acc1, int C, int kin, int NV) {
    for (int k = 0; k < kin; k++) {
        v8 a0 = splat(xa[k]), a1 = splat(xb[k]);
        const float *wk = w + (size_t)k * C;
        for (int v = 0; v < NV; v++) {
            v8 wv = LD(wk + 8 * v);
            acc0[v] += a0 * wv;
            acc1[v] += a1 * wv;
        }
    }
}

INLINE void mac1(const float *xa, const float *w, v8 *acc0, int C, int kin, int NV) {
    for (int k = 0; k < kin; k++) {
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
 * 0 <= t - shift < T. Weights are (C_in, C_out) row-major; only the first kin input channels are
 * read (the caller knows the rest of x is zero padding). With sum/sumsq (length C, double), the
 * per-channel sum and sum of squares of out over all rows are added to them. With nmean (C) and
 * nscale, nshift (B, C), the input is relu((x - nmean) * nscale[b] + nshift[b]) instead of x,
 * computed one utterance at a time in `scratch` (T * C floats). */
INLINE void conv_impl(const float *x, const float *ws, const float *wr, const float *bias, float *out, int B,
                      int T, int C, int kin, int shift, int accumulate, double *sum, double *sumsq,
                      const float *nmean, const float *nscale, const float *nshift, float *scratch, int NV) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * C;
        if (nmean) xb = normalised(xb, nmean, nscale + (size_t)b * C, nshift + (size_t)b * C, scratch, T, C);
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
                mac2(xb + (size_t)t * C, xb + (size_t)(t + 1) * C, wr, a0, a1, C, kin, NV);
                if (v0 && v1)
                    mac2(xb + (size_t)s0 * C, xb + (size_t)s1 * C, ws, a0, a1, C, kin, NV);
                else if (v0)
                    mac1(xb + (size_t)s0 * C, ws, a0, C, kin, NV);
                else if (v1)
                    mac1(xb + (size_t)s1 * C, ws, a1, C, kin, NV);
                finish_row(o0, a0, sum, sumsq, C, NV);
                finish_row(o1, a1, sum, sumsq, C, NV);
            } else {
                mac1(xb + (size_t)t * C, wr, a0, C, kin, NV);
                if (v0) mac1(xb + (size_t)s0 * C, ws, a0, C, kin, NV);
                finish_row(o0, a0, sum, sumsq, C, NV);
            }
        }
    }
}

void conv(const float *x, const float *ws, const float *wr, const float *bias, float *out, int B, int T, int C,
          int kin, int shift, int accumulate, double *sum, double *sumsq, const float *nmean, const float *nscale,
          const float *nshift, float *scratch) {
    /* Specialised for C = 40 (the paper's network), generic up to MAXV vectors. */
    if (C == 40)
        conv_impl(x, ws, wr, bias, out, B, T, C, kin, shift, accumulate, sum, sumsq, nmean, nscale, nshift, scratch,
                  5);
    else
        conv_impl(x, ws, wr, bias, out, B, T, C, kin, shift, accumulate, sum, sumsq, nmean, nscale, nshift, scratch,
                  C / 8);
}

/* R rows k..k+R-1 of dw += sum over t in [lo, hi) of x(t - off)[k..] (outer) g(t): each g vector
 * loaded once feeds R FMAs. R = 2 keeps 2 * 5 accumulators, 2 broadcasts and the g vector in the
 * 16 AVX registers; R = 3 spills and runs slower. */
INLINE void wgrad_rows(const float *xb, const float *gb, float *dw, int k, int lo, int hi, int off, int C, int R,
                       int NV) {
    v8 acc[2][MAXV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = LD(dw + (size_t)(k + r) * C + 8 * v);
    for (int t = lo; t < hi; t++) {
        const float *xr = xb + (size_t)(t - off) * C + k;
        const float *gr = gb + (size_t)t * C;
        v8 xv[2];
        for (int r = 0; r < R; r++) xv[r] = splat(xr[r]);
        for (int v = 0; v < NV; v++) {
            v8 gv = LD(gr + 8 * v);
            for (int r = 0; r < R; r++) acc[r][v] += xv[r] * gv;
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) ST(dw + (size_t)(k + r) * C + 8 * v, acc[r][v]);
}

/* dws = sum over rows with 0 <= t - shift < T of x(t - shift)^T g(t); dwr = sum over all rows of
 * x(t)^T g(t). Both (C_in, C_out), overwritten; rows from kin on (zero-padded inputs) stay zero.
 * nmean, nscale, nshift, scratch: the input normalised on the fly, as in conv. */
INLINE void wgrad_impl(const float *x, const float *g, float *dws, float *dwr, int B, int T, int C, int kin,
                       int shift, const float *nmean, const float *nscale, const float *nshift, float *scratch,
                       int NV) {
    /* Rows go in chunks of TB so that a chunk of x and g (2 * TB * C floats) stays in L1 while every
     * pair of input channels sweeps it; whole utterances would be read from L2 twenty times. */
    enum { TB = 48 };
    memset(dws, 0, sizeof(float) * C * C);
    memset(dwr, 0, sizeof(float) * C * C);
    int t0 = shift > 0 ? shift : 0, t1 = shift < 0 ? T + shift : T; /* rows t with a valid t - shift */
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * C, *gb = g + (size_t)b * T * C;
        if (nmean) xb = normalised(xb, nmean, nscale + (size_t)b * C, nshift + (size_t)b * C, scratch, T, C);
        for (int c0 = 0; c0 < T; c0 += TB) {
            int c1 = c0 + TB < T ? c0 + TB : T;
            for (int pass = 0; pass < 2; pass++) {
                float *dw = pass ? dws : dwr;
                int lo = pass ? (t0 > c0 ? t0 : c0) : c0, hi = pass ? (t1 < c1 ? t1 : c1) : c1;
                int off = pass ? shift : 0;
                if (lo >= hi) continue;
                int k = 0;
                for (; k + 2 <= kin; k += 2) wgrad_rows(xb, gb, dw, k, lo, hi, off, C, 2, NV);
                if (k < kin) wgrad_rows(xb, gb, dw, k, lo, hi, off, C, 1, NV);
            }
        }
    }
}

void wgrad(const float *x, const float *g, float *dws, float *dwr, int B, int T, int C, int kin, int shift,
           const float *nmean, const float *nscale, const float *nshift, float *scratch) {
    if (C == 40)
        wgrad_impl(x, g, dws, dwr, B, T, C, kin, shift, nmean, nscale, nshift, scratch, 5);
    else
        wgrad_impl(x, g, dws, dwr, B, T, C, kin, shift, nmean, nscale, nshift, scratch, C / 8);
}


/* The sigmoid of a batch-normalised, ReLU'd conv output: the gate of a block. */
INLINE v8 gate(v8 a, v8 mean, v8 scale, v8 shift) { return splat(1.f) / (splat(1.f) + vexp(-bn_relu(a, mean, scale, shift))); }

/* The end of a block: y = x * gate(a2); level[b] = sum over t of y. */
void gate_fwd(const float *x, const float *a, const float *mean, const float *scale, const float *shift, float *y,
              float *level, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        float *lev = level + (size_t)b * C;
        memset(lev, 0, sizeof(float) * C);
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c += 8) {
                v8 yv = LD(x + r + c) * gate(LD(a + r + c), LD(mean + c), LD(scale + (size_t)b * C + c),
                                             LD(shift + (size_t)b * C + c));
                ST(y + r + c, yv);
                ST(lev + c, LD(lev + c) + yv);
            }
        }
    }
}

/* Per-channel sums are kept in float over blocks of ROWS rows and then added in double: exact
 * enough (16 terms), and the inner loops stay vectorised. */
#define ROWS 16

INLINE void flush(v8 *p, double *sum, int NV) {
    for (int v = 0; v < NV; v++) {
        for (int i = 0; i < 8; i++) sum[8 * v + i] += p[v][i];
        p[v] = splat(0.f);
    }
}

/* Backward of the gate and of the second ReLU/dropout, with s = gate(a) recomputed (cheaper than
 * storing it: the pass reads a anyway):
 *   dyt = dy + dlevel[b] (dy may be NULL: the last block feeds only its level)
 *   dx  = dyt * s                                 (the gate's direct path)
 *   g   = dyt * x * s (1 - s) * mscale[b] * [h2 > 0]   (gradient at the batch norm's output)
 * and per channel sum(g), sum(g * (a - mean)) for the batch norm backward. */
INLINE void gate_bwd_impl(const float *dy, const float *dlevel, const float *x, float *gout, const float *a,
                          const float *mean, const float *scale, const float *shift, const float *mscale, float *dx,
                          double *sum_g, double *sum_ga, int B, int T, int C, int NV) {
    v8 pg[MAXV], pga[MAXV];
    for (int v = 0; v < NV; v++) pg[v] = pga[v] = splat(0.f);
    for (int b = 0; b < B; b++) {
        size_t bc = (size_t)b * C;
        for (int t0 = 0; t0 < T; t0 += ROWS) {
            int t1 = t0 + ROWS < T ? t0 + ROWS : T;
            for (int t = t0; t < t1; t++) {
                size_t r = ((size_t)b * T + t) * C;
                for (int v = 0; v < NV; v++) {
                    int c = 8 * v;
                    v8 dyt = LD(dlevel + bc + c);
                    if (dy) dyt += LD(dy + r + c);
                    v8 av = LD(a + r + c), xv = LD(x + r + c);
                    v8 sc = LD(scale + bc + c), sh = LD(shift + bc + c);
                    v8 sg = gate(av, LD(mean + c), sc, sh);
                    v8 dev = av - LD(mean + c);
                    ST(dx + r + c, dyt * sg);
                    v8 g = dyt * xv * sg * (splat(1.f) - sg) * LD(mscale + bc + c);
                    g = vsel(bn_relu(av, LD(mean + c), sc, sh) > splat(0.f), g, splat(0.f));
                    ST(gout + r + c, g);
                    pg[v] += g;
                    pga[v] += g * dev;
                }
            }
            flush(pg, sum_g, NV);
            flush(pga, sum_ga, NV);
        }
    }
}

void gate_bwd(const float *dy, const float *dlevel, const float *x, float *g, const float *a, const float *mean,
              const float *scale, const float *shift, const float *mscale, float *dx, double *sum_g,
              double *sum_ga, int B, int T, int C) {
    if (C == 40)
        gate_bwd_impl(dy, dlevel, x, g, a, mean, scale, shift, mscale, dx, sum_g, sum_ga, B, T, C, 5);
    else
        gate_bwd_impl(dy, dlevel, x, g, a, mean, scale, shift, mscale, dx, sum_g, sum_ga, B, T, C, C / 8);
}

/* Backward of the first ReLU/dropout: g = dh * mscale[b] * [h > 0] with h = bn_relu(a) recomputed,
 * and the two sums as above. */
INLINE void relu_bwd_impl(const float *dh, const float *a, const float *mean, const float *scale, const float *shift,
                          const float *mscale, float *g, double *sum_g, double *sum_ga, int B, int T, int C, int NV) {
    v8 pg[MAXV], pga[MAXV];
    for (int v = 0; v < NV; v++) pg[v] = pga[v] = splat(0.f);
    for (int b = 0; b < B; b++) {
        size_t bc = (size_t)b * C;
        for (int t0 = 0; t0 < T; t0 += ROWS) {
            int t1 = t0 + ROWS < T ? t0 + ROWS : T;
            for (int t = t0; t < t1; t++) {
                size_t r = ((size_t)b * T + t) * C;
                for (int v = 0; v < NV; v++) {
                    int c = 8 * v;
                    v8 av = LD(a + r + c);
                    v8 gv = LD(dh + r + c) * LD(mscale + bc + c);
                    v8 h = bn_relu(av, LD(mean + c), LD(scale + bc + c), LD(shift + bc + c));
                    gv = vsel(h > splat(0.f), gv, splat(0.f));
                    v8 dev = av - LD(mean + c);
                    ST(g + r + c, gv);
                    pg[v] += gv;
                    pga[v] += gv * dev;
                }
            }
            flush(pg, sum_g, NV);
            flush(pga, sum_ga, NV);
        }
    }
}

void relu_bwd(const float *dh, const float *a, const float *mean, const float *scale, const float *shift,
              const float *mscale, float *g, double *sum_g, double *sum_ga, int B, int T, int C) {
    if (C == 40)
        relu_bwd_impl(dh, a, mean, scale, shift, mscale, g, sum_g, sum_ga, B, T, C, 5);
    else
        relu_bwd_impl(dh, a, mean, scale, shift, mscale, g, sum_g, sum_ga, B, T, C, C / 8);
}

/* Batch norm backward, in place: g <- k * g + (a - mean) * ca + c0 (coefficients from the sums),
 * and sum_da += per-channel sum of the result (the conv bias gradient). */
INLINE void bn_bwd_impl(float *g, const float *a, const float *mean, const float *k, const float *ca,
                        const float *c0, double *sum_da, int B, int T, int C, int NV) {
    v8 p[MAXV];
    for (int v = 0; v < NV; v++) p[v] = splat(0.f);
    size_t rows = (size_t)B * T;
    for (size_t r0 = 0; r0 < rows; r0 += ROWS) {
        size_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
        for (size_t r = r0; r < r1; r++) {
            size_t o = r * C;
            for (int v = 0; v < NV; v++) {
                int c = 8 * v;
                v8 d = LD(g + o + c) * LD(k + c) + (LD(a + o + c) - LD(mean + c)) * LD(ca + c) + LD(c0 + c);
                ST(g + o + c, d);
                p[v] += d;
            }
        }
        flush(p, sum_da, NV);
    }
}

void bn_bwd(float *g, const float *a, const float *mean, const float *k, const float *ca, const float *c0,
            double *sum_da, int B, int T, int C) {
    if (C == 40)
        bn_bwd_impl(g, a, mean, k, ca, c0, sum_da, B, T, C, 5);
    else
        bn_bwd_impl(g, a, mean, k, ca, c0, sum_da, B, T, C, C / 8);
}
