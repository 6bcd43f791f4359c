// Native CPU kernel of fgkernels.gae: generalised advantage estimation as one reversed
// pass per row (see fgkernels/gae.py for the math and the Python-side contract).
//
//   v_next_t = m_{t+1} V_{t+1}                 (0 at t = T-1 and past the last valid token)
//   delta_t  = r_t + gamma v_next_t - V_t
//   A_t      = m_t (delta_t + gamma lam A_{t+1}),   A_T = 0
//   ret_t    = m_t (A_t + V_t)
//
// "m_t x" is a select (m_t ? x : 0), not a multiply, so garbage (inf/NaN) in padded
// positions never leaks into valid ones.
//
// Speed: every input element is read once and every output written once (17 B/element for
// fp32 inputs), walking each row from its end to its start; at::parallel_for splits rows.
// The loop-carried chain A_{t+1} -> A_t is one multiply, one add and one AND per element
// (~1.4 ns/element on the 2-core EPYC dev box), which two threads turn into more bytes/s
// than half the copy bandwidth. Measured alternatives that were slower and why:
//   * walking 4-16 rows in lock-step (to overlap chain latencies): when T is a multiple of
//     1024 (the usual padded length) rows are 4 KiB apart, so a load of row j+1 falsely
//     aliases the store of row j at the same column and the chains serialise (8x slower);
//   * column tiles with a vectorised delta pass + interleaved chain pass: the tile-by-tile
//     backward walk defeats the hardware prefetcher, and without -mavx2 the passes gain little;
//   * blocking by K with a local suffix scan (A = Bcum + Ccum * carry): more work per element
//     than the latency it hides at -march=x86-64.
#include "fgk_common.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace {

// m ? x : 0. A select, not a multiply, so inf/NaN in padding stays out. Written as a
// ternary on purpose: GCC turns it into a well-predicted branch / cmov (one mispredict per
// row for a prefix mask); a bitwise AND on the float's bits puts two GPR<->XMM moves into
// the loop-carried chain and measured 3x slower.
template <typename T>
inline T keep_if(uint8_t m, T x) {
  return m ? x : T(0);
}

// One row of length T, from its end to its start.
template <typename r_t, typename v_t, typename acc_t>
inline void gae_row(const r_t* __restrict R, const v_t* __restrict V, const uint8_t* __restrict M,
                    float* __restrict A, float* __restrict RET, int64_t T, acc_t gamma, acc_t gamma_lam) {
  acc_t adv = acc_t(0);     // A_{t+1}  (A_T = 0)
  acc_t v_next = acc_t(0);  // m_{t+1} V_{t+1}  (0 at t = T-1)
  for (int64_t t = T - 1; t >= 0; --t) {
    const uint8_t m = M[t];
    const acc_t v = static_cast<acc_t>(V[t]);
    const acc_t delta = static_cast<acc_t>(R[t]) + gamma * v_next - v;
    adv = keep_if(m, delta + gamma_lam * adv);
    v_next = keep_if(m, v);
    A[t] = static_cast<float>(adv);
    RET[t] = static_cast<float>(keep_if(m, adv + v));
  }
}

template <typename r_t, typename v_t>
void gae_kernel(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask,
                at::Tensor& adv, at::Tensor& ret, double gamma, double lam) {
  using acc_t = at::opmath_type<r_t>;
  const int64_t B = rewards.size(0);
  const int64_t T = rewards.size(1);
  const r_t* R = rewards.const_data_ptr<r_t>();
  const v_t* V = values.const_data_ptr<v_t>();
  const uint8_t* M = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
  float* A = adv.data_ptr<float>();
  float* RET = ret.data_ptr<float>();
  const acc_t g = static_cast<acc_t>(gamma);
  const acc_t gl = static_cast<acc_t>(gamma * lam);

  // Tasks of >= 256K elements (~0.35 ms): below that, waking a second thread saves less
  // than it risks (on a shared 2-core box a preempted worker costs a scheduler tick, ~8 ms).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, T));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b * T;
      gae_row<r_t, v_t, acc_t>(R + o, V + o, M + o, A + o, RET + o, T, g, gl);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gae_fwd(const at::Tensor& rewards, const at::Tensor& values,
                                           const at::Tensor& mask, double gamma, double lam) {
  TORCH_CHECK(rewards.dim() == 2, "gae_fwd: rewards must be [B, T], got ", rewards.sizes());
  TORCH_CHECK(values.sizes() == rewards.sizes(), "gae_fwd: values ", values.sizes(),
              " must match rewards ", rewards.sizes());
  TORCH_CHECK(mask.sizes() == rewards.sizes(), "gae_fwd: mask ", mask.sizes(), " must match rewards ",
              rewards.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "gae_fwd: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(rewards.is_contiguous() && values.is_contiguous() && mask.is_contiguous(),
              "gae_fwd: inputs must be contiguous");
  TORCH_CHECK(rewards.device().is_cpu() && values.device().is_cpu() && mask.device().is_cpu(),
              "gae_fwd: CPU tensors only");
  TORCH_CHECK(gamma >= 0.0 && gamma <= 1.0, "gae_fwd: gamma must be in [0, 1], got ", gamma);
  TORCH_CHECK(lam >= 0.0 && lam <= 1.0, "gae_fwd: lam must be in [0, 1], got ", lam);

  // One [2, B, T] allocation, returned as two contiguous views: with glibc malloc, two
  // separate multi-MiB outputs are often handed back to the OS between calls (the heap top
  // exceeds the dynamic trim threshold), so every call pays a page fault per 4 KiB of output
  // (~9 ms for B=512, T=4096 on the dev box, 4x the kernel); one block stays in the heap.
  // The views keep the shared block alive together, which costs nothing when both are used.
  at::Tensor out = at::empty({2, rewards.size(0), rewards.size(1)}, rewards.options().dtype(at::kFloat));
  at::Tensor adv = out.select(0, 0);
  at::Tensor ret = out.select(0, 1);
  if (rewards.numel() == 0) {
    return {adv, ret};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rewards.scalar_type(), "gae_fwd_r", [&] {
    using r_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, values.scalar_type(), "gae_fwd_v", [&] {
      using v_t = scalar_t;
      gae_kernel<r_t, v_t>(rewards, values, mask, adv, ret, gamma, lam);
    });
  });
  return {adv, ret};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fgkernels, m) {
  // GAE has no backward: its outputs are regression / policy-gradient targets.
  m.def("gae_fwd(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fgkernels, CPU, m) { m.impl("gae_fwd", &gae_fwd); }

FGK_PYTHON_MODULE(_C_gae)
