"""Track events POSTed as JSON to a URL (`webhook.url`), one request per event, from a thread of its own: a
slow or failing endpoint never slows the pipeline. Events wait in a bounded buffer (the oldest dropped and
counted); a failed POST is retried with doubling delays, then counted as failed. The URL's credentials
(user:password@) are never logged."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque

from pipeline import __version__
from pipeline.metrics import Metrics
from pipeline.redact import redact_uri
from pipeline.settings_events import WebhookSettings

log = logging.getLogger(__name__)


class Webhook:
    def __init__(self, settings: WebhookSettings, metrics: Metrics):
        self.settings = settings
        self.shown = redact_uri(settings.url)
        # urllib takes no user:password@ in a URL: it becomes a basic-auth header.
        parts = urllib.parse.urlsplit(settings.url)
        self._url = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port
                                                                                     else "")))
        self._headers = {"Content-Type": "application/json", "User-Agent": f"perceptd/{__version__}"}
        if parts.username is not None:
            token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        self._sent = metrics.webhook_sent
        self._buffer: deque[dict] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failing = False
        self._busy = False  # a POST (or its retries) under way
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def event(self, source: str, event: dict) -> None:
        with self._cond:
            if len(self._buffer) >= self.settings.buffer:
                self._buffer.popleft()
                self._sent.labels("dropped").inc()
            self._buffer.append(event)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is waiting (within `timeout`), then stop."""
        deadline = time.monotonic() + timeout
        while (self._buffer or self._busy) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._buffer:
                    self._cond.wait(0.5)
                    continue
                event = self._buffer.popleft()
                self._busy = True
            try:
                self._deliver(event)
            finally:
                self._busy = False

    def _deliver(self, event: dict) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        delay = 0.5
        for attempt in range(self.settings.retries + 1):
            request = urllib.request.Request(self._url, data=body, method="POST", headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                    response.read()
                self._sent.labels("ok").inc()
                if self._failing:
                    log.info("webhook %s: delivering again", self.shown)
                    self._failing = False
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if attempt == self.settings.retries:
                    self._sent.labels("failed").inc()
                    if not self._failing:  # once per state change, not once per event
                        log.warning("webhook %s: %s; events are retried %d times, then counted as failed",
                                    self.shown, why, self.settings.retries)
                        self._failing = True
                    return
                if self._stop.wait(delay):  # stopping: no more retries
                    self._sent.labels("failed").inc()
                    return
                delay = min(delay * 2, 30.0)
