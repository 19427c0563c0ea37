"""Result files and the facts a reader needs to compare runs."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model and count, its int8 instructions, load average, Python/torch versions: what a reader
    needs to compare runs. ``cpu_int8``: ``"AVX512-VNNI"``, ``"AVX-VNNI"``, ``"AVX2, no VNNI"`` or
    ``None`` (not read): int8 kernels' speed, and ONNX Runtime's uint8 x int8 overflow (model.onnx_int8),
    depend on it."""
    cpu, model, flags = platform.processor() or "", None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                cpu = model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    int8 = None
    if flags is not None:
        int8 = ("AVX512-VNNI" if "avx512_vnni" in flags else "AVX-VNNI" if "avx_vnni" in flags
                else "AVX2, no VNNI" if "avx2" in flags else "no AVX2")
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "cpu_int8": int8,
                            "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_default_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def _plain(obj: Any) -> Any:
    """JSON-ready: NaN/Inf -> None, Path -> str, numpy/torch scalars -> Python numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _plain(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (a temporary file, then a rename): an interrupted
    run never leaves half a file. NaN becomes null. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    tmp.replace(path)
    return path
