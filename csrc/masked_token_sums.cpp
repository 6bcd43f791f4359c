// Native CPU kernel of fgkernels.masked_token_sums (see fgkernels/masked_token_sums.py for
// the math). Rows are split over threads with at::parallel_for; within a row one pass
// accumulates four fp32 lanes (sum/count of changed and of unchanged valid tokens) with an
// `omp simd` reduction, which lets the compiler keep vector-wide partial sums.
//
//   masked_token_sums_fwd(rewards [B,T] float, mask [B,T] bool, changed [B,T] bool)
//     -> (sum, count, sum_changed, count_changed, sum_unchanged, count_unchanged), fp32 [B]
//   masked_token_sums_bwd(g_sum, g_changed, g_unchanged fp32 [B], mask, changed, dtype)
//     -> grad [B,T] in dtype: m ? (c ? g_sum+g_changed : g_sum+g_unchanged) : 0
#include "fgk_common.h"

#include <bit>
#include <type_traits>

namespace {

// Rows per parallel task: ~128K elements per task, so small batches run on one thread (an
// OpenMP hand-off costs more than the whole pass there, and far more on a busy machine).
inline int64_t row_grain(int64_t T) { return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(T, 1)); }

void check_inputs(const at::Tensor& mask, const at::Tensor& changed, const char* op) {
  TORCH_CHECK(mask.dim() == 2, op, ": mask must be 2-D, got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(changed.scalar_type() == at::kBool, op, ": changed must be bool, got ", changed.scalar_type());
  TORCH_CHECK(changed.sizes() == mask.sizes(), op, ": changed shape ", changed.sizes(), " != mask shape ",
              mask.sizes());
  TORCH_CHECK(mask.is_contiguous() && changed.is_contiguous(), op, ": mask/changed must be contiguous");
  TORCH_CHECK(mask.device().is_cpu() && changed.device().is_cpu(), op, ": CPU tensors only");
}

template <typename scalar_t>
void fwd_rows(const scalar_t* r, const uint8_t* m, const uint8_t* c, int64_t B, int64_t T, float* sum,
              float* cnt, float* sum_c, float* cnt_c, float* sum_u, float* cnt_u) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B, row_grain(T), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* rr = r + b * T;
      const uint8_t* mm = m + b * T;
      const uint8_t* cc = c + b * T;
      opmath_t s_c = 0, n_c = 0, s_u = 0, n_u = 0;
#pragma omp simd reduction(+ : s_c, n_c, s_u, n_u)
      for (int64_t t = 0; t < T; ++t) {
        // Selects, not products: a NaN in a padding slot must not reach the sums.
        const opmath_t x = mm[t] ? static_cast<opmath_t>(rr[t]) : opmath_t(0);
        const opmath_t valid = mm[t] ? opmath_t(1) : opmath_t(0);
        const bool ch = cc[t] != 0;
        s_c += ch ? x : opmath_t(0);
        n_c += ch ? valid : opmath_t(0);
        s_u += ch ? opmath_t(0) : x;
        n_u += ch ? opmath_t(0) : valid;
      }
      sum[b] = s_c + s_u;
      cnt[b] = n_c + n_u;
      sum_c[b] = s_c;
      cnt_c[b] = n_c;
      sum_u[b] = s_u;
      cnt_u[b] = n_u;
    }
  });
}

// Unsigned integer of the same width as scalar_t: the backward writes one of three bit
// patterns per token with integer and/or (branch-free, so it vectorises for every dtype).
template <typename scalar_t>
using bits_of = std::conditional_t<sizeof(scalar_t) == 8, uint64_t,
                                   std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint16_t>>;

template <typename scalar_t>
void bwd_rows(const float* gs, const float* gc, const float* gu, const uint8_t* m, const uint8_t* c, int64_t B,
              int64_t T, scalar_t* out) {
  using bits_t = bits_of<scalar_t>;
  static_assert(sizeof(bits_t) == sizeof(scalar_t));
  at::parallel_for(0, B, row_grain(T), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      // Each weight is rounded to the output dtype once per row, not once per token.
      const bits_t a_c = std::bit_cast<bits_t>(static_cast<scalar_t>(gs[b] + gc[b]));
      const bits_t a_u = std::bit_cast<bits_t>(static_cast<scalar_t>(gs[b] + gu[b]));
      const uint8_t* mm = m + b * T;
      const uint8_t* cc = c + b * T;
      bits_t* o = reinterpret_cast<bits_t*>(out + b * T);
#pragma omp simd
      for (int64_t t = 0; t < T; ++t) {
        const bits_t valid = bits_t(0) - bits_t(mm[t] != 0);  // all ones on valid tokens
        const bits_t ch = bits_t(0) - bits_t(cc[t] != 0);     // all ones on changed tokens
        o[t] = valid & ((ch & a_c) | (~ch & a_u));  // m ? (c ? a_c : a_u) : +0.0
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_token_sums_fwd(
    const at::Tensor& rewards, const at::Tensor& mask, const at::Tensor& changed) {
  check_inputs(mask, changed, "masked_token_sums_fwd");
  TORCH_CHECK(rewards.sizes() == mask.sizes(), "masked_token_sums_fwd: rewards shape ", rewards.sizes(),
              " != mask shape ", mask.sizes());
  TORCH_CHECK(rewards.is_contiguous(), "masked_token_sums_fwd: rewards must be contiguous");
  TORCH_CHECK(rewards.device().is_cpu(), "masked_token_sums_fwd: CPU tensors only");
  const int64_t B = rewards.size(0), T = rewards.size(1);
  auto opts = rewards.options().dtype(at::kFloat);
  at::Tensor sum = at::empty({B}, opts), cnt = at::empty({B}, opts), sum_c = at::empty({B}, opts),
             cnt_c = at::empty({B}, opts), sum_u = at::empty({B}, opts), cnt_u = at::empty({B}, opts);
  const auto* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const auto* c = reinterpret_cast<const uint8_t*>(changed.data_ptr<bool>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rewards.scalar_type(), "masked_token_sums_fwd", [&] {
    fwd_rows<scalar_t>(rewards.const_data_ptr<scalar_t>(), m, c, B, T, sum.data_ptr<float>(),
                       cnt.data_ptr<float>(), sum_c.data_ptr<float>(), cnt_c.data_ptr<float>(),
                       sum_u.data_ptr<float>(), cnt_u.data_ptr<float>());
  });
  return {sum, cnt, sum_c, cnt_c, sum_u, cnt_u};
}

at::Tensor masked_token_sums_bwd(const at::Tensor& g_sum, const at::Tensor& g_changed,
                                 const at::Tensor& g_unchanged, const at::Tensor& mask,
                                 const at::Tensor& changed, at::ScalarType dtype) {
  check_inputs(mask, changed, "masked_token_sums_bwd");
  const int64_t B = mask.size(0), T = mask.size(1);
  for (const at::Tensor* g : {&g_sum, &g_changed, &g_unchanged}) {
    TORCH_CHECK(g->scalar_type() == at::kFloat && g->is_contiguous() && g->dim() == 1 && g->size(0) == B,
                "masked_token_sums_bwd: upstream grads must be contiguous fp32 [B]");
  }
  at::Tensor grad = at::empty({B, T}, mask.options().dtype(dtype));
  const auto* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const auto* c = reinterpret_cast<const uint8_t*>(changed.data_ptr<bool>());
  const float* gs = g_sum.const_data_ptr<float>();
  const float* gc = g_changed.const_data_ptr<float>();
  const float* gu = g_unchanged.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "masked_token_sums_bwd", [&] {
    bwd_rows<scalar_t>(gs, gc, gu, m, c, B, T, grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fgkernels, m) {
  m.def(
      "masked_token_sums_fwd(Tensor rewards, Tensor mask, Tensor changed) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor)");
  m.def(
      "masked_token_sums_bwd(Tensor g_sum, Tensor g_changed, Tensor g_unchanged, Tensor mask, Tensor changed, "
      "ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(fgkernels, CPU, m) {
  m.impl("masked_token_sums_fwd", &masked_token_sums_fwd);
  m.impl("masked_token_sums_bwd", &masked_token_sums_bwd);
}

FGK_PYTHON_MODULE(_C_masked_token_sums)
