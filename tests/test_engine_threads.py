"""CPU inference threads: 0 means every core the process may use (its affinity, as taskset or a cgroup
set it), not every core of the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import json, os, sys
os.sched_setaffinity(0, set(json.loads(sys.argv[1])))
from engines.base import EngineOptions, create_engine
from engines.zoo import materialise
model = materialise("retinaface", sys.argv[2])
out = {}
for requested in (0, 3):
    with create_engine("onnxruntime", model, EngineOptions(threads=requested, input_hw=(160, 192))) as e:
        out[requested] = e.describe().get("threads")
print(json.dumps(out))
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_onnxruntime_threads_when_auto_then_every_usable_core(cores, cache_dir):
    available = sorted(os.sched_getaffinity(0))
    if len(available) < cores:
        pytest.skip(f"needs {cores} usable cores")
    # A child process, so the affinity it narrows (as taskset or a cgroup would) is its own.
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(available[:cores]), str(cache_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"0": cores, "3": 3}
