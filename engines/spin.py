"""When CPU inference threads should spin-wait: `engine.spin_wait: auto`.

Spinning between operators (instead of sleeping and being woken for each) made YOLO11n's calls about 10%
faster on two lightly loaded cores. On oversubscribed cores it is the opposite: a thread spins through its
time slice waiting for one the scheduler has put aside, and calls took 3-4x longer on this project's 2-core
machine at load 6 (README, Benchmarks). And while the worker waits for frames, a spinning thread only takes
a core from the daemon's decoding.

With `engine.instances` above 1 (auto on a multi-core CPU) none of this runs: under load the worker runs
single-threaded calls side by side, which have no threads to spin, and a lone frame's call on every thread
sleeps (spin_wait: true spins it). With `instances: 1`, the engine holds a spinning and a sleeping session of
the same model, and this chooser picks one per call: the sleeping one unless the worker is the bottleneck (its
next batch is already waiting); then spinning only while its recent calls were clearly faster per frame
(MARGIN: spinning also takes CPU the daemon could use, which the worker's own timing does not see). The other
mode is tried now and then, a few calls in a row (one, when that call is clearly slower), so that a change in
the machine's load is noticed; a try that loses doubles the interval to the next one, so that a mode several
times slower costs little: in the daemon on this busy machine, tries of 3 calls every 50 cost perceptd about
7% against never spinning.
"""

from __future__ import annotations

import statistics
from collections import deque

WINDOW = 9  # recent calls per mode, compared by their median: one stalled call does not flip the choice
MARGIN = 0.95  # spinning is chosen when its median per frame is below this fraction of sleeping's
PROBE_CALLS = 3  # calls per try of the other mode
PROBE_FIRST, PROBE_MAX = 50, 800  # busy calls between tries: after a won try, and at most after lost ones
ABORT = 1.5  # a try ends after one call that took this many times the other mode's median


class SpinChooser:
    def __init__(self) -> None:
        self.recent: dict[bool, deque] = {True: deque(maxlen=WINDOW), False: deque(maxlen=WINDOW)}
        self.spinning = False  # the preferred mode while busy
        self.interval = PROBE_FIRST
        self._since = 0  # busy calls since the last try
        self._probe: bool | None = None  # the mode being tried
        self._probe_left = 0
        self._warm = {True: False, False: False}

    def choose(self, busy: bool) -> bool:
        """True: run this call on the spinning session."""
        if not busy:
            return False
        if self._probe_left:
            return self._probe
        for mode in (False, True):  # sleeping first: a try of spinning is then judged from its first call
            if not self.recent[mode]:
                self._start_probe(mode)  # each mode measured before any comparison
                return mode
        self._since += 1
        if self._since >= self.interval:
            self._start_probe(not self.spinning)
            return self._probe
        return self.spinning

    def _start_probe(self, mode: bool) -> None:
        self._probe, self._probe_left, self._since = mode, PROBE_CALLS, 0

    def record(self, spin: bool, seconds: float, frames: int) -> None:
        if not self._warm[spin]:
            self._warm[spin] = True
            return  # a session's first run allocates and picks kernels: not what it costs
        probing = self._probe_left > 0 and spin == self._probe
        if probing and self._probe_left == PROBE_CALLS:
            self.recent[spin].clear()  # its old figures were made under another load
        x = seconds / max(frames, 1)
        self.recent[spin].append(x)
        if not probing:
            self._decide()
            return
        self._probe_left -= 1
        other = self.recent[not spin]
        if other and x > ABORT * statistics.median(other):
            self._probe_left = 0  # clearly losing (spinning on oversubscribed cores): one call is enough
        if self._probe_left == 0:
            before = self.spinning
            self._decide()
            won = self.spinning != before
            self.interval = PROBE_FIRST if won else min(2 * self.interval, PROBE_MAX)

    def _decide(self) -> None:
        if self.recent[True] and self.recent[False]:
            self.spinning = statistics.median(self.recent[True]) < MARGIN * statistics.median(self.recent[False])

    def describe(self) -> dict:
        med = {m: round(1000 * statistics.median(v), 2) if v else None for m, v in self.recent.items()}
        return {"spin_ms_per_frame": med[True], "sleep_ms_per_frame": med[False], "spinning": self.spinning}
