// The dense codecs' per-call work in one call each: the copy that 'none' sends, and the
// 16-bit casts of 'fp16' and 'bf16' with their overflow check fused in.
//
// Both take the plain case only, a non-empty contiguous CPU tensor that needs no grad
// (float32 for a cast; float32, float64, float16 or bfloat16 for the copy), and answer
// None for anything else, which the Python codec then handles with torch's ops: so one
// call both checks the input and does the work.
//
// flat_copy(x) is x copied into a flat tensor of its own: what x.ravel().clone() gives.
//
// cast_checked(x, bfloat16) writes x (contiguous float32, any shape) as a flat float16 or
// bfloat16 tensor, rounding to nearest even as PyTorch's x.to(dtype) does, and says in the
// same pass whether any entry came out inf or NaN (all exponent bits set). The Python codec
// then looks entry by entry only when it did (odtkit/compress/cast.py). uncast(payload,
// shape) is the receiver's widening back to float32, exact, written in the caller's shape.
//
// Like PyTorch's own cast and copy, a call splits a large tensor across torch's intra-op
// threads (at::parallel_for, torch's grain size); on one thread it is one loop.
//
// On x86-64 with AVX2 and F16C (checked at run time) eight or sixteen entries go per step:
// float16 by the F16C conversion instruction, which PyTorch's vectorized CPU cast also uses;
// bfloat16 by round to nearest even on the bits, as c10::BFloat16. Elsewhere, and for the
// tail, a scalar loop (c10::Half's conversion for float16). Payload bits equal
// x.to(dtype)'s for every non-NaN input. A NaN stays NaN: float16 as the instruction makes
// it; bfloat16 as 0xffff, what PyTorch's vectorized cast writes (its scalar tail writes
// 0x7fc0, so an input's last few NaN may differ from x.to(dtype) in the sign bit only).

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define ODTKIT_CAST_X86 1
#endif

namespace {

constexpr uint16_t kHalfExponent = 0x7c00;  // float16: all five exponent bits
constexpr uint16_t kBf16Exponent = 0x7f80;  // bfloat16: all eight

constexpr uint16_t kBf16Nan = 0xffff;  // as PyTorch's vectorized float -> bfloat16 cast

// float32 bits -> bfloat16 bits, round to nearest even; NaN -> kBf16Nan
inline uint16_t bf16_bits(uint32_t b) {
  if ((b & 0x7fffffffu) > 0x7f800000u) return kBf16Nan;
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

bool half_scalar(const float* x, uint16_t* out, int64_t n) {
  unsigned bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = c10::Half(x[i]).x;
    out[i] = h;
    bad |= (h & kHalfExponent) == kHalfExponent;
  }
  return bad != 0;
}

bool bf16_scalar(const float* x, uint16_t* out, int64_t n) {
  unsigned bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, sizeof b);
    const uint16_t h = bf16_bits(b);
    out[i] = h;
    bad |= (h & kBf16Exponent) == kBf16Exponent;
  }
  return bad != 0;
}

void widen_half_scalar(const uint16_t* p, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(c10::Half(p[i], c10::Half::from_bits()));
}

void widen_bf16_scalar(const uint16_t* p, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = static_cast<uint32_t>(p[i]) << 16;
    std::memcpy(out + i, &b, sizeof b);
  }
}

#ifdef ODTKIT_CAST_X86
__attribute__((target("avx2,f16c"))) bool half_avx2(const float* x, uint16_t* out, int64_t n) {
  const __m128i exponent = _mm_set1_epi16(static_cast<short>(kHalfExponent));
  __m128i bad = _mm_setzero_si128();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
    bad = _mm_or_si128(bad, _mm_cmpeq_epi16(_mm_and_si128(h, exponent), exponent));
  }
  return (_mm_movemask_epi8(bad) != 0) | half_scalar(x + i, out + i, n - i);
}

// eight float32 -> eight bfloat16 bit patterns in the low halves of 32-bit lanes
__attribute__((target("avx2"))) inline __m256i bf16_round8(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(kBf16Nan), nan);
}

__attribute__((target("avx2"))) bool bf16_avx2(const float* x, uint16_t* out, int64_t n) {
  const __m256i exponent = _mm256_set1_epi16(static_cast<short>(kBf16Exponent));
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i lo = bf16_round8(_mm256_loadu_ps(x + i));
    const __m256i hi = bf16_round8(_mm256_loadu_ps(x + i + 8));
    // packus interleaves the 128-bit halves of lo and hi; the permute puts them in order
    const __m256i h = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), h);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(_mm256_and_si256(h, exponent), exponent));
  }
  return (_mm256_movemask_epi8(bad) != 0) | bf16_scalar(x + i, out + i, n - i);
}

// eight 16-bit entries
inline __m128i load8(const uint16_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

__attribute__((target("avx2,f16c"))) void widen_half_avx2(const uint16_t* p, float* out,
                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(load8(p + i)));
  widen_half_scalar(p + i, out + i, n - i);
}

__attribute__((target("avx2"))) void widen_bf16_avx2(const uint16_t* p, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(load8(p + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_slli_epi32(w, 16));
  }
  widen_bf16_scalar(p + i, out + i, n - i);
}

bool has_avx2_f16c() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return yes;
}
#endif

}  // namespace

namespace {

// the bytes in memory are the values: a strided CPU tensor with no lazy negation or
// conjugation bit and real storage (not torch's zero tensor), contiguous, not empty
bool plain(const at::Tensor& x) {
  return x.defined() && x.layout() == at::kStrided && x.device().is_cpu() &&
         !x.requires_grad() && !x.is_neg() && !x.is_conj() && !x._is_zerotensor() &&
         x.numel() > 0 && x.is_contiguous();
}

}  // namespace

std::optional<std::tuple<at::Tensor, bool>> cast_checked(const at::Tensor& x, bool bfloat16) {
  if (!plain(x) || x.scalar_type() != at::kFloat) return std::nullopt;
  const int64_t n = x.numel();
  at::Tensor out = at::empty({n}, x.options().dtype(bfloat16 ? at::kBFloat16 : at::kHalf));
  const float* src = x.const_data_ptr<float>();
  auto* dst = static_cast<uint16_t*>(out.mutable_data_ptr());
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    const float* from = src + begin;
    uint16_t* to = dst + begin;
    const int64_t m = end - begin;
    bool found;
#ifdef ODTKIT_CAST_X86
    if (has_avx2_f16c())
      found = bfloat16 ? bf16_avx2(from, to, m) : half_avx2(from, to, m);
    else
#endif
      found = bfloat16 ? bf16_scalar(from, to, m) : half_scalar(from, to, m);
    if (found) bad.store(true, std::memory_order_relaxed);
  });
  return std::make_tuple(out, bad.load());
}

at::Tensor uncast(const at::Tensor& payload, at::IntArrayRef shape) {
  const bool bfloat16 = payload.scalar_type() == at::kBFloat16;
  TORCH_CHECK(payload.device().is_cpu() && payload.is_contiguous() &&
                  (bfloat16 || payload.scalar_type() == at::kHalf),
              "uncast takes a contiguous float16 or bfloat16 CPU tensor, got ",
              payload.scalar_type());
  at::Tensor out = at::empty(shape, payload.options().dtype(at::kFloat));
  TORCH_CHECK(out.numel() == payload.numel(), "uncast: shape ", shape, " holds ", out.numel(),
              " entries, the payload ", payload.numel());
  const auto* src = static_cast<const uint16_t*>(payload.const_data_ptr());
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, payload.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
#ifdef ODTKIT_CAST_X86
    if (has_avx2_f16c()) {
      bfloat16 ? widen_bf16_avx2(src + begin, dst + begin, end - begin)
               : widen_half_avx2(src + begin, dst + begin, end - begin);
      return;
    }
#endif
    bfloat16 ? widen_bf16_scalar(src + begin, dst + begin, end - begin)
             : widen_half_scalar(src + begin, dst + begin, end - begin);
  });
  return out;
}

std::optional<at::Tensor> flat_copy(const at::Tensor& x) {
  if (!plain(x)) return std::nullopt;
  const auto type = x.scalar_type();
  if (type != at::kFloat && type != at::kDouble && type != at::kHalf && type != at::kBFloat16)
    return std::nullopt;
  at::Tensor out = at::empty({x.numel()}, x.options());
  const auto* src = static_cast<const char*>(x.const_data_ptr());
  auto* dst = static_cast<char*>(out.mutable_data_ptr());
  const int64_t size = x.element_size();
  at::parallel_for(0, x.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    std::memcpy(dst + begin * size, src + begin * size, (end - begin) * size);
  });
  return out;
}
