// Times the CPU SpMM and SDDMM kernels directly (no JAX, no FFI handler), on a
// random topology, so kernel changes can be compared without the Python dispatch
// cost and with less noise than the end-to-end benchmarks. Build and run from the
// repository root (two builds of different sources give an A/B pair):
//
//   g++ -O3 -fno-trapping-math -std=c++17 -Icsrc benchmarks/micro/kernels_cpu.cc \
//       csrc/spmm/spmm_cpu.cc csrc/sddmm/sddmm_cpu.cc csrc/attention/attention_cpu.cc \
//       csrc/common/parallel_cpu.cc csrc/common/scan_cpu.cc -lpthread -o /tmp/kernels_cpu
//   /tmp/kernels_cpu spmm  M K N DENSITY [THREADS]    # C[M,N] = A[M,K] @ B[K,N]
//   /tmp/kernels_cpu spmm_nt M K N DENSITY [THREADS]  # C[N,M] = X[N,K] @ A[M,K]^T
//   /tmp/kernels_cpu sddmm M N D DENSITY [THREADS]    # (L[M,D] @ R[N,D]^T) at A's nonzeros
//   /tmp/kernels_cpu attn  T W D HEADS [THREADS [SEQ_MAJOR]]  # fused attention,
//       |row - col| <= W: forward, backward, each timed alone; SEQ_MAJOR = 1 lays the
//       operands out [T, HEADS, D] (the attention API's layout) instead of [HEADS, T, D]
//
// THREADS = 1 runs on the caller alone; > 1 uses the process-wide pool (the
// machine's cores). Prints the best of 5 repeats (each ~0.2 s of calls), in microseconds.
// JAXSPARSE_CPU_ISA=avx2|generic caps the instruction set as in the library.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "attention/attention_cpu.h"
#include "sddmm/sddmm_cpu.h"
#include "spmm/spmm_cpu.h"

using namespace jaxsparse::cpu;

namespace {

// 64-byte aligned, as XLA's CPU buffers are. (A large std::vector is mmap'ed by
// glibc 16 bytes past a page boundary, so every 64-byte vector load of it would
// split two cache lines: 1.6x slower kernels than under JAX, NOTES change 16.)
template <typename T>
struct AlignedArray {
  explicit AlignedArray(size_t n)
      : p(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))), size(n) {
    if (p == nullptr) std::abort();
  }
  ~AlignedArray() { std::free(p); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  T* begin() { return p; }
  T* end() { return p + size; }
  T* data() { return p; }
  T* p;
  size_t size;
};

struct Topo {
  std::vector<int32_t> offsets, cols, rows;
};

// Sets t->rows to the rows, longest first (as the library orders them).
void OrderLongestFirst(Topo* t) {
  const int m = static_cast<int>(t->offsets.size()) - 1;
  t->rows.resize(m);
  std::iota(t->rows.begin(), t->rows.end(), 0);
  std::stable_sort(t->rows.begin(), t->rows.end(), [&](int a, int b) {
    return t->offsets[a + 1] - t->offsets[a] > t->offsets[b + 1] - t->offsets[b];
  });
}

// Each entry present with probability `density`; rows ordered longest first.
Topo RandomTopo(int m, int k, double density, std::mt19937* rng) {
  std::uniform_real_distribution<double> u(0, 1);
  Topo t;
  t.offsets.assign(m + 1, 0);
  for (int r = 0; r < m; ++r) {
    for (int c = 0; c < k; ++c) {
      if (u(*rng) < density) t.cols.push_back(c);
    }
    t.offsets[r + 1] = static_cast<int32_t>(t.cols.size());
  }
  OrderLongestFirst(&t);
  return t;
}

// Best of 5 repeats of the mean time per call; each repeat makes enough calls to
// last about 0.2 s (at least 10), after a warm-up of 0.1 s.
template <typename F>
double BestMicros(F&& call) {
  using Clock = std::chrono::steady_clock;
  const auto w0 = Clock::now();
  int warm = 0;
  while (warm < 5 || Clock::now() - w0 < std::chrono::milliseconds(100)) {
    call();
    ++warm;
  }
  const double per_call = std::chrono::duration<double>(Clock::now() - w0).count() / warm;
  const int calls = std::max(10, static_cast<int>(0.2 / per_call));
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    for (int i = 0; i < calls; ++i) call();
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    best = std::min(best, us / calls);
  }
  return best;
}

// The fused attention forward and backward on a local window of half-width w over
// T positions (the pattern of benchmarks/bench_attention.py), `heads` batch entries,
// head dim d, float32.
int RunAttention(int T, int w, int d, int heads, bool seq_major, const TaskRunner* runner) {
  Topo t, tt;  // the window is symmetric: the transpose has the same rows
  t.offsets.assign(T + 1, 0);
  for (int r = 0; r < T; ++r) {
    for (int c = std::max(0, r - w); c <= std::min(T - 1, r + w); ++c) t.cols.push_back(c);
    t.offsets[r + 1] = static_cast<int32_t>(t.cols.size());
  }
  OrderLongestFirst(&t);
  tt = t;
  std::vector<int32_t> t_perm(t.cols.size());  // transposed position -> stored position
  for (int c = 0; c < T; ++c) {
    for (int e = tt.offsets[c]; e < tt.offsets[c + 1]; ++e) {
      const int r = tt.cols[e];
      t_perm[e] = t.offsets[r] + (c - std::max(0, r - w));
    }
  }
  const size_t rows = static_cast<size_t>(heads) * T;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  AlignedArray<float> q(rows * d), k(rows * d), v(rows * d), out(rows * d), g(rows * d);
  AlignedArray<float> dq(rows * d), dk(rows * d), dv(rows * d), lse(rows), delta(rows);
  for (auto* arr : {&q, &k, &v, &g}) {
    for (auto& x : *arr) x = normal(rng);
  }
  auto topo = [](const Topo& x, int n) {
    AttnTopology a;
    a.row_offsets = x.offsets.data();
    a.column_indices = x.cols.data();
    a.row_indices = x.rows.data();
    a.m = static_cast<int64_t>(x.rows.size());
    a.n = n;
    return a;
  };
  // Per head h: rows at h * T * d, stride d; or (seq_major) at h * d, stride heads * d.
  std::vector<int64_t> offsets(heads);
  for (int h = 0; h < heads; ++h) offsets[h] = static_cast<int64_t>(h) * (seq_major ? d : T * d);
  const int64_t ld = seq_major ? static_cast<int64_t>(heads) * d : d;
  auto in = [&](AlignedArray<float>& x) {
    return AttnRows<const float>{x.data(), offsets.data(), ld};
  };
  auto res = [&](AlignedArray<float>& x) { return AttnRows<float>{x.data(), offsets.data(), ld}; };
  AttnFwdArgs<float> f;
  f.topo = topo(t, T);
  f.q = in(q);
  f.k = in(k);
  f.v = in(v);
  f.out = res(out);
  f.lse = lse.data();
  f.batch = heads;
  f.d = f.dv = d;
  const double fwd_us = BestMicros([&] { AttentionFwdCpu(f, runner); });
  for (int h = 0; h < heads; ++h) {  // delta[r] = dout[r] . out[r]
    for (int r = 0; r < T; ++r) {
      const float* gr = g.data() + offsets[h] + r * ld;
      const float* outr = out.data() + offsets[h] + r * ld;
      double s = 0;
      for (int x = 0; x < d; ++x) s += static_cast<double>(gr[x]) * outr[x];
      delta.data()[static_cast<size_t>(h) * T + r] = static_cast<float>(s);
    }
  }
  AttnBwdArgs<float> b;
  b.topo = topo(t, T);
  b.t_topo = topo(tt, T);
  b.q = in(q);
  b.k = in(k);
  b.v = in(v);
  b.lse = lse.data();
  b.delta = delta.data();
  b.dout = in(g);
  b.t_perm = t_perm.data();
  b.lse_stride = b.delta_stride = T;
  b.dq = res(dq);
  b.dk = res(dk);
  b.dv_out = res(dv);
  b.batch = heads;
  b.d = b.dv = d;
  const double bwd_us = BestMicros([&] { AttentionBwdCpu(b, runner); });
  double bwd_min = 1e30;  // the fastest single call of 30: less noisy on a shared VM
  for (int i = 0; i < 30; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    AttentionBwdCpu(b, runner);
    bwd_min = std::min(bwd_min, std::chrono::duration<double, std::micro>(
                                    std::chrono::steady_clock::now() - t0).count());
  }
  const double flops = 4.0 * static_cast<double>(t.cols.size()) * d * heads;  // QK^T and PV
  std::printf("attn T=%d w=%d d=%d heads=%d%s nnz/head=%zu: forward %.1f us (%.1f useful GFLOP/s), "
              "backward %.1f us (%.1f; fastest call %.1f us)\n", T, w, d, heads,
              seq_major ? " [T, heads, d]" : "", t.cols.size(),
              fwd_us, flops / fwd_us / 1e3, bwd_us, 2 * flops / bwd_us / 1e3, bwd_min);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 6 && std::strcmp(argv[1], "attn") == 0) {
    const int threads = argc > 6 ? std::atoi(argv[6]) : 1;
    return RunAttention(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]),
                        std::atoi(argv[5]), argc > 7 && std::atoi(argv[7]) != 0,
                        threads > 1 ? DefaultTaskRunner() : nullptr);
  }
  const bool nt = std::strcmp(argv[1], "spmm_nt") == 0;
  if (argc < 6 || (std::strcmp(argv[1], "spmm") != 0 && !nt && std::strcmp(argv[1], "sddmm") != 0)) {
    std::fprintf(stderr,
                 "usage: %s spmm|spmm_nt M K N DENSITY [THREADS] | sddmm M N D DENSITY [THREADS] | "
                 "attn T W D HEADS [THREADS]\n",
                 argv[0]);
    return 2;
  }
  const bool spmm = nt || std::strcmp(argv[1], "spmm") == 0;
  const int m = std::atoi(argv[2]), k = std::atoi(argv[3]), w = std::atoi(argv[4]);
  const double density = std::atof(argv[5]);
  const int threads = argc > 6 ? std::atoi(argv[6]) : 1;
  const TaskRunner* runner = threads > 1 ? DefaultTaskRunner() : nullptr;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  const Topo t = RandomTopo(m, k, density, &rng);
  const size_t nnz = t.cols.size();
  double us = 0, flops = 0;
  if (spmm) {
    AlignedArray<float> values(nnz), b(static_cast<size_t>(k) * w), c(static_cast<size_t>(m) * w);
    for (auto& x : values) x = normal(rng);
    for (auto& x : b) x = normal(rng);
    SpmmArgs<float> a;
    a.values = values.data();
    a.row_offsets = t.offsets.data();
    a.column_indices = t.cols.data();
    a.row_indices = t.rows.data();
    a.dense = b.data();
    a.out = c.data();
    a.batch = 1;
    a.m = m;
    a.k = k;
    a.n = w;
    us = BestMicros([&] { nt ? SpmmNtCpu(a, runner) : SpmmCpu(a, runner); });
  } else {
    AlignedArray<float> lhs(static_cast<size_t>(m) * w), rhs(static_cast<size_t>(k) * w), out(nnz);
    for (auto& x : lhs) x = normal(rng);
    for (auto& x : rhs) x = normal(rng);
    SddmmArgs<float> a;
    a.lhs = lhs.data();
    a.rhs = rhs.data();
    a.row_offsets = t.offsets.data();
    a.column_indices = t.cols.data();
    a.row_indices = t.rows.data();
    a.out = out.data();
    a.batch = 1;
    a.m = m;
    a.d = w;
    a.cap = static_cast<int64_t>(nnz);
    us = BestMicros([&] { SddmmCpu(a, runner); });
  }
  flops = 2.0 * static_cast<double>(nnz) * w;
  std::printf("%s m=%d %s=%d %s=%d nnz=%zu threads=%d: %.1f us (%.1f useful GFLOP/s)\n", argv[1], m,
              spmm ? "k" : "n", k, spmm ? "n" : "d", w, nnz, threads, us, flops / us / 1e3);
  return 0;
}
