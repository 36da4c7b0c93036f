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


SPIN_PROBE = """
import json, sys
from engines.base import EngineOptions, create_engine
from engines.zoo import materialise
from pipeline.settings import load_settings
from pipeline.spec import build_worker_spec
model = materialise("retinaface", sys.argv[1])
out = {}
for value in ("auto", True, False):
    settings = load_settings(None, {"engine.spin_wait": value, "engine.cache_dir": sys.argv[1]})
    spec, _ = build_worker_spec(settings, (144, 176))
    with create_engine("onnxruntime", model, spec.options) as e:
        sessions = {}
        for spin, session in e._sessions.items():
            so = session.get_session_options()
            sessions[str(spin)] = [so.get_session_config_entry("session.intra_op.allow_spinning"),
                                   so.get_session_config_entry("session.force_spinning_stop")]
        out[str(value)] = [e.describe()["spin_wait"], sessions]
print(json.dumps(out))
"""


def test_onnxruntime_spin_wait_when_configured_then_session_spins_as_asked(cache_dir):
    """engine.spin_wait reaches ONNX Runtime: auto holds a spinning session (stopped as soon as a run returns)
    and a sleeping one, chosen per call; true keeps ONNX Runtime's default (spinning on after runs); false
    never spins. (Two usable cores at least: with one thread there is nothing to spin for.)"""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores")
    proc = subprocess.run([sys.executable, "-c", SPIN_PROBE, str(cache_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"auto": ["auto", {"True": ["1", "1"], "False": ["0", "1"]}],
                   "True": ["on", {"True": ["1", "0"]}], "False": ["off", {"False": ["0", "0"]}]}


def test_spin_chooser_when_idle_sleeps_and_when_busy_takes_the_faster_mode_and_probes_the_other():
    from engines.spin import PROBE_EVERY, SpinChooser

    c = SpinChooser()
    assert c.choose(busy=False) is False  # waiting for frames: never spin
    c.record(False, 9.0, 1)  # each session's first run is its warm-up, not counted
    c.record(False, 0.030, 1)
    assert c.choose(busy=True) is True  # spinning not yet measured: tried
    c.record(True, 9.0, 1)
    assert c.choose(busy=True) is True
    c.record(True, 0.100, 1)  # oversubscribed cores: spinning is slower
    picks = []
    for _ in range(2 * PROBE_EVERY):
        spin = c.choose(busy=True)
        picks.append(spin)
        c.record(spin, 0.100 if spin else 0.030, 1)
    assert picks.count(True) == 2  # only the probes
    for _ in range(3 * PROBE_EVERY):  # the machine quietens: spinning is now the faster
        spin = c.choose(busy=True)
        c.record(spin, 0.027 if spin else 0.030, 1)
    assert [c.choose(busy=True) for _ in range(5)] == [True] * 5
    assert c.choose(busy=False) is False
