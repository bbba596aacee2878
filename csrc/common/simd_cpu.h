// Vector "ops" structs used by the CPU kernels, one per instruction set, all with
// the same interface (V, kLanes, Narrow, Zero, Set1, Add, Sub, Mul, Max, Fma, Load,
// Store, ReduceAdd, ReduceAdd8, and for float Gather, LoadN / StoreN, which touch
// only the first n < kLanes lanes' memory and load zeros into the others):
//   GenericOps<A>  plain loops over kLanes values of type A (float or double); the
//                  compiler vectorizes them for whatever target the caller has.
//   Avx2Ops        AVX2 + FMA + F16C, 8 floats.   (x86-64 GCC/Clang only)
//   Avx512Ops      AVX-512F, 16 floats.          (x86-64 GCC/Clang only)
// Loads convert float16/bfloat16 to float32 and stores round back, so the
// kernels accumulate half types in float32. Kernel templates that use the x86
// structs are compiled under the matching JAXSPARSE_TARGET_* attribute and chosen
// at run time with SelectedIsa(). No XLA types.
#ifndef JAXSPARSE_COMMON_SIMD_CPU_H_
#define JAXSPARSE_COMMON_SIMD_CPU_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/half_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JAXSPARSE_HAVE_X86_SIMD 1
#include <immintrin.h>
#else
#define JAXSPARSE_HAVE_X86_SIMD 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define JAXSPARSE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define JAXSPARSE_ALWAYS_INLINE inline
#endif

#define JAXSPARSE_TARGET_GENERIC
#define JAXSPARSE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define JAXSPARSE_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

namespace jaxsparse {
namespace cpu {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU supports, capped by the environment variable
// JAXSPARSE_CPU_ISA=generic|avx2|avx512 (for testing every path). Cached.
inline Isa SelectedIsa() {
  static const Isa isa = [] {
    Isa best = Isa::kGeneric;
#if JAXSPARSE_HAVE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      best = Isa::kAvx2;
      if (__builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
    }
#endif
    const char* env = std::getenv("JAXSPARSE_CPU_ISA");
    Isa cap = Isa::kAvx512;
    if (env != nullptr) {
      if (std::strcmp(env, "generic") == 0) cap = Isa::kGeneric;
      if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
    }
    return static_cast<int>(best) < static_cast<int>(cap) ? best : cap;
  }();
  return isa;
}

template <typename A>
struct GenericOps {
  static constexpr int kLanes = 8;
  // Whether kernels instantiate their fully unrolled, compile-time-width variants
  // (register-blocked attention, constant-d SDDMM) for this struct. Not for these
  // plain loops: GCC spends minutes per variant on them (their RTL passes grow
  // with the unrolled code), and they are the fallback (the baseline ISA and
  // float64), where the run-time-width kernels are fast enough.
  static constexpr bool kUnrolledKernels = false;
  using Narrow = GenericOps;  // the struct for rows of at most half a vector
  struct V {
    A x[kLanes];
  };
  static JAXSPARSE_ALWAYS_INLINE V Zero() {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = A(0);
    return v;
  }
  static JAXSPARSE_ALWAYS_INLINE V Set1(A a) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a;
    return v;
  }
  static JAXSPARSE_ALWAYS_INLINE V Add(const V& a, const V& b) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a.x[i] + b.x[i];
    return v;
  }
  static JAXSPARSE_ALWAYS_INLINE V Sub(const V& a, const V& b) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a.x[i] - b.x[i];
    return v;
  }
  static JAXSPARSE_ALWAYS_INLINE V Mul(const V& a, const V& b) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a.x[i] * b.x[i];
    return v;
  }
  // Per lane a > b ? a : b (b where a is NaN, as x86 max does with these operands).
  static JAXSPARSE_ALWAYS_INLINE V Max(const V& a, const V& b) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a.x[i] > b.x[i] ? a.x[i] : b.x[i];
    return v;
  }
  // a * b + c
  static JAXSPARSE_ALWAYS_INLINE V Fma(const V& a, const V& b, const V& c) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = a.x[i] * b.x[i] + c.x[i];
    return v;
  }
  template <typename T>
  static JAXSPARSE_ALWAYS_INLINE V Load(const T* p) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = ToAccum(p[i]);
    return v;
  }
  template <typename T>
  static JAXSPARSE_ALWAYS_INLINE void Store(T* p, const V& v) {
    for (int i = 0; i < kLanes; ++i) p[i] = FromAccum<T>(v.x[i]);
  }
  // p[idx[0]], ..., p[idx[kLanes - 1]]
  template <typename T>
  static JAXSPARSE_ALWAYS_INLINE V Gather(const T* p, const int32_t* idx) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = ToAccum(p[idx[i]]);
    return v;
  }
  template <typename T>
  static JAXSPARSE_ALWAYS_INLINE V LoadN(const T* p, int n) {
    V v;
    for (int i = 0; i < kLanes; ++i) v.x[i] = i < n ? ToAccum(p[i]) : A(0);
    return v;
  }
  template <typename T>
  static JAXSPARSE_ALWAYS_INLINE void StoreN(T* p, const V& v, int n) {
    for (int i = 0; i < n; ++i) p[i] = FromAccum<T>(v.x[i]);
  }
  static JAXSPARSE_ALWAYS_INLINE A ReduceAdd(const V& v) {
    A s = A(0);
    for (int i = 0; i < kLanes; ++i) s += v.x[i];
    return s;
  }
  // out[g] = ReduceAdd(v[g]) for g < 8 (the x86 structs share the shuffles).
  static JAXSPARSE_ALWAYS_INLINE void ReduceAdd8(const V* v, A* out) {
    for (int g = 0; g < 8; ++g) out[g] = ReduceAdd(v[g]);
  }
};

#if JAXSPARSE_HAVE_X86_SIMD

#define JAXSPARSE_AVX2_FN static JAXSPARSE_ALWAYS_INLINE JAXSPARSE_TARGET_AVX2
struct Avx2Ops {
  static constexpr int kLanes = 8;
  static constexpr bool kUnrolledKernels = true;
  using Narrow = Avx2Ops;
  using V = __m256;
  JAXSPARSE_AVX2_FN V Zero() { return _mm256_setzero_ps(); }
  JAXSPARSE_AVX2_FN V Set1(float a) { return _mm256_set1_ps(a); }
  JAXSPARSE_AVX2_FN V Add(V a, V b) { return _mm256_add_ps(a, b); }
  JAXSPARSE_AVX2_FN V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  JAXSPARSE_AVX2_FN V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  JAXSPARSE_AVX2_FN V Max(V a, V b) { return _mm256_max_ps(a, b); }
  JAXSPARSE_AVX2_FN V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  JAXSPARSE_AVX2_FN V Load(const float* p) { return _mm256_loadu_ps(p); }
  JAXSPARSE_AVX2_FN V Load(const Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  JAXSPARSE_AVX2_FN V Load(const BFloat16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  JAXSPARSE_AVX2_FN void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, n) as all-ones int32, for maskload / maskstore (no fault on the others).
  JAXSPARSE_AVX2_FN __m256i MaskN(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // Eight scalar loads put together, not vgatherdps: on the Zen 3 (microcoded
  // gathers) a stand-alone SpMV loop ran 1.3-1.7x faster so, the library's 0-10 %
  // (benchmarks/NOTES.md change 54).
  JAXSPARSE_AVX2_FN V Gather(const float* p, const int32_t* idx) {
    return _mm256_setr_ps(p[idx[0]], p[idx[1]], p[idx[2]], p[idx[3]], p[idx[4]], p[idx[5]],
                          p[idx[6]], p[idx[7]]);
  }
  JAXSPARSE_AVX2_FN V LoadN(const float* p, int n) { return _mm256_maskload_ps(p, MaskN(n)); }
  JAXSPARSE_AVX2_FN void StoreN(float* p, V v, int n) { _mm256_maskstore_ps(p, MaskN(n), v); }
  JAXSPARSE_AVX2_FN void Store(Half* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // Round to nearest even (x + 0x7fff + lsb) >> 16, NaN -> quiet NaN; the same bits
  // as FloatToBFloat16Bits.
  JAXSPARSE_AVX2_FN void Store(BFloat16* p, V v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(nan), is_nan));
    // 8 x uint32 (each <= 0xffff) -> 8 x uint16 in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  JAXSPARSE_AVX2_FN float ReduceAdd(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Eight sums at once: two rounds of hadd, then the 128-bit halves added.
  JAXSPARSE_AVX2_FN void ReduceAdd8(const V* v, float* out) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                        _mm256_permute2f128_ps(u0, u1, 0x31)));
  }
  // dst[c * ldd + r] = src[r * lds + c] for r, c < 8 (an 8 x 8 block transposed).
  JAXSPARSE_AVX2_FN void Transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
    }
    for (int h = 0; h < 8; h += 4) {  // rows 0-3, then 4-7: four columns per half
      r[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));      // col 0 | 4
      r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));  // col 1 | 5
      r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));  // 2 | 6
      r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));  // 3 | 7
    }
    for (int c = 0; c < 4; ++c) {
      _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
      _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
    }
  }
};
#undef JAXSPARSE_AVX2_FN

#define JAXSPARSE_AVX512_FN static JAXSPARSE_ALWAYS_INLINE JAXSPARSE_TARGET_AVX512
struct Avx512Ops {
  static constexpr int kLanes = 16;
  static constexpr bool kUnrolledKernels = true;
  // 8 columns or fewer: 256-bit vectors (one load uop each on CPUs that split 512-bit loads).
  using Narrow = Avx2Ops;
  using V = __m512;
  JAXSPARSE_AVX512_FN V Zero() { return _mm512_setzero_ps(); }
  JAXSPARSE_AVX512_FN V Set1(float a) { return _mm512_set1_ps(a); }
  JAXSPARSE_AVX512_FN V Add(V a, V b) { return _mm512_add_ps(a, b); }
  JAXSPARSE_AVX512_FN V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  JAXSPARSE_AVX512_FN V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  JAXSPARSE_AVX512_FN V Max(V a, V b) { return _mm512_max_ps(a, b); }
  JAXSPARSE_AVX512_FN V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  JAXSPARSE_AVX512_FN V Load(const float* p) { return _mm512_loadu_ps(p); }
  JAXSPARSE_AVX512_FN V Load(const Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  JAXSPARSE_AVX512_FN V Load(const BFloat16* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  JAXSPARSE_AVX512_FN void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  JAXSPARSE_AVX512_FN V Gather(const float* p, const int32_t* idx) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(idx), p, 4);
  }
  JAXSPARSE_AVX512_FN V LoadN(const float* p, int n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  JAXSPARSE_AVX512_FN void StoreN(float* p, V v, int n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  JAXSPARSE_AVX512_FN void Store(Half* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // As Avx2Ops::Store(BFloat16*): the same bits as FloatToBFloat16Bits.
  JAXSPARSE_AVX512_FN void Store(BFloat16* p, V v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  JAXSPARSE_AVX512_FN float ReduceAdd(V v) { return _mm512_reduce_add_ps(v); }
  // Eight sums at once (a transpose-and-add tree, 15 shuffles and 11 adds instead of
  // eight separate reductions): 256-bit halves of pairs, then 128-bit quarters of
  // pairs of pairs, then within each 128-bit lane.
  JAXSPARSE_AVX512_FN void ReduceAdd8(const V* v, float* out) {
    V t[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {  // 128-bit lanes of t[g]: v[2g] (0+2, 1+3), v[2g+1] (0+2, 1+3)
      t[g] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * g], v[2 * g + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * g], v[2 * g + 1], 0xEE));
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // 128-bit lane q of u holds the 4 partials of v[4h + q]
      const V u = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * h], t[2 * h + 1], 0x88),
                                _mm512_shuffle_f32x4(t[2 * h], t[2 * h + 1], 0xDD));
      V w = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));
      w = _mm512_add_ps(w, _mm512_permute_ps(w, 0xB1));
      const V r = _mm512_permutexvar_ps(
          _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), w);
      _mm_storeu_ps(out + 4 * h, _mm512_castps512_ps128(r));
    }
  }
};
#undef JAXSPARSE_AVX512_FN

#endif  // JAXSPARSE_HAVE_X86_SIMD

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_COMMON_SIMD_CPU_H_
