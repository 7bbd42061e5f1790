// Fused CPU kernels for TinyHD's decoders (float32, channels-last 3D activations B×T×H×W×C in memory).
// Built on first use by tinyhd/kernels.py (torch.utils.cpp_extension); tinyhd/fast.py calls them and falls back
// to oneDNN when they are unavailable. Both compute exactly the function of the modules they replace; only the
// order of float additions differs (tests/test_kernels.py bounds the difference).
//
// 1. fused_irb: one decoder IRB (tinyhd.decoders.IRB, BatchNorm folded into the conv biases)
//      h = relu6(We·x + be)                  1×1×1 conv, Cin → Ch
//      g = relu6(dw_{kt×3×3}(h) + bd)        depthwise, stride (st, 1, 1) with st 1 or 2, padding (kt/2, 1, 1)
//      y = Wp·g + bp                         1×1×1 conv, Ch → Cout
//    oneDNN runs these as three passes over memory, writing and re-reading the hidden tensor (2× the input
//    channels) twice. Here the frames are cut into bands of R rows (one task per band, over ATen's threads);
//    a task walks through time keeping a ring of kt planar, zero-bordered hidden bands [Ch][R+2][L+W'+16]
//    (sized to stay in L2; L = 16 so that rows are 64-byte aligned), expanding each input frame's band
//    (+1 halo row each side) once and computing each output row from the ring in 64-pixel blocks (4
//    independent accumulators of 16 lanes); the output is written once.
// 2. shuffle_up_add: Up_t(PS(a)) + d in one pass: the 2× frame-wise pixel shuffle (input channel c·4 + i·2 + j
//    → output channel c at sub-pixel (i, j), nn.PixelShuffle's order), the 2× temporal linear interpolation
//    (given as source frames i0, i1 and weight lam per output frame; identity when i0 = i1 = t, lam = 0) and
//    the decoders' additive skip connection d. PyTorch needs a copy, a matmul and an add for it.
// 3. dw_conv3d_backward: input and weight gradients of a depthwise Conv3d (groups = C, no bias, dilation 1, zero
//    padding, any kernel / stride / padding) on channels-last tensors, for CPU training: oneDNN's backward of these
//    layers is ~10-20× slower than its forward. Vectors run over 16 channels (masked tail group), or for C ≤ 8 with
//    W stride 1 over ⌊16/C⌋ pixels × C channels. Both walk bands of rows through time (what a band reads over kt
//    frames stays in L2). grad_weight keeps per-tap accumulators in registers along each row (kw = 3: the three
//    horizontal taps in one pass) and sums per-task partials in task order, so results do not depend on the
//    thread count; grad_input gathers, for each input row, the (a, b) grad_out rows that reach it (kw = 3, W stride
//    1: 4 columns from 6 loads per row and 3 weights in registers; otherwise a list of taps per column residue).
//    Measured on the 2-core Zen4 (AVX-512) dev machine, see dw_conv3d_backward below.
// 4. bn_act_forward / bn_act_backward: training-mode BatchNorm (+ ReLU6) of channels-last activations for CPU
//    training (tinyhd/cpu_train.py), seen as M×C row-major matrices walked in rows of lcm(C, 16) floats; two
//    passes each way. PyTorch's channels-last BatchNorm is scalar code for C < 16 (2, 4, 14-channel layers at
//    full resolution): 2×4×16×192×256 took 77 + 62 ms forward + backward there, 7 + 9 ms here (2 threads).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

// 16-float vectors in GCC's vector extension: AVX-512 registers under -march=native on this repo's machine, pairs
// of AVX2 registers elsewhere. Intrinsics only behind #ifdef __AVX512F__ (a build for AVX2 CPUs must compile:
// tests/test_kernels.py builds with -march=x86-64-v3).
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // unaligned access
inline v16 ld(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void st(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
inline v16 splat(float s) { return v16{} + s; }
inline v16 relu6(v16 v) {
  const v16 z = splat(0.f), six = splat(6.f);
  v = v < z ? z : v;
  return v > six ? six : v;
}

constexpr int64_t kBlock = 64;  // pixels per inner block (4 vectors of 16)
constexpr int64_t kLeft = 16;   // left border of a ring row (column kLeft - 1 is the zero padding)

// In-register transpose of a 16×16 tile: r[i] lane j → r[j] lane i (four rounds of two-vector shuffles:
// 32-bit and 64-bit interleaves give 4×4 transposes inside each 128-bit lane, then two lane shuffles).
inline void transpose16(v16 r[16]) {
  v16 a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    a[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  for (int i = 0; i < 16; i += 4)
    for (int h = 0; h < 2; ++h) {
      b[i + 2 * h] = __builtin_shufflevector(a[i + h], a[i + h + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      b[i + 2 * h + 1] = __builtin_shufflevector(a[i + h], a[i + h + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
  // b[4m + q], 128-bit lane L, holds r[4m .. 4m+3][4L + q]
  for (int q = 0; q < 4; ++q) {
    const v16 d01 = __builtin_shufflevector(b[q], b[4 + q], 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const v16 d23 = __builtin_shufflevector(b[q], b[4 + q], 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const v16 e01 = __builtin_shufflevector(b[8 + q], b[12 + q], 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const v16 e23 = __builtin_shufflevector(b[8 + q], b[12 + q], 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    r[q] = __builtin_shufflevector(d01, e01, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    r[4 + q] = __builtin_shufflevector(d01, e01, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    r[8 + q] = __builtin_shufflevector(d23, e23, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    r[12 + q] = __builtin_shufflevector(d23, e23, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
}

// Channels-last row (W pixels × C channels) → planar rows dst[c·dstride + w], c < C.
inline void cl_to_planar(const float* src, int64_t W, int64_t C, float* dst, int64_t dstride) {
  int64_t w0 = 0;
  if (C >= 4) {
    v16 r[16];
    // full 16-float loads stay inside the row while (w0 + 15)·C + c0 + 16 ≤ W·C
    for (; w0 + 16 <= W && (w0 + 15) * C + ((C - 1) / 16) * 16 + 16 <= W * C; w0 += 16)
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        for (int j = 0; j < 16; ++j) r[j] = ld(src + (w0 + j) * C + c0);
        transpose16(r);
        const int64_t nc = std::min<int64_t>(16, C - c0);
        for (int64_t i = 0; i < nc; ++i) st(dst + (c0 + i) * dstride + w0, r[i]);
      }
  }
  for (; w0 < W; ++w0)
    for (int64_t c = 0; c < C; ++c) dst[c * dstride + w0] = src[w0 * C + c];
}

// Planar rows src[c·sstride + w] → channels-last row dst (W pixels × C channels).
inline void planar_to_cl(const float* src, int64_t sstride, int64_t W, int64_t C, float* dst) {
  int64_t w0 = 0;
  if (C >= 8) {
    v16 r[16];
    for (; w0 + 16 <= W; w0 += 16)
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const int64_t nc = std::min<int64_t>(16, C - c0);
        for (int64_t i = 0; i < 16; ++i) r[i] = i < nc ? ld(src + (c0 + i) * sstride + w0) : splat(0.f);
        transpose16(r);
        for (int j = 0; j < 16; ++j) {
          float* d = dst + (w0 + j) * C + c0;
          if (nc == 16) st(d, r[j]);
          else std::memcpy(d, &r[j], nc * sizeof(float));
        }
      }
  }
  for (; w0 < W; ++w0)
    for (int64_t c = 0; c < C; ++c) dst[w0 * C + c] = src[c * sstride + w0];
}

// dst[o][0..64) = act(bias[o] + Σ_i Wt[o][i] · src[i][0..64)) for o < n_out (a 1×1 conv on one 64-pixel block;
// channel i of src at src + i·sstride, channel o of dst at dst + o·dstride). Four output channels at a time so
// that each loaded input vector feeds four FMAs.
template <bool RELU6>
inline void pointwise_block(const float* src, int64_t sstride, int64_t n_in, const float* Wt, const float* bias,
                            int64_t n_out, float* dst, int64_t dstride) {
  int64_t o = 0;
  for (; o + 4 <= n_out; o += 4) {
    v16 acc[4][4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const v16 b = splat(bias[o + q]);
      acc[q][0] = b; acc[q][1] = b; acc[q][2] = b; acc[q][3] = b;
    }
    for (int64_t i = 0; i < n_in; ++i) {
      const float* s = src + i * sstride;
      const v16 x0 = ld(s), x1 = ld(s + 16), x2 = ld(s + 32), x3 = ld(s + 48);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const v16 k = splat(Wt[(o + q) * n_in + i]);
        acc[q][0] += k * x0; acc[q][1] += k * x1; acc[q][2] += k * x2; acc[q][3] += k * x3;
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      float* d = dst + (o + q) * dstride;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) st(d + 16 * v, RELU6 ? relu6(acc[q][v]) : acc[q][v]);
    }
  }
  for (; o < n_out; ++o) {
    const v16 b = splat(bias[o]);
    v16 a0 = b, a1 = b, a2 = b, a3 = b;
    for (int64_t i = 0; i < n_in; ++i) {
      const float* s = src + i * sstride;
      const v16 k = splat(Wt[o * n_in + i]);
      a0 += k * ld(s); a1 += k * ld(s + 16); a2 += k * ld(s + 32); a3 += k * ld(s + 48);
    }
    float* d = dst + o * dstride;
    st(d, RELU6 ? relu6(a0) : a0); st(d + 16, RELU6 ? relu6(a1) : a1);
    st(d + 32, RELU6 ? relu6(a2) : a2); st(d + 48, RELU6 ? relu6(a3) : a3);
  }
}

// Depthwise kt×3×3 + ReLU6 of NR (1 or 2) consecutive output rows of one channel on one 64-pixel block: rows[j]
// points at ring row j (the first input row, left padding column included) of each temporal tap (nullptr =
// padding frame). With two output rows each loaded input vector feeds up to six FMAs.
template <int KT, int NR>
inline void depthwise_block(const float* const* taps, int64_t Wr, const float* k, float bias, float* g,
                            int64_t gstride) {
  v16 acc[NR][4];
#pragma GCC unroll 2
  for (int n = 0; n < NR; ++n) { acc[n][0] = splat(bias); acc[n][1] = acc[n][0]; acc[n][2] = acc[n][0]; acc[n][3] = acc[n][0]; }
  for (int dt = 0; dt < KT; ++dt) {
    const float* P = taps[dt];
    if (!P) continue;  // temporal zero padding
    const float* kk = k + dt * 9;
#pragma GCC unroll 3
    for (int dx = 0; dx < 3; ++dx) {
      const v16 k0 = splat(kk[dx]), k1 = splat(kk[3 + dx]), k2 = splat(kk[6 + dx]);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const float* s = P + dx + 16 * v;
        const v16 r0 = ld(s), r1 = ld(s + Wr), r2 = ld(s + 2 * Wr);
        acc[0][v] += k0 * r0 + k1 * r1 + k2 * r2;
        if (NR == 2) {
          const v16 r3 = ld(s + 3 * Wr);
          acc[NR - 1][v] += k0 * r1 + k1 * r2 + k2 * r3;
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int n = 0; n < NR; ++n)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) st(g + n * gstride + 16 * v, relu6(acc[n][v]));
}

template <int KT>
void irb_impl(const float* X, float* Y, int64_t B, int64_t Cin, int64_t T, int64_t To, int64_t st, int64_t H,
              int64_t W, int64_t Ch, int64_t Cout, const float* WE, const float* BE, const float* WD, const float* BD,
              const float* WP, const float* BP) {
  constexpr int PT = KT / 2;
  const int64_t Wb = (W + kBlock - 1) / kBlock * kBlock, Wr = kLeft + Wb + 16;
  // rows per band: the band's ring (KT frames × Ch planes × (R + 2) rows) within ~1.5 MiB (about an L2 of this
  // class of CPU; 0.75 MiB made the halo rows' extra expansion cost more than it saved, 3 MiB no better)
  const int64_t row_bytes = std::min<int64_t>(KT, T) * Ch * Wr * 4;
  int64_t R = std::max<int64_t>(4, std::min<int64_t>(32, (1536 << 10) / row_bytes - 2));
  // as many tasks per thread for every thread (7 bands on 2 threads would leave one idle an eighth of the time)
  const int64_t nt = at::get_num_threads();
  int64_t bands = (H + R - 1) / R;
  if (nt > 1 && (B * bands) % nt) {
    bands = ((B * bands + nt - 1) / nt * nt + B - 1) / B;
    R = std::max<int64_t>(1, (H + bands - 1) / bands);
    bands = (H + R - 1) / R;
  }
  const int64_t Rp = R + 2, plane = Rp * Wr, frame = Ch * plane;
  at::parallel_for(0, B * bands, 1, [&](int64_t task0, int64_t task1) {
    std::vector<float> ring_store(KT * frame + 16), in(Cin * Wb, 0.f), g(2 * Ch * kBlock), out(2 * Cout * Wb);
    float* ring = ring_store.data() + ((16 - (reinterpret_cast<uintptr_t>(ring_store.data()) / 4) % 16) % 16);
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / bands, row0 = (task % bands) * R, row1 = std::min(H, row0 + R);
      int64_t slot_frame[KT];
      for (int k = 0; k < KT; ++k) slot_frame[k] = -1;
      // hidden rows row0-1 .. row1 of input frame f → ring slot f % KT (rows outside the image are zero)
      auto expand = [&](int64_t f) {
        float* P = ring + (f % KT) * frame;
        for (int64_t lr = 0; lr < row1 - row0 + 2; ++lr) {
          const int64_t r = row0 - 1 + lr;
          if (r < 0 || r >= H) {
            for (int64_t c = 0; c < Ch; ++c) std::fill(P + c * plane + lr * Wr, P + c * plane + (lr + 1) * Wr, 0.f);
            continue;
          }
          const float* xr = X + ((b * T + f) * H + r) * W * Cin;
          cl_to_planar(xr, W, Cin, in.data(), Wb);
          for (int64_t wb = 0; wb < Wb; wb += kBlock)
            pointwise_block<true>(in.data() + wb, Wb, Cin, WE, BE, Ch, P + lr * Wr + kLeft + wb, plane);
          for (int64_t c = 0; c < Ch; ++c) {
            float* row = P + c * plane + lr * Wr;
            std::fill(row, row + kLeft, 0.f);           // left padding
            std::fill(row + kLeft + W, row + Wr, 0.f);  // right padding (and the block remainder)
          }
        }
        slot_frame[f % KT] = f;
      };
      for (int64_t t = 0; t < To; ++t) {  // output frame t is centred on input frame t·st
        const int64_t tc = t * st;
        for (int64_t f = std::max<int64_t>(0, tc - PT); f <= std::min<int64_t>(T - 1, tc + PT); ++f)
          if (slot_frame[f % KT] != f) expand(f);
        for (int64_t r = row0; r < row1; r += 2) {
          const int64_t lr = r - row0, nr = std::min<int64_t>(2, row1 - r);  // ring row lr + 1 holds image row r
          for (int64_t wb = 0; wb < Wb; wb += kBlock) {
            for (int64_t c = 0; c < Ch; ++c) {  // depthwise kt×3×3 + ReLU6, nr rows
              const float* taps[KT];
              for (int dt = 0; dt < KT; ++dt) {
                const int64_t f = tc + dt - PT;
                taps[dt] = (f < 0 || f >= T) ? nullptr : ring + (f % KT) * frame + c * plane + lr * Wr + kLeft - 1 + wb;
              }
              if (nr == 2)
                depthwise_block<KT, 2>(taps, Wr, WD + c * KT * 9, BD[c], g.data() + c * kBlock, Ch * kBlock);
              else
                depthwise_block<KT, 1>(taps, Wr, WD + c * KT * 9, BD[c], g.data() + c * kBlock, Ch * kBlock);
            }
            for (int64_t n = 0; n < nr; ++n)  // 1×1×1 projection
              pointwise_block<false>(g.data() + n * Ch * kBlock, kBlock, Ch, WP, BP, Cout, out.data() + n * Cout * Wb + wb, Wb);
          }
          for (int64_t n = 0; n < nr; ++n) {  // back to channels-last
            float* yr = Y + ((b * To + t) * H + r + n) * W * Cout;
            const float* o_n = out.data() + n * Cout * Wb;
            planar_to_cl(o_n, Wb, W, Cout, yr);
          }
        }
      }
    }
  });
}

// ---- 3. dw_conv3d_backward -------------------------------------------------------------------------------------
// Lanes of one vector: P consecutive pixels (along W) × nc channels starting at c0. P > 1 ("packed") only when
// C ≤ 8 and the W stride is 1, so that P pixels of x and of grad_out are contiguous in memory; otherwise P = 1
// and the channels are cut into groups of 16 (the last one masked).
struct Lanes {
  int64_t c0, nc, P;
};

inline v16 ldm(const float* p, int64_t n) {  // lanes [0, n) from p, the others zero (no access beyond n)
#ifdef __AVX512F__
  return (v16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#else
  if (n == 16) return ld(p);
  v16 v = splat(0.f);
  std::memcpy(&v, p, n * sizeof(float));
  return v;
#endif
}
inline void stm(float* p, v16 v, int64_t n) {  // lanes [0, n) to p
#ifdef __AVX512F__
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
  if (n == 16) st(p, v);
  else std::memcpy(p, &v, n * sizeof(float));
#endif
}

struct DwGeom {
  int64_t N, C, T, H, W, To, Ho, Wo, kt, kh, kw, st, sh, sw, pt, ph, pw;
  int64_t K() const { return kt * kh * kw; }
};

std::vector<Lanes> lane_groups(const DwGeom& g) {
  std::vector<Lanes> v;
  if (g.C <= 8 && g.sw == 1) {
    v.push_back({0, g.C, 16 / g.C});
  } else {
    for (int64_t c0 = 0; c0 < g.C; c0 += 16) v.push_back({c0, std::min<int64_t>(16, g.C - c0), 1});
  }
  return v;
}

// Outputs o in [lo, hi) whose tap k reads an input inside [0, I): 0 ≤ o·s − p + k < I, 0 ≤ o < O.
inline void tap_range(int64_t I, int64_t O, int64_t s, int64_t p, int64_t k, int64_t& lo, int64_t& hi) {
  const int64_t a = p - k, b = I - 1 + p - k;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = b < 0 ? 0 : std::min(O, b / s + 1);
  if (hi < lo) hi = lo;
}

// Rows per band so that what one band reads while walking through time (kt frames of `row_bytes` rows) stays
// within ~512 KiB (half this class of CPU's L2); at least 8 tasks when the image has the rows. Independent of the
// thread count, so results are bitwise the same for any number of threads.
int64_t band_rows(int64_t rows, int64_t N, int64_t frames, int64_t row_bytes) {
  int64_t R = std::max<int64_t>(1, (512 << 10) / std::max<int64_t>(1, frames * row_bytes));
  R = std::min(R, std::max<int64_t>(1, rows));
  int64_t bands = (rows + R - 1) / R;
  if (N * bands < 8 && bands < rows) {
    bands = std::min<int64_t>(rows, (8 + N - 1) / N);
    R = (rows + bands - 1) / bands;
  }
  return R;
}

constexpr int kU = 4;  // independent accumulators (vectors) per inner loop: covers the FMA latency

// grad_weight of the three horizontal taps (kw = 3) of one (x row, grad_out row) pair for one lane group, added to
// dst[c·Cpad + lane]: columns [wlo, whi) (all three taps inside the image) two vectors at a time (6 accumulators;
// with one pixel per vector and W stride 1 the two vectors share two of their four x loads), the border columns
// one pixel at a time.
template <bool SW1P1>
inline void row3(const DwGeom& g, const Lanes& L, const float* xr, const float* gr, int64_t wlo, int64_t whi,
                 float* dst, int64_t Cpad) {
  const int64_t C = g.C, P = SW1P1 ? 1 : L.P, nl = P * L.nc, sw = SW1P1 ? 1 : g.sw;
  const int64_t xstep = SW1P1 ? C : P * sw * C;  // x offset between the two vectors
  v16 a0[3], a1[3];
  for (int c = 0; c < 3; ++c) a0[c] = a1[c] = splat(0.f);
  int64_t o = wlo;
  const float* xq = xr + (o * sw - g.pw) * C + L.c0;
  const float* gq = gr + o * C + L.c0;
  for (; o + 2 * P <= whi; o += 2 * P, xq += 2 * xstep, gq += 2 * P * C) {
    const v16 g0 = ldm(gq, nl), g1 = ldm(gq + P * C, nl);
    if (SW1P1) {
      const v16 x0 = ldm(xq, nl), x1 = ldm(xq + C, nl), x2 = ldm(xq + 2 * C, nl), x3 = ldm(xq + 3 * C, nl);
      a0[0] += x0 * g0; a0[1] += x1 * g0; a0[2] += x2 * g0;
      a1[0] += x1 * g1; a1[1] += x2 * g1; a1[2] += x3 * g1;
    } else {
#pragma GCC unroll 3
      for (int c = 0; c < 3; ++c) {
        a0[c] += ldm(xq + c * C, nl) * g0;
        a1[c] += ldm(xq + xstep + c * C, nl) * g1;
      }
    }
  }
  for (; o < whi; o += P, xq += xstep, gq += P * C) {
    const int64_t m = std::min<int64_t>(P, whi - o) * L.nc;  // a last vector of fewer pixels (packed lanes)
    const v16 g0 = ldm(gq, m);
#pragma GCC unroll 3
    for (int c = 0; c < 3; ++c) a1[c] += ldm(xq + c * C, m) * g0;
  }
  // border columns: each tap where it is inside the image, one pixel (nc lanes) at a time
  auto border = [&](int64_t wo) {
    const v16 g0 = ldm(gr + wo * C + L.c0, L.nc);
    for (int c = 0; c < 3; ++c) {
      const int64_t wi = wo * g.sw - g.pw + c;
      if (wi >= 0 && wi < g.W) a0[c] += ldm(xr + wi * C + L.c0, L.nc) * g0;
    }
  };
  for (int64_t wo = 0; wo < wlo; ++wo) border(wo);
  for (int64_t wo = whi; wo < g.Wo; ++wo) border(wo);
  for (int c = 0; c < 3; ++c) st(dst + c * Cpad, ld(dst + c * Cpad) + (a0[c] + a1[c]));
}

// grad_weight. Task (n, band of output rows) walks through the output frames; for each output row, each valid
// (temporal, vertical) tap pair, each lane group and each horizontal tap it accumulates x·grad_out over the row
// in kU registers and adds them to the task's partial sums part[tap][lane] (16 lanes per group). The partials are
// summed in task order at the end (deterministic).
void dw_grad_weight(const DwGeom& g, const float* X, const float* GO, float* GW) {
  const auto groups = lane_groups(g);
  const int64_t K = g.K(), Cpad = static_cast<int64_t>(groups.size()) * 16, C = g.C;
  const int64_t R = band_rows(g.Ho, g.N, g.kt, g.sh * g.W * C * 4);
  const int64_t bands = (g.Ho + R - 1) / R, tasks = g.N * bands;
  std::vector<float> part(tasks * K * Cpad, 0.f);
  const int64_t ng = static_cast<int64_t>(groups.size());
  // kw = 3: the three horizontal taps in one pass over the columns where all three are inside the image
  const bool fused3 = g.kw == 3;
  int64_t wlo = 0, whi = g.Wo;
  for (int64_t c = 0; c < g.kw; ++c) {
    int64_t lo, hi;
    tap_range(g.W, g.Wo, g.sw, g.pw, c, lo, hi);
    wlo = std::max(wlo, lo);
    whi = std::min(whi, hi);
  }
  whi = std::max(whi, wlo);
  at::parallel_for(0, tasks, 1, [&](int64_t task0, int64_t task1) {
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t n = task / bands, ho0 = (task % bands) * R, ho1 = std::min(g.Ho, ho0 + R);
      float* pt = part.data() + task * K * Cpad;
      for (int64_t to = 0; to < g.To; ++to)
        for (int64_t ho = ho0; ho < ho1; ++ho) {
          const float* gr = GO + ((n * g.To + to) * g.Ho + ho) * g.Wo * C;
          for (int64_t a = 0; a < g.kt; ++a) {
            const int64_t ti = to * g.st - g.pt + a;
            if (ti < 0 || ti >= g.T) continue;
            for (int64_t b = 0; b < g.kh; ++b) {
              const int64_t hi = ho * g.sh - g.ph + b;
              if (hi < 0 || hi >= g.H) continue;
              const float* xr = X + ((n * g.T + ti) * g.H + hi) * g.W * C;
              for (int64_t gi = 0; gi < ng; ++gi) {
                const Lanes L = groups[gi];
                float* dst = pt + (a * g.kh + b) * g.kw * Cpad + gi * 16;  // partial sums of taps (a, b, ·)
                if (fused3) {
                  if (L.P == 1 && g.sw == 1) row3<true>(g, L, xr, gr, wlo, whi, dst, Cpad);
                  else row3<false>(g, L, xr, gr, wlo, whi, dst, Cpad);
                  continue;
                }
                const int64_t P = L.P, nl = P * L.nc, xs = g.sw * C;
                for (int64_t c = 0; c < g.kw; ++c) {  // any kw: one tap at a time
                  int64_t lo, hi_;
                  tap_range(g.W, g.Wo, g.sw, g.pw, c, lo, hi_);
                  if (lo >= hi_) continue;
                  const float* xp = xr + (lo * g.sw - g.pw + c) * C + L.c0;  // x of output lo for tap c
                  const float* gp = gr + lo * C + L.c0;
                  const int64_t cnt = hi_ - lo;
                  v16 acc[kU];
                  for (int u = 0; u < kU; ++u) acc[u] = splat(0.f);
                  int64_t o = 0;
                  for (; o + kU * P <= cnt; o += kU * P)
#pragma GCC unroll 4
                    for (int u = 0; u < kU; ++u)
                      acc[u] += ldm(xp + (o + u * P) * xs, nl) * ldm(gp + (o + u * P) * C, nl);
                  for (; o + P <= cnt; o += P) acc[0] += ldm(xp + o * xs, nl) * ldm(gp + o * C, nl);
                  if (o < cnt) {  // fewer than P pixels left (packed lanes only)
                    const int64_t m = (cnt - o) * L.nc;
                    acc[1] += ldm(xp + o * xs, m) * ldm(gp + o * C, m);
                  }
                  st(dst + c * Cpad, ld(dst + c * Cpad) + ((acc[0] + acc[1]) + (acc[2] + acc[3])));
                }
              }
            }
          }
        }
    }
  });
  // reduce: tasks in order, then (packed lanes) the P pixels of each channel in order
  std::vector<float> sum(K * Cpad, 0.f);
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t i = 0; i < K * Cpad; ++i) sum[i] += part[task * K * Cpad + i];
  for (int64_t gi = 0; gi < static_cast<int64_t>(groups.size()); ++gi) {
    const Lanes L = groups[gi];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < L.nc; ++c) {
        float s = 0.f;
        for (int64_t p = 0; p < L.P; ++p) s += sum[k * Cpad + gi * 16 + p * L.nc + c];
        GW[(L.c0 + c) * K + k] = s;
      }
  }
}

// grad_input, gather form. Task (n, band of input rows) walks through the input frames; for each input row it
// lists the (temporal, vertical) taps whose output row exists, and for each residue r of the column modulo the W
// stride the horizontal taps that land on an output column: "terms" (grad_out row, column shift d, tap), output
// column wo = j + d for input column wi = r + sw·j. Interior columns (every term in range) take kU vectors at a
// time with the weights of the lane group from a table; the few border columns check each term.
void dw_grad_input(const DwGeom& g, const float* GO, const float* Wt, float* GI) {
  const auto groups = lane_groups(g);
  const int64_t K = g.K(), C = g.C, ng = static_cast<int64_t>(groups.size());
  // weight table: wtab[group][tap] = the 16 lanes' weights (packed lanes repeat the channels)
  std::vector<float> wtab(ng * K * 16, 0.f);
  for (int64_t gi = 0; gi < ng; ++gi) {
    const Lanes L = groups[gi];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t l = 0; l < L.P * L.nc; ++l) wtab[(gi * K + k) * 16 + l] = Wt[(L.c0 + l % L.nc) * K + k];
  }
  const int64_t R = band_rows(g.H, g.N, g.kt, g.Wo * C * 4);
  const int64_t bands = (g.H + R - 1) / R, tasks = g.N * bands;
  struct Term {
    const float* row;
    int64_t d, tap;
  };
  const bool fused3 = g.kw == 3 && g.sw == 1;  // the interior from the (a, b) rows, three taps at a time
  // columns per chunk: a multiple of kU·P, ~2 KiB of grad_out per row (one chunk for a single lane group)
  const int64_t P0 = groups[0].P;
  const int64_t chunk = ng == 1 ? g.W : std::max<int64_t>(1, 512 / (C * kU)) * kU * P0;
  at::parallel_for(0, tasks, 1, [&](int64_t task0, int64_t task1) {
    std::vector<Term> rows, terms;
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t n = task / bands, hi0 = (task % bands) * R, hi1 = std::min(g.H, hi0 + R);
      for (int64_t ti = 0; ti < g.T; ++ti)
        for (int64_t hi = hi0; hi < hi1; ++hi) {
          float* out = GI + ((n * g.T + ti) * g.H + hi) * g.W * C;
          rows.clear();  // (grad_out row, tap of (a, b, 0))
          for (int64_t a = 0; a < g.kt; ++a) {
            const int64_t e = ti + g.pt - a;
            if (e < 0 || e % g.st) continue;
            const int64_t to = e / g.st;
            if (to >= g.To) continue;
            for (int64_t b = 0; b < g.kh; ++b) {
              const int64_t f = hi + g.ph - b;
              if (f < 0 || f % g.sh) continue;
              const int64_t ho = f / g.sh;
              if (ho >= g.Ho) continue;
              rows.push_back({GO + ((n * g.To + to) * g.Ho + ho) * g.Wo * C, 0, (a * g.kh + b) * g.kw});
            }
          }
          for (int64_t r = 0; r < std::min(g.sw, g.W); ++r) {
            const int64_t J = (g.W - r + g.sw - 1) / g.sw;  // input columns r + sw·j, j < J
            terms.clear();
            int64_t jlo = 0, jhi = J;
            for (int64_t c = 0; c < g.kw; ++c) {
              const int64_t e = r + g.pw - c;
              if (((e % g.sw) + g.sw) % g.sw) continue;
              const int64_t d = e / g.sw;  // exact
              jlo = std::max(jlo, -d);
              jhi = std::min(jhi, g.Wo - d);
              for (const Term& rw : rows) terms.push_back({rw.row, d, rw.tap + c});
            }
            jlo = std::min(jlo, J);
            jhi = std::max(jhi, jlo);
            const int64_t os = g.sw * C;  // output stride per j
            float* ob = out + r * C;
            // one pixel (nc lanes) of lane group gi with per-term range checks
            auto border = [&](int64_t gi, int64_t j) {
              const Lanes L = groups[gi];
              const float* wg = wtab.data() + gi * K * 16;
              v16 acc = splat(0.f);
              for (const Term& t : terms) {
                const int64_t wo = j + t.d;
                if (wo >= 0 && wo < g.Wo) acc += ld(wg + t.tap * 16) * ldm(t.row + wo * C + L.c0, L.nc);
              }
              stm(ob + j * os + L.c0, acc, L.nc);
            };
            // interior columns [j0, j1) of lane group gi: kU vectors (of P pixels) at a time, then single vectors
            auto interior = [&](int64_t gi, int64_t j0, int64_t j1) {
              const Lanes L = groups[gi];
              const int64_t P = L.P, nl = P * L.nc;
              const float* wg = wtab.data() + gi * K * 16;
              int64_t j = j0;
              if (fused3 && P == 1) {  // kw = 3, W stride 1: 4 columns from 6 grad_out loads per (a, b) row
                for (; j + kU <= j1; j += kU) {
                  v16 acc[kU];
                  for (int u = 0; u < kU; ++u) acc[u] = splat(0.f);
                  for (const Term& rw : rows) {
                    const float* wr = wg + rw.tap * 16;
                    const v16 w0 = ld(wr), w1 = ld(wr + 16), w2 = ld(wr + 32);
                    const float* q = rw.row + (j + g.pw - 2) * C + L.c0;  // grad_out column j + pw − 2
                    v16 v[kU + 2];
#pragma GCC unroll 6
                    for (int k = 0; k < kU + 2; ++k) v[k] = ldm(q + k * C, nl);
#pragma GCC unroll 4
                    for (int u = 0; u < kU; ++u) {
                      acc[u] += w0 * v[u + 2];
                      acc[u] += w1 * v[u + 1];
                      acc[u] += w2 * v[u];
                    }
                  }
#pragma GCC unroll 4
                  for (int u = 0; u < kU; ++u) stm(ob + (j + u) * C + L.c0, acc[u], nl);
                }
              } else if (fused3) {  // kw = 3, W stride 1, packed lanes: 3 loads per vector and (a, b) row
                for (; j + kU * P <= j1; j += kU * P) {
                  v16 acc[kU];
                  for (int u = 0; u < kU; ++u) acc[u] = splat(0.f);
                  for (const Term& rw : rows) {
                    const float* wr = wg + rw.tap * 16;
                    const v16 w0 = ld(wr), w1 = ld(wr + 16), w2 = ld(wr + 32);
                    const float* q = rw.row + (j + g.pw) * C + L.c0;  // grad_out column j + pw (tap 0)
#pragma GCC unroll 4
                    for (int u = 0; u < kU; ++u) {
                      const float* qu = q + u * P * C;
                      acc[u] += w0 * ldm(qu, nl);
                      acc[u] += w1 * ldm(qu - C, nl);
                      acc[u] += w2 * ldm(qu - 2 * C, nl);
                    }
                  }
#pragma GCC unroll 4
                  for (int u = 0; u < kU; ++u) stm(ob + (j + u * P) * C + L.c0, acc[u], nl);
                }
              }
              for (; j + kU * P <= j1; j += kU * P) {
                v16 acc[kU];
                for (int u = 0; u < kU; ++u) acc[u] = splat(0.f);
                for (const Term& t : terms) {
                  const v16 w = ld(wg + t.tap * 16);
                  const float* p = t.row + (j + t.d) * C + L.c0;
#pragma GCC unroll 4
                  for (int u = 0; u < kU; ++u) acc[u] += w * ldm(p + u * P * C, nl);
                }
#pragma GCC unroll 4
                for (int u = 0; u < kU; ++u) stm(ob + (j + u * P) * os + L.c0, acc[u], nl);
              }
              for (; j + P <= j1; j += P) {
                v16 acc = splat(0.f);
                for (const Term& t : terms) acc += ld(wg + t.tap * 16) * ldm(t.row + (j + t.d) * C + L.c0, nl);
                stm(ob + j * os + L.c0, acc, nl);
              }
              for (; j < j1; ++j) border(gi, j);
            };
            for (int64_t j = 0; j < jlo; ++j)
              for (int64_t gi = 0; gi < ng; ++gi) border(gi, j);
            // the interior in chunks of columns whose grad_out pixels (all lane groups) stay in L1
            for (int64_t j0 = jlo; j0 < jhi; j0 += chunk)
              for (int64_t gi = 0; gi < ng; ++gi) interior(gi, j0, std::min(jhi, j0 + chunk));
            for (int64_t j = jhi; j < J; ++j)
              for (int64_t gi = 0; gi < ng; ++gi) border(gi, j);
          }
        }
    }
  });
}

// A large tensor just allocated comes from fresh mmap'ed pages (glibc returns big blocks to the system on free):
// first-touch page faults of 4 KiB pages cost more than the kernel itself (~16 ms for 44 MB here). Asking for
// transparent huge pages (the usual "madvise" THP setting) makes that a few 2 MiB faults. Only a hint: no effect
// where THP is off or the memory is already mapped.
void advise_huge_pages(const torch::Tensor& t) {
#ifdef MADV_HUGEPAGE
  const uintptr_t huge = uintptr_t(2) << 20, begin = reinterpret_cast<uintptr_t>(t.data_ptr()),
                  end = begin + t.numel() * t.element_size();
  const uintptr_t a = (begin + huge - 1) & ~(huge - 1), b = end & ~(huge - 1);
  if (b > a + huge) madvise(reinterpret_cast<void*>(a), b - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

void check_cl(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 5 && t.scalar_type() == torch::kFloat32 && t.device().is_cpu(), name,
              ": expected a float32 CPU tensor B×C×T×H×W");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast3d), name, ": expected channels-last 3D memory");
}

}  // namespace

torch::Tensor fused_irb(const torch::Tensor& x, const torch::Tensor& we, const torch::Tensor& be,
                        const torch::Tensor& wd, const torch::Tensor& bd, const torch::Tensor& wp,
                        const torch::Tensor& bp, int64_t temporal_stride) {
  check_cl(x, "x");
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Ch = we.size(0), Cout = wp.size(0), kt = wd.dim() == 5 ? wd.size(2) : 0;
  TORCH_CHECK(we.numel() == Ch * Cin && wd.dim() == 5 && wd.size(0) == Ch && wd.size(1) == 1 && wd.size(3) == 3 &&
                  wd.size(4) == 3 && (kt == 1 || kt == 3) && wp.numel() == Cout * Ch && be.numel() == Ch &&
                  bd.numel() == Ch && bp.numel() == Cout,
              "fused_irb: weight shapes do not form an IRB (1×1×1, depthwise kt×3×3 with kt 1 or 3, 1×1×1)");
  for (const auto* w : {&we, &be, &wd, &bd, &wp, &bp}) TORCH_CHECK(w->scalar_type() == torch::kFloat32, "float32 weights");
  TORCH_CHECK(temporal_stride == 1 || (temporal_stride == 2 && kt == 3), "fused_irb: temporal stride 1, or 2 with kt=3");
  const int64_t To = (T + 2 * (kt / 2) - kt) / temporal_stride + 1;  // PyTorch's conv output length
  auto wec = we.contiguous(), bec = be.contiguous(), wdc = wd.contiguous(), bdc = bd.contiguous(),
       wpc = wp.contiguous(), bpc = bp.contiguous();
  auto y = torch::empty({B, Cout, To, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  auto fn = kt == 3 ? irb_impl<3> : irb_impl<1>;
  fn(x.data_ptr<float>(), y.data_ptr<float>(), B, Cin, T, To, temporal_stride, H, W, Ch, Cout, wec.data_ptr<float>(),
     bec.data_ptr<float>(), wdc.data_ptr<float>(), bdc.data_ptr<float>(), wpc.data_ptr<float>(),
     bpc.data_ptr<float>());
  return y;
}

torch::Tensor shuffle_up_add(const torch::Tensor& a, const torch::Tensor& i0, const torch::Tensor& i1,
                             const torch::Tensor& lam, const c10::optional<torch::Tensor>& add) {
  check_cl(a, "a");
  const int64_t B = a.size(0), C = a.size(1), T = a.size(2), h = a.size(3), w = a.size(4);
  TORCH_CHECK(C % 4 == 0, "shuffle_up_add: channels must be divisible by 4, got ", C);
  TORCH_CHECK(i0.scalar_type() == torch::kInt64 && i1.scalar_type() == torch::kInt64 && i0.dim() == 1 &&
                  i1.numel() == i0.numel() && lam.numel() == i0.numel(),
              "shuffle_up_add: i0, i1 (int64) and lam need one entry per output frame");
  const int64_t Co = C / 4, To = i0.numel(), H = 2 * h, W = 2 * w;
  auto I0 = i0.contiguous(), I1 = i1.contiguous(), LA = lam.to(torch::kFloat32).contiguous();
  const int64_t* pi0 = I0.data_ptr<int64_t>();
  const int64_t* pi1 = I1.data_ptr<int64_t>();
  for (int64_t t = 0; t < To; ++t)
    TORCH_CHECK(pi0[t] >= 0 && pi0[t] < T && pi1[t] >= 0 && pi1[t] < T, "shuffle_up_add: frame index out of range");
  auto out = torch::empty({B, Co, To, H, W}, a.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  const float* D = nullptr;
  torch::Tensor addc;
  if (add.has_value() && add->defined()) {
    check_cl(*add, "add");
    TORCH_CHECK(add->sizes() == out.sizes(), "shuffle_up_add: addend has shape ", add->sizes(), ", expected ",
                out.sizes());
    addc = *add;
    D = addc.data_ptr<float>();
  }
  const float* A = a.data_ptr<float>();
  const float* pl = LA.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, B * To * H, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // one output row
      const int64_t y = r % H, t = (r / H) % To, b = r / (H * To);
      const float l1 = pl[t], l0 = 1.0f - l1;
      const float* s0 = A + ((b * T + pi0[t]) * h + y / 2) * w * C + (y % 2) * 2;
      const float* s1 = A + ((b * T + pi1[t]) * h + y / 2) * w * C + (y % 2) * 2;
      float* o = O + r * W * Co;
      const float* d = D ? D + r * W * Co : nullptr;
      for (int64_t xs = 0; xs < w; ++xs)
        for (int64_t j = 0; j < 2; ++j) {
          float* oo = o + (2 * xs + j) * Co;
          const float* p0 = s0 + xs * C + j;
          const float* p1 = s1 + xs * C + j;
          if (d) {
            const float* dd = d + (2 * xs + j) * Co;
            for (int64_t c = 0; c < Co; ++c) oo[c] = (l0 * p0[4 * c] + l1 * p1[4 * c]) + dd[c];
          } else {
            for (int64_t c = 0; c < Co; ++c) oo[c] = l0 * p0[4 * c] + l1 * p1[4 * c];
          }
        }
    }
  });
  return out;
}

// 2x pixel shuffle of a channels-last tensor, frame by frame, in nn.PixelShuffle's order (output channel c at
// sub-pixel (i, j) is input channel 4c + 2i + j): B×4c×T×h×w -> B×c×T×2h×2w; with inverse=true the reverse
// permutation (the shuffle's gradient). Pure data movement: each element copied once, bit-exact. PyTorch's copy
// of the equivalent 7-D permuted view runs an inner loop of c (2..34) elements at stride 4; here a coarse row
// and its two fine rows are one task.
torch::Tensor pixel_shuffle2_cl(const torch::Tensor& x, bool inverse) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  int64_t c, h, w;  // the coarse side: 4c channels on h×w
  if (!inverse) {
    TORCH_CHECK(C % 4 == 0, "pixel_shuffle2_cl: channels must be divisible by 4, got ", C);
    c = C / 4, h = H, w = W;
  } else {
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0, "pixel_shuffle2_cl: inverse needs even H and W, got ", H, "x", W);
    c = C, h = H / 2, w = W / 2;
  }
  auto opts = x.options().memory_format(at::MemoryFormat::ChannelsLast3d);
  auto out = inverse ? torch::empty({B, 4 * c, T, h, w}, opts) : torch::empty({B, c, T, 2 * h, 2 * w}, opts);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * T * h, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // coarse row r = (b, t, ys): fine rows 2ys and 2ys + 1
      const int64_t ys = r % h, bt = r / h;
      for (int64_t i = 0; i < 2; ++i) {
        const int64_t fine_row = bt * 2 * h + 2 * ys + i;
        for (int64_t xs = 0; xs < w; ++xs)
          for (int64_t j = 0; j < 2; ++j) {
            const int64_t q = (r * w + xs) * 4 * c + 2 * i + j;  // coarse element of channel 0 (stride 4)
            const int64_t f = (fine_row * 2 * w + 2 * xs + j) * c;  // fine element of channel 0 (stride 1)
            if (!inverse)
              for (int64_t k = 0; k < c; ++k) dst[f + k] = src[q + 4 * k];
            else
              for (int64_t k = 0; k < c; ++k) dst[q + 4 * k] = src[f + k];
          }
      }
    }
  });
  return out;
}

// Input and weight gradients of F.conv3d(x, weight, stride, padding, groups=C) (no bias, dilation 1) for the given
// grad_out; returns {grad_input (channels-last 3D) or undefined, grad_weight (C×1×kt×kh×kw) or undefined}.
// Measured on the 2-core Zen4 dev machine (shared: other jobs were running, so times varied ±50%; ratios to
// oneDNN measured in the same process were stable), both gradients, vs torch.ops.aten.convolution_backward:
//   2×56×8×96×128,  k3, s1:     ours 47-76 ms, oneDNN 494-820 ms (2 threads); 1 thread, batch 1: 20-23 ms vs fwd 9-12
//   2×14×16×192×256, k3, s1:    ours 60-83 ms, oneDNN 302-990 ms
//   2×56×8×96×128, s(2,1,1): 30-44 ms vs 257-436; 2×96×8×96×128, s(1,2,2): 36-52 vs 343-655;
//   2×144×8×48×64, s(2,2,2): 10-17 vs 68-97; 2×4×16×192×256: 27-41 vs 140-212; 2×68×1×192×256: 16-20 vs 772-982
// i.e. about the time of oneDNN's forward and 7-40× faster than its backward. Of grad_input's time on large
// tensors a good part is first-touch page faults of the new tensor (see advise_huge_pages).
std::vector<torch::Tensor> dw_conv3d_backward(const torch::Tensor& x, const torch::Tensor& grad_out,
                                              const torch::Tensor& weight, std::vector<int64_t> stride,
                                              std::vector<int64_t> padding, bool need_input_grad,
                                              bool need_weight_grad) {
  for (const auto* tp : {&x, &grad_out, &weight}) {
    const char* name = tp == &x ? "x" : tp == &grad_out ? "grad_out" : "weight";
    TORCH_CHECK(tp->defined() && tp->device().is_cpu(), "dw_conv3d_backward: ", name, " must be a CPU tensor");
    TORCH_CHECK(tp->scalar_type() == torch::kFloat32, "dw_conv3d_backward: ", name, " must be float32, got ",
                tp->scalar_type());
    TORCH_CHECK(tp->dim() == 5, "dw_conv3d_backward: ", name, " must have 5 dimensions, got shape ", tp->sizes());
  }
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3, "dw_conv3d_backward: stride and padding need 3 entries, got ",
              stride.size(), " and ", padding.size());
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(stride[i] >= 1, "dw_conv3d_backward: stride must be ≥ 1, got ", c10::IntArrayRef(stride));
    TORCH_CHECK(padding[i] >= 0, "dw_conv3d_backward: padding must be ≥ 0, got ", c10::IntArrayRef(padding));
  }
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  TORCH_CHECK(weight.size(0) == C && weight.size(1) == 1,
              "dw_conv3d_backward: weight must be C×1×kt×kh×kw for a depthwise convolution with C = ", C,
              " channels, got weight shape ", weight.sizes());
  const int64_t kt = weight.size(2), kh = weight.size(3), kw = weight.size(4);
  TORCH_CHECK(kt >= 1 && kh >= 1 && kw >= 1, "dw_conv3d_backward: empty kernel ", weight.sizes());
  const int64_t To = (T + 2 * padding[0] - kt) / stride[0] + 1, Ho = (H + 2 * padding[1] - kh) / stride[1] + 1,
                Wo = (W + 2 * padding[2] - kw) / stride[2] + 1;
  TORCH_CHECK(T + 2 * padding[0] >= kt && H + 2 * padding[1] >= kh && W + 2 * padding[2] >= kw,
              "dw_conv3d_backward: kernel ", weight.sizes().slice(2), " larger than the padded input ", x.sizes(),
              " (padding ", c10::IntArrayRef(padding), ")");
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == C,
              "dw_conv3d_backward: grad_out has batch × channels ", grad_out.size(0), "×", grad_out.size(1),
              ", x has ", N, "×", C);
  TORCH_CHECK(grad_out.size(2) == To && grad_out.size(3) == Ho && grad_out.size(4) == Wo,
              "dw_conv3d_backward: grad_out size ", grad_out.sizes(), " does not match the output size [", N, ", ", C,
              ", ", To, ", ", Ho, ", ", Wo, "] of x ", x.sizes(), " with kernel ", weight.sizes().slice(2),
              ", stride ", c10::IntArrayRef(stride), ", padding ", c10::IntArrayRef(padding));
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  const DwGeom g{N, C, T, H, W, To, Ho, Wo, kt, kh, kw, stride[0], stride[1], stride[2], padding[0], padding[1],
                 padding[2]};
  auto goc = grad_out.contiguous(cl);
  torch::Tensor gi, gw;
  if (need_input_grad) {
    gi = torch::empty({N, C, T, H, W}, x.options().memory_format(cl));
    advise_huge_pages(gi);
    auto wc = weight.contiguous();
    if (gi.numel() > 0) dw_grad_input(g, goc.data_ptr<float>(), wc.data_ptr<float>(), gi.data_ptr<float>());
  }
  if (need_weight_grad) {
    gw = torch::zeros({C, 1, kt, kh, kw}, weight.options().memory_format(at::MemoryFormat::Contiguous));
    auto xc = x.contiguous(cl);
    if (goc.numel() > 0 && xc.numel() > 0) dw_grad_weight(g, xc.data_ptr<float>(), goc.data_ptr<float>(), gw.data_ptr<float>());
  }
  return {gi, gw};
}

// ---------------------------------------------------------------------------------------------------------------
// Training-mode BatchNorm (+ ReLU6) on channels-last activations, seen as an M×C row-major matrix (M = N·T·H·W).
//
// PyTorch's channels-last BatchNorm vectorises over channels, which is scalar code for the decoders' layers
// with 2-14 channels. Here the M·C floats are walked as rows of L = lcm(C, 16) floats (whole 16-float
// vectors: one AVX-512 register, two AVX2 ones; lane j holds channel j mod C), the per-lane sums are folded to
// channels at the end. Partial sums are kept per fixed chunk of rows (in double) and added in chunk order, so
// results do not depend on the number of threads.
//   bn_act_forward(x, weight, bias, eps, act)             -> [y, mean, biased var]
//   bn_act_backward(g, x, weight, bias, mean, invstd, act) -> [grad_x, grad_weight, grad_bias]
// with y = ReLU6(weight·(x − mean)/sqrt(var + eps) + bias) when act (no clamp otherwise).
// ---------------------------------------------------------------------------------------------------------------
namespace bn_detail {

constexpr int64_t kChunkRows = 1024;  // L-rows per partial sum

inline int64_t lanes_of(int64_t C) { return C * 16 / std::gcd<int64_t>(C, 16); }

void check_rows(const at::Tensor& t, const char* name, int64_t C) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == C, name, ": expected an M×", C, " matrix, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, ": expected float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous (row-major) M×C matrix");
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor");
}

void check_vec(const at::Tensor& t, const char* name, int64_t C) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, name, ": expected ", C, " values, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), name, ": expected a float32 CPU tensor");
}

// g' of the BN+ReLU6 backward: g where 0 < a·x + b < 6 (act), else 0.
inline float masked_grad(float g, float x, float a, float b, bool act) {
  if (!act) return g;
  const float y = x * a + b;
  return (y > 0.f && y < 6.f) ? g : 0.f;
}
inline v16 masked_grad(v16 g, v16 x, v16 a, v16 b, bool act) {  // the same, 16 lanes
  if (!act) return g;
  const v16 y = x * a + b, zero = splat(0.f);
  return (y > zero) & (y < splat(6.f)) ? g : zero;
}

// One float's share of the sums, lane j of flat index i (see lane_sums_rows for kind 0 and 1).
template <int kind>
inline void bn_term(const float* xp, const float* gp, int64_t i, int64_t j, const float* p0, const float* p1,
                    const float* p2, bool act, float* a0, float* a1) {
  if (kind == 0) {
    const float d = xp[i] - p0[j];
    a0[j] += d;
    a1[j] += d * d;
  } else {
    const float g = masked_grad(gp[i], xp[i], p0[j], p1[j], act);
    a0[j] += g;
    a1[j] += g * (xp[i] - p2[j]);
  }
}

// The same sums with the lane accumulators in registers, for L = 16·NV floats per row (NV ≤ 7: C = 1, 2, 4, 8,
// 16 → NV 1; 3, 6, 12, 24, 48 → 3; 7, 14, 28, 56, 112 → 7; ...). kind 0: Σ(x − shift), Σ(x − shift)²;
// kind 1: Σg', Σg'·(x − mean) with g' = g where 0 < a·x + b < 6 (act) else 0 — the BN+ReLU6 backward's sums.
template <int NV, int kind>
void lane_sums_rows(const float* xp, const float* gp, int64_t r0, int64_t r1, int64_t L, const float* p0,
                    const float* p1, const float* p2, bool act, double* out0, double* out1) {
  // GCC vector types, not AVX-512 intrinsics: the same code builds for AVX2 (two 8-lane halves per v16)
  v16 s0[NV], s1[NV], v0[NV], v1[NV], v2[NV];
  const v16 zero = splat(0.f);
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    s0[v] = s1[v] = zero;
    v0[v] = ld(p0 + 16 * v);
    v1[v] = kind == 1 ? ld(p1 + 16 * v) : zero;
    v2[v] = kind == 1 ? ld(p2 + 16 * v) : zero;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = xp + r * L;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const v16 x = ld(xr + 16 * v);
      if (kind == 0) {
        const v16 d = x - v0[v];
        s0[v] += d;
        s1[v] += d * d;
      } else {
        const v16 g = masked_grad(ld(gp + r * L + 16 * v), x, v0[v], v1[v], act);
        s0[v] += g;
        s1[v] += g * (x - v2[v]);   // centred: no cancellation with mean·Σg
      }
    }
  }
  for (int v = 0; v < NV; ++v)
    for (int j = 0; j < 16; ++j) {
      out0[16 * v + j] += s0[v][j];
      out1[16 * v + j] += s1[v][j];
    }
}

// Per-channel sums (double) for kind 0 (forward) or 1 (backward); chunks of kChunkRows rows, summed in order.
template <int kind>
void bn_sums(const float* xp, const float* gp, int64_t total, int64_t L, int64_t C, const float* p0,
             const float* p1, const float* p2, bool act, std::vector<double>& out0, std::vector<double>& out1) {
  const int64_t NV = L / 16, rows = total / L, tail = total - rows * L;
  const int64_t nchunks = (rows + kChunkRows - 1) / kChunkRows;
  std::vector<double> part0((nchunks + 1) * L, 0.0), part1((nchunks + 1) * L, 0.0);  // + the tail's
  // floats [i0, i0 + n) with bn_term, lane = offset mod L, into float lanes then o0/o1 (wide rows, the tail)
  auto scalar = [&](int64_t i0, int64_t n, double* o0, double* o1) {
    std::vector<float> a0(L, 0.f), a1(L, 0.f);
    for (int64_t base = i0; base < i0 + n; base += L) {
      const int64_t m = std::min(L, i0 + n - base);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) bn_term<kind>(xp, gp, base + j, j, p0, p1, p2, act, a0.data(), a1.data());
    }
    for (int64_t j = 0; j < L; ++j) {
      o0[j] += a0[j];
      o1[j] += a1[j];
    }
  };
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t r0 = ch * kChunkRows, r1 = std::min(rows, r0 + kChunkRows);
      double* o0 = part0.data() + ch * L;
      double* o1 = part1.data() + ch * L;
      switch (NV) {
#define BN_CASE(n) case n: lane_sums_rows<n, kind>(xp, gp, r0, r1, L, p0, p1, p2, act, o0, o1); break;
        BN_CASE(1) BN_CASE(2) BN_CASE(3) BN_CASE(4) BN_CASE(5) BN_CASE(6) BN_CASE(7)
#undef BN_CASE
        default: scalar(r0 * L, (r1 - r0) * L, o0, o1);  // wide rows (NV > 7): too many accumulators
      }
    }
  });
  scalar(rows * L, tail, part0.data() + nchunks * L, part1.data() + nchunks * L);  // the last total % L floats
  out0.assign(C, 0.0);
  out1.assign(C, 0.0);
  for (int64_t ch = 0; ch <= nchunks; ++ch)
    for (int64_t j = 0; j < L; ++j) {
      out0[j % C] += part0[ch * L + j];
      out1[j % C] += part1[ch * L + j];
    }
}

// Rows of the elementwise output passes: whole lane rows of at least 256 floats (for C = 1, 2, 4, 8, 16 a call
// per 16-float row cost more than its work: a 2×4×16×192×256 forward took 20 ms, 6 ms with these rows).
inline int64_t out_row(int64_t L) { return L * std::max<int64_t>(1, 256 / L); }

// Outputs larger than this (this CPU's L3) are written with non-temporal stores: they cannot stay in the cache
// for the next layer anyway, and streaming skips reading each cache line before overwriting it. A 2×14×16×192×256
// BN forward: 8.9 → 7.3 ms (median of 12, 2 threads).
constexpr int64_t kStreamBytes = int64_t(32) << 20;

inline void st_stream(float* p, v16 v) {  // p 64-byte aligned
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
  typedef float v8 __attribute__((vector_size(32)));
  v8 h[2];
  std::memcpy(h, &v, sizeof h);
  _mm256_stream_ps(p, (__m256)h[0]);
  _mm256_stream_ps(p + 8, (__m256)h[1]);
#else
  st(p, v);
#endif
}
inline void st_out(float* p, v16 v, bool stream) { stream ? st_stream(p, v) : st(p, v); }

// A fresh tensor like x (M×C floats), written in rows of Lo floats (the last one partial) by
// body(out, base, n, stream), which fills out[base, base + n): n == Lo for whole rows (64-byte aligned when
// stream is set, to be written with st_stream).
template <class Body>
at::Tensor map_rows(const at::Tensor& x, int64_t Lo, const Body& body) {
  at::Tensor out = at::empty_like(x);
  advise_huge_pages(out);  // first-touch faults of a fresh tensor cost as much as the pass itself
  float* op = out.data_ptr<float>();
  const int64_t total = x.numel(), rows = total / Lo;
  const bool stream = total * int64_t(sizeof(float)) > kStreamBytes && reinterpret_cast<uintptr_t>(op) % 64 == 0;
  at::parallel_for(0, rows + 1, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) body(op, r * Lo, std::min(Lo, total - r * Lo), stream);
    if (stream) _mm_sfence();  // this thread's streamed stores are visible before parallel_for returns
  });
  return out;
}

}  // namespace bn_detail

std::vector<at::Tensor> bn_act_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                       double eps, bool act) {
  using namespace bn_detail;
  TORCH_CHECK(x.dim() == 2, "bn_act_forward: x must be an M×C matrix, got ", x.sizes());
  const int64_t M = x.size(0), C = x.size(1);
  check_rows(x, "bn_act_forward: x", C);
  check_vec(weight, "bn_act_forward: weight", C);
  check_vec(bias, "bn_act_forward: bias", C);
  TORCH_CHECK(M >= 2, "bn_act_forward: need at least 2 values per channel, got ", M);
  const int64_t L = lanes_of(C), total = M * C;
  const float* xp = x.data_ptr<float>();
  std::vector<float> shiftL(L);
  for (int64_t j = 0; j < L; ++j) shiftL[j] = xp[j % C];  // row 0: a value of each channel
  const float* sh = shiftL.data();
  std::vector<double> s1, s2;
  bn_sums<0>(xp, nullptr, total, L, C, sh, nullptr, nullptr, act, s1, s2);
  at::Tensor mean = at::empty({C}, x.options()), var = at::empty({C}, x.options());
  const int64_t Lo = out_row(L);
  std::vector<float> aL(Lo), bL(Lo);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* vp = var.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double m = s1[c] / M, v = std::max(s2[c] / M - m * m, 0.0);
    mp[c] = static_cast<float>(m + shiftL[c]);
    vp[c] = static_cast<float>(v);
  }
  for (int64_t j = 0; j < Lo; ++j) {
    const int64_t c = j % C;
    const float a = w[c] / std::sqrt(vp[c] + static_cast<float>(eps));
    aL[j] = a;
    bL[j] = b[c] - mp[c] * a;
  }
  const float* ap = aL.data();
  const float* bp = bL.data();
  at::Tensor y = map_rows(x, Lo, [&](float* yp, int64_t base, int64_t n, bool stream) {
    if (n == Lo) {
      for (int64_t j = 0; j < Lo; j += 16) {
        const v16 v = ld(xp + base + j) * ld(ap + j) + ld(bp + j);
        st_out(yp + base + j, act ? relu6(v) : v, stream);
      }
    } else if (act) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yp[base + j] = std::min(std::max(xp[base + j] * ap[j] + bp[j], 0.f), 6.f);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yp[base + j] = xp[base + j] * ap[j] + bp[j];
    }
  });
  return {y, mean, var};
}

std::vector<at::Tensor> bn_act_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd,
                                        bool act) {
  using namespace bn_detail;
  TORCH_CHECK(x.dim() == 2, "bn_act_backward: x must be an M×C matrix, got ", x.sizes());
  const int64_t M = x.size(0), C = x.size(1);
  check_rows(x, "bn_act_backward: x", C);
  check_rows(grad_y, "bn_act_backward: grad_y", C);
  TORCH_CHECK(grad_y.size(0) == M, "bn_act_backward: grad_y has ", grad_y.size(0), " rows, x has ", M);
  check_vec(weight, "bn_act_backward: weight", C);
  check_vec(bias, "bn_act_backward: bias", C);
  check_vec(mean, "bn_act_backward: mean", C);
  check_vec(invstd, "bn_act_backward: invstd", C);
  const int64_t L = lanes_of(C), total = M * C;
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  const int64_t Lo = out_row(L);
  std::vector<float> aL(Lo), bL(Lo);
  for (int64_t j = 0; j < Lo; ++j) {
    const int64_t c = j % C;
    aL[j] = w[c] * ip[c];
    bL[j] = b[c] - mp[c] * aL[j];
  }
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_y.data_ptr<float>();
  const float* ap = aL.data();
  const float* bp = bL.data();
  std::vector<float> mL(L);
  for (int64_t j = 0; j < L; ++j) mL[j] = mp[j % C];
  std::vector<double> s1, sgx;   // Σ g', Σ g'·(x − mean)
  bn_sums<1>(xp, gp, total, L, C, ap, bp, mL.data(), act, s1, sgx);
  at::Tensor gw = at::empty({C}, x.options()), gb = at::empty({C}, x.options());
  float* gwp = gw.data_ptr<float>();
  float* gbp = gb.data_ptr<float>();
  std::vector<float> c2L(Lo), c3L(Lo);
  std::vector<double> c2(C), c3(C);
  for (int64_t c = 0; c < C; ++c) {
    const double inv = ip[c], s2 = inv * sgx[c];   // Σ g x̂
    gwp[c] = static_cast<float>(s2);
    gbp[c] = static_cast<float>(s1[c]);
    c2[c] = -w[c] * inv * inv * s2 / M;
    c3[c] = -c2[c] * mp[c] - w[c] * inv * s1[c] / M;
  }
  for (int64_t j = 0; j < Lo; ++j) {
    c2L[j] = static_cast<float>(c2[j % C]);
    c3L[j] = static_cast<float>(c3[j % C]);
  }
  const float* c2p = c2L.data();
  const float* c3p = c3L.data();
  at::Tensor gx = map_rows(x, Lo, [&](float* op, int64_t base, int64_t n, bool stream) {
    if (n == Lo) {
      for (int64_t j = 0; j < Lo; j += 16) {
        const v16 xv = ld(xp + base + j), a = ld(ap + j);
        const v16 g = masked_grad(ld(gp + base + j), xv, a, ld(bp + j), act);
        st_out(op + base + j, a * g + ld(c2p + j) * xv + ld(c3p + j), stream);
      }
      return;
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float xv = xp[base + j];
      const float g = masked_grad(gp[base + j], xv, ap[j], bp[j], act);
      op[base + j] = ap[j] * g + c2p[j] * xv + c3p[j];
    }
  });
  return {gx, gw, gb};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_irb", &fused_irb, "fused channels-last 3D inverted residual block (expand, depthwise, project)");
  m.def("shuffle_up_add", &shuffle_up_add, "2x pixel shuffle + 2x temporal interpolation + add, channels-last");
  m.def("pixel_shuffle2_cl", &pixel_shuffle2_cl, "2x pixel shuffle (or with inverse=True its inverse), channels-last",
        py::arg("x"), py::arg("inverse"));
  m.def("dw_conv3d_backward", &dw_conv3d_backward,
        "input and weight gradients of a channels-last depthwise Conv3d (no bias, dilation 1, zero padding)",
        py::arg("x"), py::arg("grad_out"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
        py::arg("need_input_grad"), py::arg("need_weight_grad"));
  m.def("bn_act_forward", &bn_act_forward,
        "training BatchNorm (+ ReLU6) of an M x C channels-last matrix: [y, mean, biased var]",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("act"));
  m.def("bn_act_backward", &bn_act_backward, "gradients of bn_act_forward: [grad_x, grad_weight, grad_bias]",
        py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("invstd"),
        py::arg("act"));
}
