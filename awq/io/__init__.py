"""awq.io: checkpoint input/output without torch.

- `safetensors`: strict mmap reader (`SafetensorsFile`) and aligned writer (`save_file`, `BF16`).
- `checkpoint`: Hugging Face model folders, single-file or sharded (`open_checkpoint`,
  `write_checkpoint`), `atomic_folder` for replacing an output folder safely, `read_json`.
- `layouts` (imported on its own, it uses the C core): AutoAWQ's gemv / gemv_fast / marlin
  layouts converted to GEMM at load time (`to_gemm`).

Importing this package only defines names; nothing is opened or changed.
"""
from .safetensors import (
    BF16,
    SafetensorsError,
    SafetensorsFile,
    bf16_to_float32,
    float32_to_bf16,
    save_file,
)
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_folder,
    check_writable,
    open_checkpoint,
    parse_size,
    read_json,
    write_checkpoint,
)

__all__ = [
    "BF16",
    "SafetensorsError",
    "SafetensorsFile",
    "bf16_to_float32",
    "float32_to_bf16",
    "save_file",
    "Checkpoint",
    "CheckpointError",
    "atomic_folder",
    "check_writable",
    "open_checkpoint",
    "parse_size",
    "read_json",
    "write_checkpoint",
]
