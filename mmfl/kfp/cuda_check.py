"""Start-up check of the GPU tasks: CUDA must work before any data is read or state written.

``pipelines/cluster.py`` sets ``MMFL_REQUIRE_CUDA=1`` on the tasks that request a GPU. A pod that
got no usable GPU (no device plugin on the node, a driver older than the image's CUDA 13 needs,
a GPU generation the torch build has no kernels for) stops here with one line saying so, instead
of training on the CPU while it holds a GPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

from mmfl.errors import MmflError

ENV_REQUIRE_CUDA = "MMFL_REQUIRE_CUDA"
# torch 2.13.0 from PyPI is built against CUDA 13.0 (cuda-toolkit 13.0.3 wheels): NVIDIA driver
# branch R580 or newer, Turing (compute capability 7.5) or newer GPUs. See docs/kubeflow.md.
DRIVER_FLOOR = "NVIDIA driver >= 580 (CUDA 13) and a Turing or newer GPU (compute capability >= 7.5)"


def require_cuda(environ: Mapping[str, str] = os.environ) -> str | None:
    """None when the task does not ask for CUDA; else a description of the GPU after a kernel ran on it."""
    if environ.get(ENV_REQUIRE_CUDA, "").lower() not in ("1", "true", "yes"):
        return None
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'})"
    if not available:
        why = "; ".join(str(w.message).splitlines()[0] for w in caught) or "no CUDA device visible"
        raise MmflError(f"{ENV_REQUIRE_CUDA}=1 but {build} cannot use a GPU here: {why}. "
                        f"This image needs {DRIVER_FLOOR}, exposed by the NVIDIA device plugin")
    name, (major, minor) = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    try:
        x = torch.arange(4, dtype=torch.float32, device="cuda")
        if float(x @ x) != 14.0:
            raise RuntimeError("a 4-element dot product gave a wrong result")
    except RuntimeError as exc:
        raise MmflError(f"{ENV_REQUIRE_CUDA}=1: {build} sees {name} (compute capability {major}.{minor}) but a kernel "
                        f"failed: {str(exc).splitlines()[0]}. This image needs {DRIVER_FLOOR}") from None
    return f"{name}, compute capability {major}.{minor}, {build}"
