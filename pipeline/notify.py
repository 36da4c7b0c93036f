"""systemd's sd_notify protocol: datagrams of KEY=VALUE lines to $NOTIFY_SOCKET. Without the variable
(not under systemd, or Type=simple) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):  # abstract namespace socket
            self._address = "\0" + path[1:]
        elif path.startswith("/"):
            self._address = path
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # The watchdog applies to the main process only; WATCHDOG_PID names it when set.
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields) -> bool:
        """notify(READY=1, STATUS="...") -> True when sent. Never raises: a lost notification is logged."""
        if self._sock is None:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self._address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd 253+) match the reload to this message.
        import time

        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
