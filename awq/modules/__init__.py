"""awq.modules: AutoAWQ's torch module paths (`awq.modules.linear.gemm.WQLinear_GEMM`) for code
written against AutoAWQ. torch is optional: awq's loader and runtime never import this package,
and importing it without torch works (building a module then raises ImportError)."""
