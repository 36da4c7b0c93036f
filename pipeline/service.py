"""Running as a service: signals, systemd notifications and watchdog, reload, health.

SIGTERM/SIGINT stop the sources, drain frames in flight (within service.shutdown_grace_s), finalise every
output and exit 0; a second signal exits at once. SIGHUP re-reads the config: sources added, removed or
changed, thresholds and sinks updated, the worker kept unless the model or engine changed; an invalid
file is logged and the running config stays.
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
from pipeline.sinks.files import check_output_dir
from pipeline.spec import engine_changed
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
    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading %s", self.config_path or "the built-in defaults")
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
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
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
        p.open(routes=routes, streams=streams, access=access)
        self._collector = ResourceCollector(lambda: p.worker.pid if p.worker else None)
        p.metrics.registry.register(self._collector)
        try:
            p.start()
            if self._signals:
                p.interrupt()
            self.notifier.ready(self._status_line())
            if self.notifier.watchdog_s and self.settings.service.watchdog:
                threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
            p.run(Progress(self.settings.sinks.progress, self.settings.sinks.log_interval_s),
                  drain_timeout_s=self.settings.service.shutdown_grace_s, tick=self._tick)
        finally:
            self.notifier.stopping()
            p.close(linger_s=self.settings.metrics.linger_s)
            self._collector.close()
            self.notifier.close()
        if p.failure is not None:
            raise p.failure
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
        """WATCHDOG=1 every half period, but only while frames move through the worker (or nothing is
        waiting for it) and the main loop is alive: a hung worker or a stuck pipeline lets systemd act."""
        period = self.notifier.watchdog_s
        while not self.pipeline.stopping:
            now = time.monotonic()
            p = self.pipeline
            moving = (time.monotonic_ns() - p.last_result_ns) / 1e9 < period or p.pending() == 0
            if moving and now - self._heartbeat < period:
                self.notifier.watchdog()
            else:
                log.warning("watchdog: no frame through the worker for %.1f s with %d waiting; not pinging",
                            (time.monotonic_ns() - p.last_result_ns) / 1e9, p.pending())
            time.sleep(period / 2)

    def _status_line(self) -> str:
        parts = [f"{name} {s['state']} {s['fps']:.1f} fps" for name, s in self.pipeline.status().items()]
        return "; ".join(parts) or "no sources"

    def _readyz(self) -> tuple[int, bytes, str]:
        p = self.pipeline
        body = {"ready": p.ready, "worker": {"pid": p.worker.pid if p.worker else None,
                                             **(p.worker.info if p.worker else {})},
                "sources": p.status()}
        return (200 if p.ready else 503), json.dumps(body).encode(), "application/json"

    # reload ------------------------------------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.reloading()
        try:
            self._apply(self.load())
        except (ConfigError, UserError) as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
        finally:
            self.notifier.ready(self._status_line())

    def _apply(self, new: Settings) -> None:
        old, p = self.settings, self.pipeline
        if new.sinks.output_dir != old.sinks.output_dir:
            p.out_dir = check_output_dir(new.sinks.output_dir)
        if engine_changed(old, new):
            p.replace_worker(new)  # UserError here leaves everything as it was
            log.info("reload: model/engine changed; the worker is replaced between batches")
        elif new.model != old.model:
            p.set_params(new)
            log.info("reload: thresholds updated without restarting the worker")
        for section in ("metrics", "service"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: changes to '%s' take effect at the next restart", section)
        if new.logging.level != old.logging.level:
            logging.getLogger().setLevel(new.logging.level.upper())
        p.settings = new
        restart_all = new.sinks != old.sinks or new.pipeline != old.pipeline
        running = {r.name: (sid, r.settings) for sid, r in list(p.readers.items()) if not r._stop.is_set()}
        wanted = {s.name: s for s in new.sources}
        for name, (sid, current) in running.items():
            if name not in wanted or wanted[name] != current or restart_all:
                log.info("reload: %s source '%s'", "removing" if name not in wanted else "restarting", name)
                p.retire(sid)
        for name, src in wanted.items():
            if name not in running or running[name][1] != src or restart_all:
                try:
                    p.add_source(src)
                    log.info("reload: started source '%s'", name)
                except UserError as exc:
                    log.error("reload: source '%s' not started: %s", name, exc)
        self.settings = new
