"""When CPU inference threads should spin-wait: `engine.spin_wait: auto`.

Spinning between operators (instead of sleeping and being woken for each) makes YOLO11n's ~300 small
operators about 10% faster on two idle cores. On cores that are oversubscribed it is the opposite: a thread
spins through its time slice waiting for one the scheduler has put aside, and a call took 3-4x longer on this
project's 2-core machine at load 6 (benchmarks/README.md). And while the worker waits for frames, a spinning
thread only takes a core from the daemon's decoding.

So the engine holds a spinning and a sleeping session of the same model, and this chooser picks one per
call: the sleeping one unless the worker is the bottleneck (its next batch is already waiting); then the
one whose recent calls were faster per frame, trying the other every PROBE_EVERY busy calls so that a
change in the machine's load is noticed.
"""

from __future__ import annotations

PROBE_EVERY = 50  # busy calls between tries of the mode not in use: a wrong try costs one call in 50
ALPHA = 0.3  # weight of the newest call in each mode's moving average


class SpinChooser:
    def __init__(self) -> None:
        self.per_frame_s: dict[bool, float | None] = {True: None, False: None}  # moving average per mode
        self._busy_calls = 0
        self._calls = {True: 0, False: 0}
        self._probe = False

    def choose(self, busy: bool) -> bool:
        """True: run this call on the spinning session."""
        if not busy:
            return False
        self._busy_calls += 1
        spin, sleep = self.per_frame_s[True], self.per_frame_s[False]
        if spin is None or sleep is None:
            return spin is None  # each mode measured once before any comparison
        best = spin <= sleep
        self._probe = self._busy_calls % PROBE_EVERY == 0
        return (not best) if self._probe else best

    def record(self, spin: bool, seconds: float, frames: int) -> None:
        self._calls[spin] += 1
        if self._calls[spin] == 1:
            return  # a session's first run allocates and picks kernels: not what it costs
        x = seconds / max(frames, 1)
        old = self.per_frame_s[spin]
        # A probe's figure replaces the mode's old one, made under another load: if it says the mode is now
        # the faster, the next calls use it and correct the figure within a few calls either way.
        self.per_frame_s[spin] = x if old is None or self._probe else old + ALPHA * (x - old)
        self._probe = False

    def describe(self) -> dict:
        return {mode: (None if v is None else round(v * 1000, 2))
                for mode, v in (("spin_ms_per_frame", self.per_frame_s[True]),
                                ("sleep_ms_per_frame", self.per_frame_s[False]))}
