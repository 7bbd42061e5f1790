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

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_irb", &fused_irb, "fused channels-last 3D inverted residual block (expand, depthwise, project)");
  m.def("shuffle_up_add", &shuffle_up_add, "2x pixel shuffle + 2x temporal interpolation + add, channels-last");
}
