// condense's kernels for the packed int8 encoder (condense/quantize/onednn/encoder.py), for CPUs with AMX bf16:
//
// packed_attention: attention of sequences laid end to end in one packed q/k/v matrix, one (sequence, head) per
// task, both matmuls on oneDNN's batch-reduce GEMM micro-kernel (ATen's cpublas::brgemm), the softmax in between in
// float32 on AVX-512.
//
// Why not torch's scaled_dot_product_attention: its CPU flash kernel splits the queries of a sequence shorter than
// 192 tokens into blocks of 32 rows and calls a bf16 GEMM twice per block (1536 calls per layer for a batch of
// 32 texts with 12 heads), and needs sequences of one length per call (padding and a key mask otherwise). Here a
// sequence of up to 128 tokens is one q k^T call per 64 keys and one p v call, at its own length, with no mask.
//
// layer_norm_quantize: LayerNorm in place and, from the same pass over the row, its uint8 quantization for the
// next int8 matmul (SmoothQuant divisor and scale folded into one per-channel multiplier). In torch's ops that is
// three passes over the activations (layer_norm, mul, quantize_per_tensor).
//
// Built on first use by condense/quantize/onednn/native.py (torch.utils.cpp_extension), which checks both against
// torch before using them.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

using bf16 = at::BFloat16;
using Vec = at::vec::Vectorized<float>;
constexpr int64_t kPackN = 64;   // brgemm's packed B comes in column blocks of at most 64
constexpr int64_t kBlockM = 128; // query rows per brgemm call
constexpr int64_t kStep = 16;    // keys are padded (with zeros, outside the softmax) to a multiple of this

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// 2^t for t <= 0 (a softmax's exponents after subtracting the row max, in base 2): 2^n * p(f), n = round(t),
// f = t - n in [-0.5, 0.5], p the degree-4 Taylor polynomial of 2^f (relative error below 5e-5; the probabilities
// are rounded to bfloat16, 2e-3, before the second matmul). Below 2^-126 the result is 0.
inline __m512 exp2_neg(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(-126.f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(0.0096181291f);                  // ln2^4 / 24
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.0555041087f));  // ln2^3 / 6
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2402265070f));  // ln2^2 / 2
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471806f));  // ln2
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// brgemm's B operand for bf16 is in VNNI-2 layout: [K / 2][N][2] (pairs along K interleaved). native.py checks
// these writers against cpublas::pack (`vnni_layout_matches`) before the kernel is used.

// k^T (K = head dim, N = keys): per column block of kPackN keys (the last one `w` = what is left), 32-bit word m
// of key j (head dims 2m, 2m + 1) goes to word m * w + (j - block start). Keys from L to Lp are zero.
void pack_keys(const bf16* k, int64_t W, int64_t L, int64_t Lp, int64_t D, bf16* out) {
  uint32_t* dst_base = reinterpret_cast<uint32_t*>(out);
  const int64_t words = D / 2;
  for (int64_t j = 0; j < Lp; j++) {
    const int64_t c = j / kPackN * kPackN, w = std::min(kPackN, Lp - c);
    uint32_t* dst = dst_base + c * words + (j - c);
    if (j < L) {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(k + j * W);
      for (int64_t m = 0; m < words; m++) dst[m * w] = src[m];
    } else {
      for (int64_t m = 0; m < words; m++) dst[m * w] = 0;
    }
  }
}

// v (K = keys, N = head dim): rows j and j + 1 interleaved element by element; rows from L to Lp are zero.
void pack_values(const bf16* v, int64_t W, int64_t L, int64_t Lp, int64_t D, bf16* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24,
                                      55, 23, 54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  for (int64_t j = 0; j < Lp; j += 2) {
    bf16* dst = out + j * D;
    if (D == 32) {  // one 512-bit row each
      const __m512i a = j < L ? _mm512_loadu_si512(v + j * W) : _mm512_setzero_si512();
      const __m512i b = j + 1 < L ? _mm512_loadu_si512(v + (j + 1) * W) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(a, hi, b));
    } else {
      for (int64_t d = 0; d < D; d++) {
        dst[2 * d] = j < L ? v[j * W + d] : bf16(0.f);
        dst[2 * d + 1] = j + 1 < L ? v[(j + 1) * W + d] : bf16(0.f);
      }
    }
  }
}

// One row of scores s[0, L) -> p[0, Lp) = exp(scale * (s - max s)) in bfloat16 (zero past L); returns the sum of
// the float32 values, by which the row's output is divided.
float softmax_row(const float* s, int64_t L, int64_t Lp, float scale, bf16* p) {
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + Vec::size() <= L; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
  if (j < L) vmax = at::vec::maximum(vmax, Vec::set(vmax, Vec::loadu(s + j, L - j), L - j));
  const float mx = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  const float c = scale * 1.4426950408889634f;  // exp(scale (x - mx)) = 2^(c x - c mx)
  const __m512 vc = _mm512_set1_ps(c), shift = _mm512_set1_ps(mx * c);
  Vec sum(0.f);
  j = 0;
  for (; j + 2 * Vec::size() <= L; j += 2 * Vec::size()) {
    const Vec a(exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vc, shift)));
    const Vec b(exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + Vec::size()), vc, shift)));
    sum += a + b;
    at::vec::convert_from_float<bf16>(a, b).store(p + j);
  }
  for (; j < L; j += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), L - j);
    const Vec a = Vec::set(Vec(0.f), Vec(exp2_neg(_mm512_fmsub_ps(Vec::loadu(s + j, n), vc, shift))), n);
    sum += a;
    at::vec::convert_from_float<bf16>(a, Vec(0.f)).store(p + j, n);
  }
  std::fill(p + L, p + Lp, bf16(0.f));
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum);
}

}  // namespace

bool supported() { return at::native::cpublas::could_pack(at::kBFloat16); }

// qkv: (N, 3 * H * D) bfloat16, contiguous; sequence i's rows are [starts[i], starts[i] + lens[i]); columns are
// q | k | v, each head's D values adjacent. Returns (N, H * D) float32: per sequence and head,
// softmax(q k^T * scale) v. Rows no sequence covers are left uninitialised.
torch::Tensor packed_attention(const torch::Tensor& qkv, const torch::Tensor& starts, const torch::Tensor& lens,
                               int64_t H, int64_t D, double scale) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kBFloat16 && qkv.is_contiguous() && qkv.is_cpu(),
              "qkv must be a contiguous 2-D bfloat16 CPU tensor");
  TORCH_CHECK(H > 0 && qkv.size(1) == 3 * H * D, "qkv has ", qkv.size(1), " columns, expected 3 * H * D = ",
              3 * H * D);
  TORCH_CHECK(D % 16 == 0 && D > 0 && D <= kPackN, "head size must be 16, 32, 48 or 64, got ", D);
  const auto st = starts.to(at::kLong).contiguous();
  const auto ln = lens.to(at::kLong).contiguous();
  TORCH_CHECK(st.numel() == ln.numel(), "starts and lens differ in length");
  const int64_t S = st.numel(), N = qkv.size(0), W = 3 * H * D;
  const int64_t* sp = st.data_ptr<int64_t>();
  const int64_t* lp = ln.data_ptr<int64_t>();
  int64_t max_len = 1;
  for (int64_t i = 0; i < S; i++) {
    TORCH_CHECK(lp[i] > 0 && sp[i] >= 0 && sp[i] + lp[i] <= N, "sequence ", i, " (start ", sp[i], ", length ",
                lp[i], ") lies outside qkv's ", N, " rows");
    max_len = std::max(max_len, lp[i]);
  }
  auto out = torch::empty({N, H * D}, qkv.options().dtype(at::kFloat));
  const bf16* base = qkv.data_ptr<bf16>();
  float* o = out.data_ptr<float>();
  const int64_t Lmax = round_up(max_len, kStep);
  const float sc = static_cast<float>(scale);

  // tasks head-major (t = h * S + s): each thread's contiguous range of tasks then holds every length alike
  at::parallel_for(0, S * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<bf16> kpack(D * Lmax), vpack(Lmax * D), p(kBlockM * Lmax);
    std::vector<float> s(kBlockM * Lmax), acc(kBlockM * D), inv(kBlockM);
    for (int64_t t = begin; t < end; t++) {
      const int64_t h = t / S, i = t % S, L = lp[i], Lp = round_up(L, kStep);
      const bf16* q = base + sp[i] * W + h * D;
      pack_keys(q + H * D, W, L, Lp, D, kpack.data());
      pack_values(q + 2 * H * D, W, L, Lp, D, vpack.data());
      for (int64_t m0 = 0; m0 < L; m0 += kBlockM) {
        const int64_t M = std::min(kBlockM, L - m0);
        for (int64_t c = 0; c < Lp; c += kPackN) {  // s = q k^T, one column block of keys per call
          const int64_t w = std::min(kPackN, Lp - c);
          at::native::cpublas::brgemm(M, w, D, W, w, Lp, false, q + m0 * W, kpack.data() + c * D, s.data() + c);
        }
        for (int64_t r = 0; r < M; r++)
          inv[r] = 1.f / softmax_row(s.data() + r * Lp, L, Lp, sc, p.data() + r * Lp);
        at::native::cpublas::brgemm(M, D, Lp, Lp, D, D, false, p.data(), vpack.data(), acc.data());  // p v
        for (int64_t r = 0; r < M; r++) {
          const float f = inv[r];
          at::vec::map([f](Vec x) { return x * Vec(f); }, o + (sp[i] + m0 + r) * H * D + h * D,
                       acc.data() + r * D, D);
        }
      }
    }
    at::native::cpublas::brgemm_release();
  });
  return out;
}

// x: (N, C) float32, contiguous, overwritten with LayerNorm(x) (biased variance, `eps`, per-channel `weight` and
// `bias`). Returns (N, C) uint8: clamp(round_half_even(LN(x) * mul) + zero_point, 0, 255), `mul` (C,) float32 the
// per-channel multiplier (SmoothQuant's 1/s divided by the quantization scale). With `mul` empty, only the LayerNorm
// (an empty tensor is returned).
torch::Tensor layer_norm_quantize(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                  double eps, const torch::Tensor& mul, int64_t zero_point) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.is_cpu(),
              "x must be a contiguous 2-D float32 CPU tensor");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(C % Vec::size() == 0, "the number of channels must be a multiple of ", Vec::size(), ", got ", C);
  const auto w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  TORCH_CHECK(w.numel() == C && b.numel() == C, "weight and bias must have ", C, " values");
  const bool quantize = mul.numel() > 0;
  const auto m = quantize ? mul.to(at::kFloat).contiguous() : mul;
  TORCH_CHECK(!quantize || m.numel() == C, "mul must have ", C, " values");
  TORCH_CHECK(zero_point >= 0 && zero_point <= 255, "zero_point must be in 0..255, got ", zero_point);
  auto q = torch::empty({quantize ? N : 0, C}, x.options().dtype(at::kByte));
  float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  const float* mp = quantize ? m.data_ptr<float>() : nullptr;
  uint8_t* qp = q.data_ptr<uint8_t>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    const __m512i zp = _mm512_set1_epi32(static_cast<int>(zero_point)), zero = _mm512_setzero_si512();
    for (int64_t r = begin; r < end; r++) {
      float* row = xp + r * C;
      Vec sum(0.f);
      for (int64_t c = 0; c < C; c += Vec::size()) sum += Vec::loadu(row + c);
      const float mean = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum) / C;
      Vec sq(0.f);
      const Vec vmean(mean);
      for (int64_t c = 0; c < C; c += Vec::size()) {
        const Vec d = Vec::loadu(row + c) - vmean;
        sq = at::vec::fmadd(d, d, sq);
      }
      const float var = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sq) / C;
      const Vec rstd(1.f / std::sqrt(var + e));
      for (int64_t c = 0; c < C; c += Vec::size()) {
        const Vec y = at::vec::fmadd((Vec::loadu(row + c) - vmean) * rstd, Vec::loadu(wp + c), Vec::loadu(bp + c));
        y.store(row + c);
        if (quantize) {
          __m512i v = _mm512_cvtps_epi32(y * Vec::loadu(mp + c));  // round half to even (MXCSR default)
          v = _mm512_max_epi32(_mm512_add_epi32(v, zp), zero);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(qp + r * C + c), _mm512_cvtusepi32_epi8(v));  // saturates at 255
        }
      }
    }
  });
  return q;
}

// Whether pack_keys / pack_values write what cpublas::pack does for the same matrices (the layout brgemm reads).
bool vnni_layout_matches(int64_t L, int64_t D) {
  TORCH_CHECK(L > 0 && D % 16 == 0 && D > 0, "L must be positive and D a positive multiple of 16");
  const int64_t Lp = round_up(L, kStep), W = 3 * D;
  auto qkv = torch::randn({L, W}).to(at::kBFloat16).contiguous();
  const bf16* k = qkv.data_ptr<bf16>() + D;
  const bf16* v = qkv.data_ptr<bf16>() + 2 * D;
  std::vector<bf16> ours(Lp * D), ref(Lp * D + 64), plain(Lp * std::max<int64_t>(D, kPackN));
  pack_keys(k, W, L, Lp, D, ours.data());
  for (int64_t c = 0; c < Lp; c += kPackN) {
    const int64_t w = std::min(kPackN, Lp - c);
    for (int64_t d = 0; d < D; d++)
      for (int64_t j = 0; j < w; j++) plain[d * w + j] = c + j < L ? k[(c + j) * W + d] : bf16(0.f);
    at::native::cpublas::pack(D, w, w, w, at::kBFloat16, at::kBFloat16, plain.data(), ref.data() + c * D);
  }
  for (int64_t x = 0; x < Lp * D; x++)
    if (ours[x].x != ref[x].x) return false;
  pack_values(v, W, L, Lp, D, ours.data());
  for (int64_t j = 0; j < Lp; j++)
    for (int64_t d = 0; d < D; d++) plain[j * D + d] = j < L ? v[j * W + d] : bf16(0.f);
  at::native::cpublas::pack(Lp, D, D, D, at::kBFloat16, at::kBFloat16, plain.data(), ref.data());
  for (int64_t x = 0; x < Lp * D; x++)
    if (ours[x].x != ref[x].x) return false;
  return true;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether oneDNN's bf16 brgemm with packed B runs on this CPU (AMX)");
  m.def("packed_attention", &packed_attention, "attention of sequences laid end to end (see above)");
  m.def("vnni_layout_matches", &vnni_layout_matches, "the packers' layout equals cpublas::pack's");
  m.def("layer_norm_quantize", &layer_norm_quantize, "LayerNorm in place and its uint8 quantization (see above)");
}
