// Native CPU kernel of fgkernels.token_bt_loss (math in fgkernels/token_bt_loss.py).
// Pairs are split over threads with at::parallel_for; per pair, one pass over each side
// gives (Σ_sel r, T) with an `omp simd` fp32 reduction, then the scalar loss, margin,
// accuracy and the two saved coefficients. The backward writes each side's gradient in one
// branch-free pass (bit select between the row weight and +0.0).
//
//   token_bt_loss_fwd(r_c [B,Tc], r_r [B,Tr], m_c, m_r, ch_c, ch_r (bool), bool changed_only)
//     -> (loss, margin, accuracy, coef_c = σ(−Δ)/max(T_c,1), coef_r = σ(−Δ)/max(T_r,1)), fp32 [B]
//   token_bt_loss_bwd(g fp32 [B] or [] (broadcast), float g_scale, coef_c, coef_r, m_c, m_r, ch_c,
//                     ch_r, bool changed_only, dtype)
//     -> (grad_c = sel_c ? −g_scale·g·coef_c : 0, grad_r = sel_r ? +g_scale·g·coef_r : 0), in dtype
//   (a "mean" reduction passes its scalar upstream gradient as g and 1/B as g_scale)
#include "fgk_common.h"

#include <bit>
#include <cmath>
#include <type_traits>

namespace {

// Pairs per parallel task: ~128K elements per task, so small batches run on one thread (an
// OpenMP hand-off costs more than the whole pass there, and far more on a busy machine).
inline int64_t row_grain(int64_t T) { return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(T, 1)); }

template <typename scalar_t>
using bits_of = std::conditional_t<sizeof(scalar_t) == 8, uint64_t,
                                   std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint16_t>>;

const uint8_t* bytes(const at::Tensor& t) { return reinterpret_cast<const uint8_t*>(t.const_data_ptr<bool>()); }

void check_side(const at::Tensor& r, const at::Tensor& m, const at::Tensor& c, int64_t B, const char* side) {
  TORCH_CHECK(r.dim() == 2 && r.size(0) == B, "token_bt_loss: r_", side, " must be [B, T] with B = ", B);
  TORCH_CHECK(m.sizes() == r.sizes() && c.sizes() == r.sizes(), "token_bt_loss: mask_", side, "/changed_", side,
              " must have shape ", r.sizes());
  TORCH_CHECK(m.scalar_type() == at::kBool && c.scalar_type() == at::kBool, "token_bt_loss: masks must be bool");
  TORCH_CHECK(r.is_contiguous() && m.is_contiguous() && c.is_contiguous(), "token_bt_loss: inputs must be contiguous");
  TORCH_CHECK(r.device().is_cpu() && m.device().is_cpu() && c.device().is_cpu(), "token_bt_loss: CPU tensors only");
}

// (Σ_t sel·r, Σ_t m) over one row, fp32; sel = m, or m ∧ c when kChangedOnly.
template <bool kChangedOnly, typename scalar_t>
inline std::pair<float, float> selected_row_sum(const scalar_t* r, const uint8_t* m, const uint8_t* c, int64_t T) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t s = 0, n = 0;
#pragma omp simd reduction(+ : s, n)
  for (int64_t t = 0; t < T; ++t) {
    const bool valid = m[t] != 0;
    const bool sel = kChangedOnly ? (valid && c[t] != 0) : valid;
    s += sel ? static_cast<opmath_t>(r[t]) : opmath_t(0);  // select: padding may hold NaN
    n += valid ? opmath_t(1) : opmath_t(0);
  }
  return {static_cast<float>(s), static_cast<float>(n)};
}

template <bool kChangedOnly, typename scalar_t>
void fwd_pairs(const scalar_t* rc, const scalar_t* rr, const uint8_t* mc, const uint8_t* mr, const uint8_t* cc,
               const uint8_t* cr, int64_t B, int64_t Tc, int64_t Tr, float* loss, float* margin, float* acc,
               float* coef_c, float* coef_r) {
  at::parallel_for(0, B, row_grain(Tc + Tr), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      // 1. selected sums and lengths of both sides
      const auto [s_c, n_c] = selected_row_sum<kChangedOnly>(rc + b * Tc, mc + b * Tc, cc + b * Tc, Tc);
      const auto [s_r, n_r] = selected_row_sum<kChangedOnly>(rr + b * Tr, mr + b * Tr, cr + b * Tr, Tr);
      // 2. margin; an empty side divides by 1 (its sum is 0)
      const float inv_c = 1.0f / std::max(n_c, 1.0f);
      const float inv_r = 1.0f / std::max(n_r, 1.0f);
      const float delta = s_c * inv_c - s_r * inv_r;
      // 3. softplus(−Δ) = max(−Δ, 0) + log1p(e^{−|Δ|}); σ(−Δ) from the same z = e^{−|Δ|}
      const float z = std::exp(-std::abs(delta));
      const float sig_neg = delta >= 0.0f ? z / (1.0f + z) : 1.0f / (1.0f + z);
      loss[b] = std::max(-delta, 0.0f) + std::log1p(z);
      margin[b] = delta;
      acc[b] = delta > 0.0f ? 1.0f : 0.0f;
      coef_c[b] = sig_neg * inv_c;
      coef_r[b] = sig_neg * inv_r;
    }
  });
}

// out[t] = sel[t] ? w : +0.0 for one row, as integer and/or on the bit patterns.
template <bool kChangedOnly, typename scalar_t>
inline void scatter_row(scalar_t w, const uint8_t* m, const uint8_t* c, int64_t T, scalar_t* out) {
  using bits_t = bits_of<scalar_t>;
  static_assert(sizeof(bits_t) == sizeof(scalar_t));
  const bits_t wb = std::bit_cast<bits_t>(w);
  bits_t* o = reinterpret_cast<bits_t*>(out);
#pragma omp simd
  for (int64_t t = 0; t < T; ++t) {
    const bool sel = kChangedOnly ? (m[t] != 0) & (c[t] != 0) : (m[t] != 0);
    o[t] = (bits_t(0) - bits_t(sel)) & wb;
  }
}

template <bool kChangedOnly, typename scalar_t>
void bwd_pairs(const float* g, int64_t g_stride, float g_scale, const float* coef_c, const float* coef_r, const uint8_t* mc, const uint8_t* mr,
               const uint8_t* cc, const uint8_t* cr, int64_t B, int64_t Tc, int64_t Tr, scalar_t* grad_c,
               scalar_t* grad_r) {
  at::parallel_for(0, B, row_grain(Tc + Tr), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      // ∂loss_b/∂r_c = −g_b·σ(−Δ_b)/T_c on selected tokens, ∂loss_b/∂r_r = +g_b·σ(−Δ_b)/T_r;
      // each row weight is rounded to the output dtype once.
      const float g_b = g_scale * g[b * g_stride];
      scatter_row<kChangedOnly>(static_cast<scalar_t>(-g_b * coef_c[b]), mc + b * Tc, cc + b * Tc, Tc,
                                grad_c + b * Tc);
      scatter_row<kChangedOnly>(static_cast<scalar_t>(g_b * coef_r[b]), mr + b * Tr, cr + b * Tr, Tr,
                                grad_r + b * Tr);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_bt_loss_fwd(
    const at::Tensor& r_c, const at::Tensor& r_r, const at::Tensor& m_c, const at::Tensor& m_r,
    const at::Tensor& ch_c, const at::Tensor& ch_r, bool changed_only) {
  const int64_t B = r_c.size(0);
  check_side(r_c, m_c, ch_c, B, "chosen");
  check_side(r_r, m_r, ch_r, B, "rejected");
  TORCH_CHECK(r_c.scalar_type() == r_r.scalar_type(), "token_bt_loss: r_chosen and r_rejected dtypes differ");
  const int64_t Tc = r_c.size(1), Tr = r_r.size(1);
  auto opts = r_c.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({B}, opts), margin = at::empty({B}, opts), acc = at::empty({B}, opts),
             coef_c = at::empty({B}, opts), coef_r = at::empty({B}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, r_c.scalar_type(), "token_bt_loss_fwd", [&] {
    auto run = [&](auto changed_tag) {
      fwd_pairs<decltype(changed_tag)::value, scalar_t>(
          r_c.const_data_ptr<scalar_t>(), r_r.const_data_ptr<scalar_t>(), bytes(m_c), bytes(m_r), bytes(ch_c),
          bytes(ch_r), B, Tc, Tr, loss.data_ptr<float>(), margin.data_ptr<float>(), acc.data_ptr<float>(),
          coef_c.data_ptr<float>(), coef_r.data_ptr<float>());
    };
    changed_only ? run(std::true_type{}) : run(std::false_type{});
  });
  return {loss, margin, acc, coef_c, coef_r};
}

std::tuple<at::Tensor, at::Tensor> token_bt_loss_bwd(const at::Tensor& g, double g_scale, const at::Tensor& coef_c,
                                                     const at::Tensor& coef_r, const at::Tensor& m_c,
                                                     const at::Tensor& m_r, const at::Tensor& ch_c,
                                                     const at::Tensor& ch_r, bool changed_only, at::ScalarType dtype) {
  const int64_t B = m_c.size(0);
  for (const at::Tensor* t : {&coef_c, &coef_r}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 1 && t->size(0) == B,
                "token_bt_loss_bwd: coef_c/coef_r must be contiguous fp32 [B]");
  }
  TORCH_CHECK(g.scalar_type() == at::kFloat && g.is_contiguous() &&
                  (g.dim() == 0 || (g.dim() == 1 && g.size(0) == B)),
              "token_bt_loss_bwd: grad_loss must be contiguous fp32 [] or [B]");
  const int64_t g_stride = g.dim() == 0 ? 0 : 1;
  TORCH_CHECK(m_r.dim() == 2 && m_r.size(0) == B, "token_bt_loss_bwd: mask_rejected must be [B, Tr]");
  for (const at::Tensor* t : {&m_c, &m_r, &ch_c, &ch_r}) {
    TORCH_CHECK(t->scalar_type() == at::kBool && t->is_contiguous(), "token_bt_loss_bwd: masks must be contiguous bool");
  }
  TORCH_CHECK(ch_c.sizes() == m_c.sizes() && ch_r.sizes() == m_r.sizes(), "token_bt_loss_bwd: mask shapes differ");
  const int64_t Tc = m_c.size(1), Tr = m_r.size(1);
  at::Tensor grad_c = at::empty({B, Tc}, m_c.options().dtype(dtype));
  at::Tensor grad_r = at::empty({B, Tr}, m_r.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "token_bt_loss_bwd", [&] {
    auto run = [&](auto changed_tag) {
      bwd_pairs<decltype(changed_tag)::value, scalar_t>(
          g.const_data_ptr<float>(), g_stride, static_cast<float>(g_scale), coef_c.const_data_ptr<float>(), coef_r.const_data_ptr<float>(), bytes(m_c),
          bytes(m_r), bytes(ch_c), bytes(ch_r), B, Tc, Tr, grad_c.data_ptr<scalar_t>(), grad_r.data_ptr<scalar_t>());
    };
    changed_only ? run(std::true_type{}) : run(std::false_type{});
  });
  return {grad_c, grad_r};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fgkernels, m) {
  m.def(
      "token_bt_loss_fwd(Tensor r_chosen, Tensor r_rejected, Tensor mask_chosen, Tensor mask_rejected, "
      "Tensor changed_chosen, Tensor changed_rejected, bool changed_only) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "token_bt_loss_bwd(Tensor grad_loss, float g_scale, Tensor coef_chosen, Tensor coef_rejected, Tensor mask_chosen, "
      "Tensor mask_rejected, Tensor changed_chosen, Tensor changed_rejected, bool changed_only, "
      "ScalarType dtype) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fgkernels, CPU, m) {
  m.impl("token_bt_loss_fwd", &token_bt_loss_fwd);
  m.impl("token_bt_loss_bwd", &token_bt_loss_bwd);
}

FGK_PYTHON_MODULE(_C_token_bt_loss)
