"""Every CPU kernel on the instruction set forced by JAXSPARSE_CPU_ISA (run by
test_fused_attention.test_other_instruction_sets in a subprocess, since the ISA is
chosen once per process). Compares spmm, sddmm, their tokens-major forms (spmm_nt,
sddmm_tn), sparse_softmax and fused attention
(forward with a mask against the oracle; gradients with a mask and dropout against
the unfused path) with float64 numpy oracles in float32, float64 and
bfloat16, on shapes that hit the vector paths and their scalar tails. Prints
"all ok" or raises."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import jaxsparse as js  # noqa: E402  (the caller puts the tested package on PYTHONPATH)
from jaxsparse import testing as T  # noqa: E402
from jaxsparse._src.sddmm import sddmm_tn as sddmm_tn_fn  # noqa: E402
from jaxsparse._src.spmm import spmm_nt as spmm_nt_fn  # noqa: E402


def attention_oracle(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("qhd,khd->hqk", q / math.sqrt(q.shape[-1]), k)
  s = np.where(mask, s, -np.inf)
  mx = s.max(-1, keepdims=True)
  e = np.exp(s - np.where(np.isfinite(mx), mx, 0))
  tot = e.sum(-1, keepdims=True)
  return np.einsum("hqk,khd->qhd", e / np.where(tot > 0, tot, 1), v)


# Jitted, so each call compiles one program (eager, every op of the wrappers would).
spmm = jax.jit(js.spmm)
sddmm = jax.jit(lambda lhs, rhs, a: js.sddmm(lhs, rhs, a).values)
softmax = jax.jit(lambda a: js.sparse_softmax(a).values)
spmm_nt = jax.jit(spmm_nt_fn)
sddmm_tn = jax.jit(lambda lhs, rhs, a: sddmm_tn_fn(lhs, rhs, a).values)
sdpa = jax.jit(js.sparse_dot_product_attention)


def main():
  assert js.has_kernels("cpu"), "built without CPU kernels"
  isa = js.cpu_instruction_set()
  wanted = os.environ.get("JAXSPARSE_CPU_ISA")
  assert wanted is None or isa == wanted, f"asked for {wanted}, the kernels run {isa}"
  rng = np.random.default_rng(1)
  for dtype in (np.float32, np.float64, jnp.bfloat16):
    for n in (1, 5, 20):  # the gathered SpMV, narrow vectors, a masked last vector
      a = T.random_csr(rng, 9, 200, 0.3, dtype=dtype)
      b = jnp.asarray(rng.standard_normal((200, n)), dtype)
      want, scale = T.spmm_oracle(a, b)
      T.assert_close(spmm(a, b), want, scale, dtype, f"spmm n={n} {isa}")
    for m, k, n in ((37, 45, 19), (64, 80, 128), (5, 300, 33), (21, 200, 64)):
      a = T.random_csr(rng, m, k, 0.3, dtype=dtype)
      b = jnp.asarray(rng.standard_normal((k, n)), dtype)
      want, scale = T.spmm_oracle(a, b)
      T.assert_close(spmm(a, b), want, scale, dtype, f"spmm {isa}")
      lhs = jnp.asarray(rng.standard_normal((m, n)), dtype)
      rhs = jnp.asarray(rng.standard_normal((k, n)), dtype)
      vals, scale = T.sddmm_oracle(lhs, rhs, a)
      T.assert_close(sddmm(lhs, rhs, a), vals, scale, dtype, f"sddmm {isa}")
      # Tokens major: x [n, k] @ a.T (8 x 8 transposed blocks and their edges), and
      # the SDDMM of lhs.T [m, n] and rhs.T [k, n] over tiles of n.
      T.assert_close(sddmm_tn(lhs.T, rhs.T, a), vals, scale, dtype, f"sddmm_tn {isa}")
      want, scale = T.spmm_oracle(a, b)
      T.assert_close(spmm_nt(a, b.T), want.T, scale.T, dtype, f"spmm_nt {isa}")
      if dtype == jnp.bfloat16:  # vector bf16 stores: the same bits as XLA's rounding
        ref = spmm(a.with_values(a.values.astype(np.float32)), b.astype(np.float32))
        assert np.array_equal(np.asarray(spmm(a, b)).view(np.uint16),
                              np.asarray(ref.astype(dtype)).view(np.uint16)), f"bf16 {isa}"
      sm = softmax(a)
      T.assert_close(sm, T.softmax_oracle(a), np.ones(a.nnz), dtype, f"softmax {isa}")
    # AVX2 float32: 8, 2, 5 vectors, 3 with a partial last (register-blocked); 7 and
    # 80 (10 vectors) on the wide kernels. float64 and the baseline: generic.
    for d in (64, 16, 40, 20, 7, 80):
      t = 40
      mask = rng.random((t, t)) < 0.3
      mask[5] = False
      topo = js.CSR.from_mask(mask)
      q, kk, v = (jnp.asarray(rng.standard_normal((t, 2, d)), dtype) for _ in range(3))
      out = sdpa(q, kk, v, topo)
      keep = rng.random((t, t)) < 0.7       # a mask read by the fused kernel
      out_m = sdpa(q, kk, v, topo, mask=keep)
      tol = T.tolerance(dtype) * (1 + d) * 4
      np.testing.assert_allclose(np.asarray(out, np.float64), attention_oracle(q, kk, v, mask),
                                 rtol=tol, atol=tol * 4, err_msg=f"attention {isa} d={d}")
      np.testing.assert_allclose(np.asarray(out_m, np.float64),
                                 attention_oracle(q, kk, v, mask & keep),
                                 rtol=tol, atol=tol * 4, err_msg=f"masked attention {isa} d={d}")
      if dtype == np.float32 and d != 64:
        loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(  # noqa: E731
            js.sparse_dot_product_attention(q, k, v, topo, mask=keep, dropout_rate=0.2,
                                            dropout_rng=jax.random.key(0),
                                            implementation=impl)))
        gf = jax.jit(jax.grad(loss("fused"), argnums=(0, 1, 2)))(q, kk, v)
        gu = jax.jit(jax.grad(loss("unfused"), argnums=(0, 1, 2)))(q, kk, v)
        for x, y in zip(gf, gu):
          np.testing.assert_allclose(x, y, rtol=tol, atol=tol * 4,
                                     err_msg=f"attention grads {isa} d={d}")
  # The band kernels (float32, AVX2 and AVX-512: a local window, a causal one with a
  # mask and dropout, the band split of a causal window plus strided keys, and BigBird
  # on the gather kernels, whole) against the unfused path, forward and backward; on
  # the generic ISA the same calls run the row kernels (and no split).
  for t, w, causal, d in ((70, 20, False, 64), (75, 40, True, 24), (96, 40, "strided", 16),
                          (128, 16, "bigbird", 32)):
    if causal == "bigbird":
      topo = js.patterns.bigbird(t, w, 2, 1)
    elif causal == "strided":
      topo = js.patterns.union(js.patterns.local(t, w, causal=True),
                               js.patterns.strided(t, 12, causal=True))
    else:
      topo = js.patterns.local(t, w, causal=causal)
    q, kk, v = (jnp.asarray(rng.standard_normal((t, 2, d)), np.float32) for _ in range(3))
    keep = jnp.asarray(rng.random((t, t)) < 0.8) if causal else None
    drop = 0.2 if causal else 0.0
    if causal in ("strided", "bigbird"):
      hlo = jax.jit(lambda q: js.sparse_dot_product_attention(q, q, q, topo)).lower(q).as_text()
      want = 2 if isa != "generic" and causal == "strided" else 1  # the band and the rest
      assert hlo.count("jaxsparse_attention_fwd_cpu") == want, (isa, hlo.count(
          "jaxsparse_attention_fwd_cpu"))
    loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(  # noqa: E731
        js.sparse_dot_product_attention(q, k, v, topo, mask=keep, dropout_rate=drop,
                                        dropout_rng=jax.random.key(1), implementation=impl)))
    tol = T.tolerance(np.float32) * (1 + d) * 4
    gf = jax.jit(jax.value_and_grad(loss("fused"), argnums=(0, 1, 2)))(q, kk, v)
    gu = jax.jit(jax.value_and_grad(loss("unfused"), argnums=(0, 1, 2)))(q, kk, v)
    for x, y in zip(jax.tree.leaves(gf), jax.tree.leaves(gu)):
      np.testing.assert_allclose(x, y, rtol=tol, atol=tol * 4,
                                 err_msg=f"band attention {isa} t={t} d={d}")
    if causal == "bigbird" and isa != "generic":  # the gather kernels ran: the row
      g = jax.jit(jax.value_and_grad(loss("fused"), argnums=(0, 1, 2)))  # kernels' bits differ
      os.environ["JAXSPARSE_CPU_ATTN_GATHER"] = "0"
      rows = jax.block_until_ready(g(q, kk, v))  # (dispatch is asynchronous)
      del os.environ["JAXSPARSE_CPU_ATTN_GATHER"]
      assert any(not np.array_equal(x, y)
                 for x, y in zip(jax.tree.leaves(g(q, kk, v)), jax.tree.leaves(rows))), isa
  print("all ok", isa)


if __name__ == "__main__":
  main()
