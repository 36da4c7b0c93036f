"""Running as a service: signals, systemd notifications and watchdog, reload, health.

SIGTERM/SIGINT stop the sources, drain frames in flight (within service.shutdown_grace_s), finalise every
output and exit 0; a second signal exits at once; during the first engine load or build they cancel it.
SIGHUP re-reads the config at any moment (start-up, a worker restart, another reload) and never ends the
daemon: sources added, removed or changed, thresholds and sinks updated in place, and a model or engine
change prepared beside the running worker, which serves until the new one is ready and stays if it fails.
An invalid file is logged with the line to fix and the running config stays. Every reload is counted
(perceptd_reloads_total{result}) and told to systemd (RELOADING=1, then READY=1 with its outcome in STATUS=).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from pipeline.errors import ConfigError, UserError
from pipeline.notify import Notifier
from pipeline.progress import Progress
from pipeline.resources import ResourceCollector
from pipeline.runner import Pipeline
from pipeline.settings import Settings, load_settings
from pipeline.spec import engine_changed
from pipeline.supervisor import StartCancelled
from pipeline.web import LiveView, TokenAccess

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config_path: Path | None, overrides: dict, max_frames: int | None = None):
        self.config_path = config_path
        self.overrides = overrides
        self.max_frames = max_frames
        self.settings = self.load()
        self.notifier = Notifier()
        self.pipeline = Pipeline(self.settings)
        self._signals = 0
        self._reload = threading.Event()
        self._heartbeat = time.monotonic()  # the main loop's last tick: a wedged loop stops the watchdog
        self._last_status = 0.0
        self._note = ""  # the last reload's outcome, shown in STATUS= until the next one
        self._reload_pending = False  # RELOADING=1 sent; READY=1 when the new worker is in (or failed)
        self._collector: ResourceCollector | None = None

    def load(self) -> Settings:
        settings = load_settings(self.config_path, self.overrides)
        if self.max_frames is not None:
            if self.max_frames < 1:
                raise UserError("--max-frames must be at least 1")
            settings = settings.model_copy(update={"sources": tuple(
                s.model_copy(update={"max_frames": self.max_frames}) for s in settings.sources)})
        return settings

    # signals ---------------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        # Only flags here: a handler runs between two bytecodes of the main thread, wherever it is.
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._reload.set()
            return
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now without finalising outputs", name)
            os._exit(128 + signum)
        log.info("%s: stopping; finishing frames in flight and finalising outputs", name)
        self.pipeline.interrupt()

    # running -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        p = self.pipeline
        routes, streams, access = {"/readyz": self._readyz}, {}, None
        web = self.settings.web
        if web.enabled:
            view = LiveView(p)
            routes.update(view.routes())
            streams.update(view.streams())
            token = os.environ.get("PERCEPTD_WEB_TOKEN") or web.token
            if token:
                access = TokenAccess(token, web.protect_metrics)
            elif self.settings.metrics.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("the live view is served on %s without web.token: anyone who can reach the port "
                            "sees the cameras", self.settings.metrics.host)
        if self.notifier.watchdog_s:  # service.watchdog is read on each round: a reload can switch it
            threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        try:
            p.open(routes=routes, streams=streams, access=access, progress=self._load_progress)
        except StartCancelled:
            log.info("stopped while the engine was loading; nothing was written")
            self.notifier.stopping()
            return 0
        p.inference.on_reload = self._reload_settled
        self._collector = ResourceCollector(lambda: p.worker.pid if p.worker else None)
        p.metrics.registry.register(self._collector)
        try:
            # The watchdog judges the main loop from p.start() on: the load before it (seconds; minutes for a
            # TensorRT build) is not a wedged loop, and counting it logged a false "not pinging" at start.
            self._heartbeat = time.monotonic()
            p.start()
            if self._signals:
                p.interrupt()
            self.notifier.ready(self._status_line())
            p.run(Progress(self.settings.sinks.progress, self.settings.sinks.log_interval_s), tick=self._tick)
        finally:
            self.notifier.stopping()
            p.close(linger_s=self.settings.metrics.linger_s)
            self._collector.close()
            self.notifier.close()
        return 0

    def _tick(self) -> None:
        self._heartbeat = time.monotonic()
        if self._reload.is_set():
            self._reload.clear()
            self.reload()
        if time.monotonic() - self._last_status >= self.settings.service.status_interval_s:
            self._last_status = time.monotonic()
            self.notifier.status(self._status_line())

    def _watchdog(self) -> None:
        """WATCHDOG=1 every half period while the daemon moves frames or is recovering by itself (a worker
        restart, a hang being handled, a reload, a source reconnecting) and its main loop is alive. When it
        cannot recover by itself (see Pipeline.health) the pings stop, so that systemd restarts it."""
        period = self.notifier.watchdog_s
        silent = False
        while not self.pipeline.stopping:
            started = self.pipeline.started
            why = self.pipeline.health(period) if started else None
            if started and time.monotonic() - self._heartbeat > period:
                why = f"the main loop has not run for {time.monotonic() - self._heartbeat:.0f} s"
            if not self.settings.service.watchdog:
                pass  # switched off: systemd's WatchdogSec= then decides alone
            elif why is None:
                self.notifier.watchdog()
                silent = False
            elif not silent:  # once per state change
                log.error("watchdog: %s; not pinging, so that systemd restarts perceptd", why)
                silent = True
            time.sleep(period / 2)

    def _load_progress(self, what: str) -> None:
        """A long engine load (TensorRT build): keep systemd's start/reload timeout from expiring meanwhile."""
        timeout_s = self.settings.pipeline.worker_start_timeout_s
        self.notifier.send(EXTEND_TIMEOUT_USEC=int(timeout_s * 1e6), STATUS=f"loading the engine: {what}")

    def _status_line(self) -> str:
        parts = []
        for name, s in self.pipeline.status().items():
            part = f"{name} {s['state']} {s['fps']:.1f} fps"
            if s["paused"]:
                part += " (paused: " + "; ".join(s["paused"]) + ")"
            if s["stuck_reads"]:
                part += f" ({s['stuck_reads']} stuck reads)"
            parts.append(part)
        inference = self.pipeline.inference
        if inference is not None and inference.state != "ready":
            parts.insert(0, f"worker {inference.state}")
        if self._note:
            parts.append(self._note)
        return "; ".join(parts) or "no sources"

    def _readyz(self) -> tuple[int, bytes, str]:
        p = self.pipeline
        body = {"ready": p.ready, "worker": {"pid": p.worker.pid if p.worker else None,
                                             **(p.worker.info if p.worker else {})},
                "sources": p.status()}
        return (200 if p.ready else 503), json.dumps(body).encode(), "application/json"

    # reload ------------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP, on the main loop. Whatever goes wrong, the daemon goes on with what it was running."""
        log.info("SIGHUP: reloading %s", self.config_path or "the built-in defaults")
        self.notifier.reloading()
        self._reload_pending = False
        try:
            self._apply(self.load())
        except (ConfigError, UserError) as exc:
            self._reload_settled("rejected", f"the running configuration stays: {exc}")
        except Exception as exc:  # a bug must not end a daemon that was serving fine
            log.exception("reload failed unexpectedly")
            self._reload_settled("failed", f"the running configuration stays: {exc.__class__.__name__}: {exc}")
        else:
            if not self._reload_pending:
                self._reload_settled("ok", "applied")

    def _reload_settled(self, result: str, message: str) -> None:
        """A reload's outcome (here, or from the inference side once a new worker is in or has failed):
        counted, logged, and told to systemd (READY=1 ends its 'reloading' state)."""
        if result == "rejected":
            log.error("reload rejected, %s", message)
        self.pipeline.metrics.reloads.labels(result).inc()
        self._reload_pending = False
        self._note = f"last reload {result}" + ("" if result == "ok" else f": {message}")
        self.notifier.ready(self._status_line())

    def _apply(self, new: Settings) -> None:
        old, p = self.settings, self.pipeline
        # What can be refused comes first, so that a refusal leaves everything as it was.
        spec = p.worker_spec(new) if engine_changed(old, new) else None  # a missing or non-ONNX model
        if new.sinks.output_dir != old.sinks.output_dir:
            p.use_output_dir(new)  # not writable, in use by another perceptd, or its video codec not writable
        elif new.sinks.video != old.sinks.video:
            p.check_video_codec(new)  # a codec this machine cannot write
        if spec is not None:
            log.info("reload: model/engine changed; loading the new one while the running worker serves")
            self._reload_pending = True  # first: the load may fail (and settle the reload) at once
            p.inference.stage(spec)  # in the background: its outcome settles the reload (_reload_settled)
        elif new.model != old.model:
            p.set_params(new)
            log.info("reload: thresholds updated without restarting the worker")
        for section in ("metrics", "mqtt", "webhook"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: changes to '%s' take effect at the next restart", section)
        if (new.web.enabled, new.web.token) != (old.web.enabled, old.web.token):
            log.warning("reload: web.enabled and web.token take effect at the next restart")
        if new.logging.level != old.logging.level:
            logging.getLogger().setLevel(new.logging.level.upper())
        p.settings = new  # in-flight limits, timeouts, backoff, retention: read from here from now on
        if new.pipeline != old.pipeline or new.engine.max_batch != old.engine.max_batch:
            p.reconfigure_readers()
        running = {r.name: (sid, r.settings) for sid, r in list(p.readers.items()) if sid not in p.retiring}
        wanted = {s.name: s for s in new.sources}
        retired, rescened = set(), False
        for name, (sid, current) in running.items():
            if name in wanted and wanted[name] != current and _stream(wanted[name]) == _stream(current):
                p.reconfigure_source(sid, wanted[name])  # zones, lines, detect_fps: the stream stays open
                rescened = True
            elif name not in wanted or wanted[name] != current:
                log.info("reload: %s source '%s'", "removing" if name not in wanted else "restarting", name)
                p.retire(sid)
                retired.add(name)
        if new.sinks != old.sinks or new.web != old.web or new.tracking != old.tracking or rescened:
            p.replace_outputs()  # the sources that keep running get new outputs (new files) in place
            log.info("reload: outputs reopened with the new sink, tracking or zone settings")
        for name, src in wanted.items():
            if name not in running or name in retired:
                try:
                    p.add_source(src)
                    log.info("reload: started source '%s'", name)
                except UserError as exc:
                    log.error("reload: source '%s' not started: %s", name, exc)
        self.settings = new


def _stream(src) -> dict:
    """What opening a source depends on: everything but its zones, lines and detection rate."""
    return src.model_dump(exclude={"zones", "lines", "detect_fps"})
