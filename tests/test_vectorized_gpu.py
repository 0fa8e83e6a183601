"""The vectorized engine on a CUDA device: eager, CUDA graph and compile + graph agree with the loop.

Skipped where torch sees no GPU (CI has none); `pytest tests/test_vectorized_gpu.py` on a GPU
machine checks the paths `make bench` measures there. GPU kernels of the batched products and
of the loop's plain products round differently, so the tolerance is 1e-5 rather than the CPU
tests' 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from mmfl.engine.vectorized.stack import StackView
from mmfl.engine import steps
from mmfl.engine.vectorized import client_train_vectorized
from tests.helpers.engines import max_diff
from tests.test_vectorized import _setup

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU_TOL = 1e-5


@pytest.mark.parametrize(("compile", "graph"), [(False, False), (False, True), (True, True)],
                         ids=["eager", "graph", "compile+graph"])
def test_gpu_rounds_equal_the_loop(tmp_path, compile, graph):
    cfg, shards, state = _setup(tmp_path, train={"local_epochs": 1, "device": "cuda", "compile": compile,
                                                 "vector_chunk": 2})
    ids = steps.sample_clients(cfg, 1)
    state_loop = state_vec = state
    for _ in range(2):  # the second round replays graphs captured in the first
        loop = steps.client_train(cfg, state_loop, shards, ids)
        vec = client_train_vectorized(cfg, state_vec, shards, ids, cuda_graph=graph)
        assert all(isinstance(u.tensors, StackView) for u in vec)
        assert next(iter(vec[0].tensors.stack.stacked.values())).device.type == "cuda"
        for a, b in zip(loop, vec):
            assert max_diff(a.tensors, dict(b.tensors)) < GPU_TOL
        state_loop, state_vec = steps.aggregate(cfg, state_loop, loop), steps.aggregate(cfg, state_vec, vec)
        assert max_diff(state_loop.tensors, state_vec.tensors) < GPU_TOL
    assert max_diff(state_vec.tensors, state.tensors) > 1e-3
