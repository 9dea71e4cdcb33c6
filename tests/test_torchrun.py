"""The teacher trainer under torchrun with 2 CPU processes (DistributedDataParallel, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from hashkd.models import load_artifact
from tests.conftest import TINY_VIT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_completes_and_writes_one_artifact(tmp_path):
    out = tmp_path / "ddp"
    kwargs = json.dumps(TINY_VIT["backbone_kwargs"])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "hashkd",
        "train-teacher",
        "--data",
        "digits",
        "--bits",
        "16",
        "--img-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-train",
        "64",
        "--backbone",
        TINY_VIT["backbone"],
        "--backbone-kwargs",
        kwargs,
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "config.json",
        "model.safetensors",
        "run.json",
    ]
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 1  # only rank 0 writes
    assert load_artifact(out).bits == 16
