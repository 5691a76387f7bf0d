"""Build of awq's C core, `awq._awq_C`.

csrc/*.c are compiled with the CPython and NumPy C-APIs (no pybind, no torch), with OpenMP, and
linked against OpenBLAS from the `scipy-openblas32` wheel (the BLAS numpy itself ships) for dense
fp32 GEMM. When that wheel is missing at build time the core falls back to its own blocked GEMM and
says so in `awq._awq_C.cpu_info()["blas"]`.

When nvcc is found (PATH or CUDA_HOME) and AWQ_NO_CUDA is not set, csrc/kernels/*.cu are compiled
with nvcc for sm_80/86/89/90 (+ PTX) into the same extension, linked with the static CUDA runtime
and cuBLAS. Without nvcc they are skipped cleanly.

AWQ_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer (.ci/sanitize: clang, CPU only).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def _numpy_include():
    import numpy

    return numpy.get_include()


def _openblas():
    """(include_dir, lib_dir, lib_name) of scipy-openblas32, or None."""
    if os.environ.get("AWQ_NO_BLAS"):
        return None
    try:
        import scipy_openblas32 as sob
    except ImportError:
        return None
    return sob.get_include_dir(), sob.get_lib_dir(), sob.get_library()


def _find_nvcc():
    if os.environ.get("AWQ_NO_CUDA"):
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if home and (Path(home) / "bin" / "nvcc").exists():
                nvcc = str(Path(home) / "bin" / "nvcc")
                break
    return nvcc


# sm_80/86/89/90 machine code + PTX; AWQ_CUDA_ARCHS="90" builds one arch (faster device iterations).
CUDA_ARCHS = os.environ.get("AWQ_CUDA_ARCHS", "80,86,89,90").replace(";", ",").split(",")


class BuildExt(build_ext):
    """Adds the nvcc step for csrc/kernels/*.cu when nvcc exists."""

    def build_extension(self, ext):
        nvcc = _find_nvcc()
        cu_sources = sorted((CSRC / "kernels").glob("*.cu"))
        if nvcc and cu_sources:
            cuda_home = Path(nvcc).resolve().parent.parent
            objs = []
            out_dir = Path(self.build_temp) / "cuda"
            out_dir.mkdir(parents=True, exist_ok=True)
            gencode = []
            for a in CUDA_ARCHS:
                gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
            gencode += [f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
            for src in cu_sources:
                obj = out_dir / (src.stem + ".o")
                cmd = [nvcc, "-c", str(src), "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler",
                       "-fPIC", "-I", str(CSRC), *gencode]
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                objs.append(str(obj))
            ext.extra_objects = list(ext.extra_objects or []) + objs
            ext.define_macros = list(ext.define_macros or []) + [("AWQ_WITH_CUDA", "1")]
            libdirs = [cuda_home / "lib64", cuda_home / "lib", cuda_home / "targets" / "x86_64-linux" / "lib"]
            libdirs = [str(d) for d in libdirs if d.exists()]
            ext.library_dirs = list(ext.library_dirs or []) + libdirs
            ext.runtime_library_dirs = list(ext.runtime_library_dirs or []) + libdirs
            ext.libraries = list(ext.libraries or []) + ["cudart_static", "cublas", "rt", "dl", "pthread", "stdc++"]
        else:
            print("awq: nvcc not found (or AWQ_NO_CUDA set): building the CPU core only", flush=True)
        super().build_extension(ext)


def _extension():
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c"))
    include_dirs = [_numpy_include(), str(CSRC)]
    define_macros = []
    libraries, library_dirs, runtime_dirs = ["m"], [], []
    blas = _openblas()
    if blas:
        inc, libdir, lib = blas
        include_dirs.append(inc)
        define_macros.append(("AWQ_HAVE_SCIPY_OPENBLAS", "1"))
        libraries.append(lib)
        library_dirs.append(libdir)
        # $ORIGIN-relative for regular installs (site-packages/awq -> site-packages/scipy_openblas32);
        # awq/__init__.py also preloads the library, which covers editable installs.
        runtime_dirs.append("$ORIGIN/../scipy_openblas32/lib")
    compile_args = ["-O3", "-std=c11", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    link_args = ["-fopenmp"]
    if os.environ.get("AWQ_SANITIZE"):
        # ASan + UBSan (.ci/sanitize builds this with clang and preloads the runtime); -O1 keeps
        # stack traces readable; AWQ_SANITIZE_BUILD turns off the ifunc clones (awq.h).
        compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
        link_args += ["-fsanitize=address,undefined"]
        define_macros.append(("AWQ_SANITIZE_BUILD", "1"))
    return Extension(
        "awq._awq_C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        libraries=libraries,
        library_dirs=library_dirs,
        runtime_library_dirs=runtime_dirs,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        depends=[str(p.relative_to(ROOT)) for p in CSRC.glob("*.h")],
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExt})
