// token_logprobs: native CPU kernel (the math is in fgkernels/token_logprobs.py).
//
// Rows r = 0..N-1 of logits z [N, V] (N = B*T), s = z / tau:
//   forward : lse_r = logsumexp(s_r), logp_r = min(s_r[label_r] - lse_r, 0),
//             H_r = -sum_v p_v (s_v - lse_r) = log S - (sum_v e_v d_v) / S
//             with d_v = s_v - max(s), e_v = exp(d_v), S = sum_v e_v.
//   backward: grad_z_j = ( g_lp (1[j=label] - p_j) - g_H p_j (s_j - lse + H) ) / tau,
//             p_j = exp(s_j - lse); zero rows where label == ignore_index.
// Only lse and H ([N] fp32) are saved between the two; [N, V] fp32 is never materialised.
//
// Vectorisation. ATen's at::vec::Vectorized<float> is compiled for the build's
// CPU_CAPABILITY; this extension is built with plain -O3 (no -mavx2, no ATen dispatch), so
// there Vectorized<float>::exp() is the generic per-lane std::exp loop, and GCC does not
// if-convert a scalar polynomial exp with clamps (-fopt-info-vec: "control flow in loop").
// So the inner loops are written with GCC vector types (16 fp32 lanes) around a
// branch-free polynomial exp, and every whole-row loop is compiled three times with
// `target_clones` (x86-64-v4 = AVX-512, v3 = AVX2+FMA, baseline SSE2); the dynamic loader
// picks the clone for the running CPU (ifunc). Checked with objdump: the v4 clones run on zmm.
#include "fgk_common.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FGK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FGK_CLONES
#endif
// Helpers called from the clones must be inlined into them to be compiled for their ISA.
#define FGK_INLINE inline __attribute__((always_inline))

constexpr float kMinArg = -1.0e30f;  // -inf logits are clamped to this finite value so that
                                     // exp() -> 0 and 0 * (s - lse) -> 0, never 0 * inf = NaN.

// 16 fp32 lanes as a GCC vector type: each clone lowers it to 1 zmm (AVX-512), 2 ymm
// (AVX2) or 4 xmm (SSE2) registers, so the code below is vectorised by construction.
#pragma GCC diagnostic ignored "-Wpsabi"  // vf values only cross always_inline helpers
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int64_t kW = 16;

FGK_INLINE vf vsplat(float a) { return vf{} + a; }
FGK_INLINE vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// The n < kW trailing elements, padded with `pad`.
FGK_INLINE vf vload_tail(const float* p, int64_t n, float pad) {
  alignas(64) float tmp[kW];
  for (int64_t j = 0; j < kW; ++j) tmp[j] = j < n ? p[j] : pad;
  return vload(tmp);
}
FGK_INLINE vf vmax(vf a, vf b) { return a < b ? b : a; }
FGK_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int64_t j = 0; j < kW; ++j) s += v[j];
  return s;
}

// exp(x) for x <= 88 (Cephes expf: 2^n * P(r), |r| <= ln2/2, ~1 ulp); exactly 0 below
// ln(FLT_MIN) (and for -inf). Branch-free.
FGK_INLINE vf vexp(vf x) {
  const vf lo = vsplat(-87.33654475f), hi = vsplat(88.0f);
  const vi under = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf t = x * 1.44269504088896341f + 0.5f;
  vf fx = __builtin_convertvector(__builtin_convertvector(t, vi), vf);
  fx = fx > t ? fx - 1.0f : fx;  // floor(t) = round(x log2 e)
  vf r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  const vf r2 = r * r;
  vf y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  const vi bits = (__builtin_convertvector(fx, vi) + 127) << 23;  // 2^n
  const vf res = y * std::bit_cast<vf>(bits);
  return under ? vf{} : res;
}

FGK_CLONES float row_max(const float* x, int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  vf a0 = vsplat(ninf), a1 = a0;
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    a0 = vmax(a0, vload(x + i));
    a1 = vmax(a1, vload(x + i + kW));
  }
  for (; i < n; i += kW) a0 = vmax(a0, vload_tail(x + i, std::min(kW, n - i), ninf));
  a0 = vmax(a0, a1);
  float m = ninf;
  for (int64_t j = 0; j < kW; ++j) m = m < a0[j] ? a0[j] : m;
  return m;
}

// S = sum_v e_v and (if WithEnt) Tm = sum_v e_v d_v, with d_v = (x_v - shift) * scale, e_v = exp(d_v).
template <bool WithEnt>
FGK_INLINE void sumexp_step(vf xv, vf shift, float scale, vf& s, vf& t) {
  vf d = (xv - shift) * scale;
  d = d < kMinArg ? vsplat(kMinArg) : d;
  const vf e = vexp(d);
  s += e;
  if constexpr (WithEnt) t += e * d;
}

template <bool WithEnt>
FGK_INLINE void sumexp_impl(const float* x, int64_t n, float shift, float scale, float* S, float* Tm) {
  const vf sh = vsplat(shift);
  vf s0{}, s1{}, t0{}, t1{};
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    sumexp_step<WithEnt>(vload(x + i), sh, scale, s0, t0);
    sumexp_step<WithEnt>(vload(x + i + kW), sh, scale, s1, t1);
  }
  for (; i < n; i += kW)
    sumexp_step<WithEnt>(vload_tail(x + i, std::min(kW, n - i), -std::numeric_limits<float>::infinity()), sh,
                         scale, s0, t0);
  *S = hsum(s0 + s1);
  *Tm = hsum(t0 + t1);
}

FGK_CLONES void row_sumexp(const float* x, int64_t n, float shift, float scale, float* S, float* Tm) {
  sumexp_impl<false>(x, n, shift, scale, S, Tm);
}

FGK_CLONES void row_sumexp_ent(const float* x, int64_t n, float shift, float scale, float* S, float* Tm) {
  sumexp_impl<true>(x, n, shift, scale, S, Tm);
}

// out_j = -scale * p_j * (g_lp + g_H * (d_j + H)), d_j = x_j * scale - lse, p_j = exp(d_j).
// (The one-hot term g_lp * scale at the label is added by the caller.) out may alias x.
FGK_INLINE vf grad_step(vf xv, float scale, float lse, float H, float g_lp, float g_H) {
  vf d = xv * scale - lse;
  d = d < kMinArg ? vsplat(kMinArg) : d;
  const vf p = vexp(d);
  return (-scale) * p * (g_lp + g_H * (d + H));
}

FGK_CLONES void row_grad(const float* x, float* out, int64_t n, float scale, float lse, float H, float g_lp,
                         float g_H) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const vf o = grad_step(vload(x + i), scale, lse, H, g_lp, g_H);
    std::memcpy(out + i, &o, sizeof o);
  }
  if (i < n) {
    const vf o = grad_step(vload_tail(x + i, n - i, 0.0f), scale, lse, H, g_lp, g_H);
    for (int64_t j = 0; j < n - i; ++j) out[i + j] = o[j];
  }
}

FGK_CLONES void bf16_to_f32(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(static_cast<uint32_t>(src[i]) << 16);
}

// Round to nearest even, NaN kept NaN (same as c10::BFloat16's conversion).
FGK_CLONES void f32_to_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = std::bit_cast<uint32_t>(src[i]);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    dst[i] = static_cast<uint16_t>(src[i] != src[i] ? 0x7FC0u : rounded);
  }
}

// Row <-> fp32 scratch. fp32 rows are used in place (no copy).
template <typename scalar_t>
const float* load_row(const scalar_t* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    bf16_to_f32(reinterpret_cast<const uint16_t*>(src), buf, n);
    return buf;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    return buf;
  }
}

template <typename scalar_t>
void store_row(const float* buf, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    f32_to_bf16(buf, reinterpret_cast<uint16_t*>(dst), n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(buf[i]);
  }
}

// One row of the backward into out (logits.dtype). fp32: written in place; other dtypes:
// computed in the fp32 scratch `buf` (which may hold x itself) and rounded once.
template <typename scalar_t>
void grad_row(const float* x, scalar_t* out, float* buf, int64_t V, int64_t label, float scale, float lse,
              float H, float g_lp, float g_H) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    row_grad(x, out, V, scale, lse, H, g_lp, g_H);
    out[label] += g_lp * scale;
  } else {
    row_grad(x, buf, V, scale, lse, H, g_lp, g_H);
    buf[label] += g_lp * scale;
    store_row(buf, out, V);
  }
}

int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)); }

void check_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.device().is_cpu() && labels.device().is_cpu(), "token_logprobs: CPU tensors expected");
  TORCH_CHECK(logits.dim() == 2, "token_logprobs: logits must be [N, V], got ", logits.sizes());
  TORCH_CHECK(logits.size(1) > 0, "token_logprobs: V must be > 0");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), "token_logprobs: labels must be [N]");
  TORCH_CHECK(labels.scalar_type() == at::kLong, "token_logprobs: labels must be int64");
  TORCH_CHECK(logits.is_contiguous() && labels.is_contiguous(), "token_logprobs: contiguous inputs expected");
}

// Returns (logp [N] fp32, lse [N] fp32, entropy [N] fp32; entropy is [0] unless with_entropy).
std::tuple<at::Tensor, at::Tensor, at::Tensor> token_logprobs_fwd(const at::Tensor& logits,
                                                                   const at::Tensor& labels,
                                                                   double inv_temperature, int64_t ignore_index,
                                                                   bool with_entropy) {
  check_inputs(logits, labels);
  const int64_t N = logits.size(0), V = logits.size(1);
  auto fopts = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({N}, fopts);
  at::Tensor lse = at::empty({N}, fopts);
  at::Tensor ent = at::empty({with_entropy ? N : 0}, fopts);
  const float scale = static_cast<float>(inv_temperature);
  const int64_t* lab = labels.data_ptr<int64_t>();
  float* logp_p = logp.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  float* ent_p = with_entropy ? ent.data_ptr<float>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_fwd", [&] {
    const scalar_t* z = logits.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_rows(V), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(std::is_same_v<scalar_t, float> ? 0 : V);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t label = lab[r];
        if (label == ignore_index) {  // 1. ignored position: outputs 0, no work
          logp_p[r] = 0.0f;
          lse_p[r] = 0.0f;
          if (with_entropy) ent_p[r] = 0.0f;
          continue;
        }
        TORCH_CHECK(label >= 0 && label < V, "token_logprobs: label ", label, " out of range [0, ", V, ")");
        // 2. the row in fp32 (in place for fp32 logits)
        const float* x = load_row(z + r * V, buf.data(), V);
        // 3. pass 1: max;  pass 2: S = sum exp(d), Tm = sum exp(d) d, d = (x - max) / tau
        const float xmax = row_max(x, V);
        float S, Tm;
        if (with_entropy)
          row_sumexp_ent(x, V, xmax, scale, &S, &Tm);
        else
          row_sumexp(x, V, xmax, scale, &S, &Tm);
        const float logS = std::log(S);  // S >= 1 (the max term is exp(0) = 1), so logS >= 0
        lse_p[r] = xmax * scale + logS;
        // 4. logp = d_label - log S; d_label <= 0 and log S >= 0 make it <= 0 already, the
        //    clamp is the documented contract (its gradient is passed straight through)
        logp_p[r] = std::min((x[label] - xmax) * scale - logS, 0.0f);
        if (with_entropy) ent_p[r] = logS - Tm / S;  // H = -sum p (d - logS) = logS - Tm / S
      }
    });
  });
  return {logp, lse, ent};
}

// grad_logits [N, V] in logits.dtype. grad_entropy / entropy are ignored (may be empty)
// unless with_entropy.
at::Tensor token_logprobs_bwd(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                              const at::Tensor& entropy, const at::Tensor& grad_logp,
                              const at::Tensor& grad_entropy, double inv_temperature, int64_t ignore_index,
                              bool with_entropy) {
  check_inputs(logits, labels);
  const int64_t N = logits.size(0), V = logits.size(1);
  auto check_row = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == N && t.is_contiguous(),
                "token_logprobs_bwd: ", name, " must be contiguous fp32 [N]");
  };
  check_row(lse, "lse");
  check_row(grad_logp, "grad_logp");
  if (with_entropy) {
    check_row(entropy, "entropy");
    check_row(grad_entropy, "grad_entropy");
  }
  at::Tensor grad = at::empty_like(logits);
  const float scale = static_cast<float>(inv_temperature);
  const int64_t* lab = labels.data_ptr<int64_t>();
  const float* lse_p = lse.data_ptr<float>();
  const float* glp_p = grad_logp.data_ptr<float>();
  const float* ent_p = with_entropy ? entropy.data_ptr<float>() : nullptr;
  const float* gH_p = with_entropy ? grad_entropy.data_ptr<float>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_bwd", [&] {
    const scalar_t* z = logits.data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_rows(V), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(std::is_same_v<scalar_t, float> ? 0 : V);
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* out = g + r * V;
        const int64_t label = lab[r];
        if (label == ignore_index) {  // zero gradient on ignored positions
          std::memset(static_cast<void*>(out), 0, sizeof(scalar_t) * V);
          continue;
        }
        TORCH_CHECK(label >= 0 && label < V, "token_logprobs: label ", label, " out of range [0, ", V, ")");
        const float* x = load_row(z + r * V, buf.data(), V);
        const float g_lp = glp_p[r];
        const float g_H = with_entropy ? gH_p[r] : 0.0f;
        const float H = with_entropy ? ent_p[r] : 0.0f;
        // grad_j = -p_j (g_lp + g_H (s_j - lse + H)) / tau, plus g_lp / tau at the label.
        grad_row(x, out, buf.data(), V, label, scale, lse_p[r], H, g_lp, g_H);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fgkernels, m) {
  m.def(
      "token_logprobs_fwd(Tensor logits, Tensor labels, float inv_temperature, int ignore_index, "
      "bool with_entropy) -> (Tensor, Tensor, Tensor)");
  m.def(
      "token_logprobs_bwd(Tensor logits, Tensor labels, Tensor lse, Tensor entropy, Tensor grad_logp, "
      "Tensor grad_entropy, float inv_temperature, int ignore_index, bool with_entropy) -> Tensor");
}

TORCH_LIBRARY_IMPL(fgkernels, CPU, m) {
  m.impl("token_logprobs_fwd", &token_logprobs_fwd);
  m.impl("token_logprobs_bwd", &token_logprobs_bwd);
}

FGK_PYTHON_MODULE(_C_token_logprobs)
