"""Expert parallelism over gloo with 2 and 4 processes: forward AND backward equal the single-process layer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from duomind.moe import MoELayer
from duomind.parallel import ExpertParallelError, ExpertParallelMoE

WORKER = Path(__file__).resolve().parent / "_ep_worker.py"


def free_port() -> int:
    """A port nothing listens on now (fixed ports collide when test sessions run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_single_process(tmp_path, world):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
           str(free_port()), str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for rank, report in enumerate(reports):
        for kind in ("moe", "moge"):  # float64: everything within 1e-5 (in fact ~1e-15)
            r = report[kind]
            for name, diff in r["diffs"].items():
                assert diff < 1e-5, (rank, kind, name, diff)
            assert r["grad_scale"] > 0.1  # gradients large enough that 1e-5 means something
        for kind in ("moe32", "moge32"):  # float32: per-rank results within 1e-5; rank-summed ones relative
            r = report[kind]
            for name, diff in r["diffs"].items():
                size = r["replicated_grad_size"].get(name)
                assert diff < (1e-5 if size is None else 1e-6 * max(size, 10.0)), (rank, kind, name, diff, size)
        assert "has 4 ranks" in report["wrong_world"] or f"has {world} ranks" in report["wrong_world"]
        assert f"expert_groups={2 * world}" in report["wrong_world"]
    # MoGE: every rank receives exactly K' = 1 copy of every token of every rank (balanced by construction)
    assert [rep["moge"]["received"] for rep in reports] == [reports[0]["moge"]["tokens"]] * world
    # plain top-2 MoE on the same skewed tokens: the copies land unevenly
    moe = [rep["moe"]["received"] for rep in reports]
    assert sum(moe) == 2 * reports[0]["moe"]["tokens"] and max(moe) > min(moe)


def test_expert_parallel_needs_an_initialised_group():
    with pytest.raises(ExpertParallelError, match="torch.distributed initialised.*torchrun"):
        ExpertParallelMoE(MoELayer(8, 4, 2, 6, groups=2))
    assert not torch.distributed.is_initialized()
