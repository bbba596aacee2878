// pybind11 module jaxsparse._jaxsparse_cpu: registrations() -> {FFI target name: capsule},
// and instruction_set() -> the kernels' instruction set in this process.
#include <pybind11/pybind11.h>

#include "common/simd_cpu.h"
#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxsparseSpmmCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseSpmmNtCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseSddmmCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseSddmmTnCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseSoftmaxCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseSoftmaxGradCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparsePermuteCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseAttentionFwdCpu(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxsparseAttentionBwdCpu(XLA_FFI_CallFrame* call_frame);
}

namespace {

template <typename Fn>
pybind11::capsule EncapsulateHandler(Fn* fn) {
  return pybind11::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

PYBIND11_MODULE(_jaxsparse_cpu, m) {
  m.doc() = "jaxsparse CPU kernels as XLA FFI handlers";
  m.def("registrations", []() {
    pybind11::dict d;
    d["jaxsparse_spmm_cpu"] = EncapsulateHandler(JaxsparseSpmmCpu);
    d["jaxsparse_spmm_nt_cpu"] = EncapsulateHandler(JaxsparseSpmmNtCpu);
    d["jaxsparse_sddmm_cpu"] = EncapsulateHandler(JaxsparseSddmmCpu);
    d["jaxsparse_sddmm_tn_cpu"] = EncapsulateHandler(JaxsparseSddmmTnCpu);
    d["jaxsparse_softmax_cpu"] = EncapsulateHandler(JaxsparseSoftmaxCpu);
    d["jaxsparse_softmax_grad_cpu"] = EncapsulateHandler(JaxsparseSoftmaxGradCpu);
    d["jaxsparse_permute_cpu"] = EncapsulateHandler(JaxsparsePermuteCpu);
    d["jaxsparse_attention_fwd_cpu"] = EncapsulateHandler(JaxsparseAttentionFwdCpu);
    d["jaxsparse_attention_bwd_cpu"] = EncapsulateHandler(JaxsparseAttentionBwdCpu);
    return d;
  }, "Returns {FFI target name: PyCapsule} for jax.ffi.register_ffi_target(..., platform='cpu').");
  m.def("instruction_set", []() {
    switch (jaxsparse::cpu::SelectedIsa()) {
      case jaxsparse::cpu::Isa::kAvx512: return "avx512";
      case jaxsparse::cpu::Isa::kAvx2: return "avx2";
      default: return "generic";
    }
  }, "The instruction set the CPU kernels run with: 'avx512', 'avx2' or 'generic' (the best "
     "this CPU has, capped by JAXSPARSE_CPU_ISA).");
}
