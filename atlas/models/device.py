"""Pick the device and dtype: CUDA with half precision (fp16; bf16 for FLUX) when there is a GPU, CPU in fp32
otherwise."""

from __future__ import annotations

import torch

from atlas.errors import BadInputError, UnavailableError


def pick_device(device: str | None = None) -> torch.device:
    """`device` may be None/'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(f"device {device!r} asked for, but no CUDA GPU is visible; use --device cpu")
    return dev


CUDA_DTYPES = {"flux": torch.bfloat16}
"""Backbone -> its precision on CUDA where fp16 will not do: FLUX's activations overflow fp16, and diffusers runs it
in bf16. Every other backbone runs in fp16 on CUDA, as diffusers' SD v1 and SD3 examples do."""


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None, backbone: str = "unet") -> torch.dtype:
    """`dtype` when given; else half precision on CUDA (fp16, or the backbone's own in `CUDA_DTYPES`), fp32 on CPU,
    where half precision is slower, not faster."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return CUDA_DTYPES.get(backbone, torch.float16) if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise BadInputError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16")
    return table[dtype]
