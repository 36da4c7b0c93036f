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

def options(session):
    so = session.get_session_options()
    return [so.get_session_config_entry("session.intra_op.allow_spinning"),
            so.get_session_config_entry("session.force_spinning_stop"), so.intra_op_num_threads]

out = {}
for instances in (1, "auto"):
    for value in ("auto", True, False):
        settings = load_settings(None, {"engine.spin_wait": value, "engine.instances": instances, "engine.threads": 2,
                                        "engine.cache_dir": sys.argv[1]})
        spec, _ = build_worker_spec(settings, (144, 176))
        with create_engine("onnxruntime", model, spec.options) as e:
            if e.lanes == 1:
                sessions = {str(spin): options(session) for spin, session in e._sessions.items()}
            else:
                sessions = {"wide": options(e._session), "lanes": [options(s) for s in e._lane_sessions],
                            "shared": len({id(s) for s in e._lane_sessions})}
            out[f"{instances} {value}"] = [e.describe()["spin_wait"], e.lanes, sessions]
print(json.dumps(out))
"""


def test_onnxruntime_spin_wait_when_configured_then_session_spins_as_asked(cache_dir):
    """engine.spin_wait reaches ONNX Runtime. With instances 1: auto holds a spinning session (stopped as soon as
    a run returns) and a sleeping one, chosen per call; true keeps ONNX Runtime's default (spinning on after
    runs); false never spins. With lanes (instances auto, 2 threads): a wide session on both threads that spins
    only with true, and one single-threaded session the two lanes share."""
    proc = subprocess.run([sys.executable, "-c", SPIN_PROBE, str(cache_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    lanes = lambda spin, stop: {"wide": [spin, stop, 2], "lanes": [["0", stop, 1]] * 2, "shared": 1}  # noqa: E731
    assert got == {"1 auto": ["auto", 1, {"True": ["1", "1", 2], "False": ["0", "1", 2]}],
                   "1 True": ["on", 1, {"True": ["1", "0", 2]}], "1 False": ["off", 1, {"False": ["0", "0", 2]}],
                   "auto auto": ["auto", 2, lanes("0", "1")], "auto True": ["on", 2, lanes("1", "0")],
                   "auto False": ["off", 2, lanes("0", "0")]}


def _drive(chooser, calls: int, cost: dict) -> list[bool]:
    """Busy calls against a simulated machine: cost[mode] seconds per frame."""
    picks = []
    for _ in range(calls):
        spin = chooser.choose(busy=True)
        chooser.record(spin, cost[spin], 1)
        picks.append(spin)
    return picks


def test_spin_chooser_when_idle_then_never_spins():
    from engines.spin import SpinChooser

    c = SpinChooser()
    _drive(c, 100, {True: 0.020, False: 0.030})  # spinning is the faster when busy...
    assert c.choose(busy=True) is True
    assert c.choose(busy=False) is False  # ...but waiting for frames, it only takes a core from decoding


def test_spin_chooser_when_spinning_is_much_slower_then_tries_it_rarely_and_follows_a_change():
    from engines.spin import PROBE_MAX, SpinChooser

    c = SpinChooser()
    picks = _drive(c, 3000, {True: 0.100, False: 0.030})  # oversubscribed cores
    assert picks[-1] is False and c.interval == PROBE_MAX
    assert picks[1000:].count(True) <= 2000 // PROBE_MAX + 1  # only the tries, ever rarer, one call each
    assert picks[:200].count(True) <= 2 + 4  # its warm-up, then one call per try (after 50, 100; 200 is past)
    picks = _drive(c, 2 * PROBE_MAX, {True: 0.020, False: 0.030})  # the machine quietens
    assert picks[-100:].count(True) >= 100 - 3  # spinning, but for one try of sleeping


def test_spin_chooser_when_spinning_is_only_a_little_faster_then_sleeps():
    from engines.spin import SpinChooser

    c = SpinChooser()
    picks = _drive(c, 500, {True: 0.0295, False: 0.030})  # within MARGIN: not worth the daemon's CPU
    assert picks[-40:] == [False] * 40
