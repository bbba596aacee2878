"""jaxsparse: sparse deep learning in JAX.

CSR sparse matrices whose ops (SpMM, SDDMM, sparse softmax, transpose) are JAX
primitives lowered to XLA FFI custom calls, with JVP, transpose and batching
rules, so they compose with `jit`, `grad` and `vmap`.
"""

from jaxsparse._src.csr import CSR, Topology
from jaxsparse._src.ffi import cpu_instruction_set, has_kernels
from jaxsparse._src.sddmm import sddmm
from jaxsparse._src.softmax import sparse_softmax
from jaxsparse._src.spmm import spmm
from jaxsparse._src.transpose import transpose
from jaxsparse import io, patterns, pruning
from jaxsparse.attention import sparse_dot_product_attention

__version__ = "0.1.0"

__all__ = ["CSR", "Topology", "cpu_instruction_set", "has_kernels", "io", "patterns", "pruning",
           "sddmm", "sparse_dot_product_attention", "sparse_softmax", "spmm", "transpose"]
