"""Device, precision and seeding."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but CUDA is not available; use device=auto or device=cpu")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None = plain fp32).

    'auto' takes bf16 only on a CUDA device that supports it: a CPU's bf16 speed depends on
    AMX, which CI machines may not have, and fp32 keeps CPU runs comparable everywhere.
    """
    precision = getattr(precision, "value", precision)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device``; a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def reproducible_on(device: torch.device) -> None:
    """On a CPU, PyTorch's deterministic kernels (``torch.use_deterministic_algorithms``): with more
    than one intra-op thread, a GRPO run on the ``jsonl`` example otherwise differed from an identical
    run in the 7th digit from its third step in 2 of 4 pairs (0.88835388 vs 0.88835382 final KL);
    with them, 5 of 5 runs were bitwise identical, at the same speed and with the same numbers as
    before where the runs agreed (docs/reliability.md). Not on a GPU, where the deterministic
    kernels cost speed and need ``CUBLAS_WORKSPACE_CONFIG``: GPU runs are reproducible to a tolerance.
    ``warn_only``: an op with no deterministic kernel warns (into the run's log) instead of failing.
    Not with one intra-op thread either (torchrun's default, ``OMP_NUM_THREADS=1``): nothing to
    reorder there, and under FSDP and DeepSpeed on a CPU the deterministic kernels made a run 3x
    slower (``test_distributed.py``'s FSDP/DeepSpeed test: 50 s -> 155 s). Set either way, so that
    a later run in the same process does not inherit the setting."""
    on = device.type == "cpu" and torch.get_num_threads() > 1
    torch.use_deterministic_algorithms(on, warn_only=True)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
