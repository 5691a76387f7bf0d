"""What the benchmarks print about the machine they ran on (shared by the bench scripts)."""
import os
import platform


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas_libraries():
    """One line per BLAS / OpenMP runtime loaded in this process (threadpoolctl if installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed: numpy's BLAS unknown (pip install threadpoolctl)"]
    lines = []
    for lib in threadpool_info():
        lines.append(f"{lib.get('internal_api')} {lib.get('version')} "
                     f"threads={lib.get('num_threads')} layer={lib.get('threading_layer', '-')} "
                     f"arch={lib.get('architecture', '-')} {os.path.basename(lib.get('filepath', ''))}")
    return lines
