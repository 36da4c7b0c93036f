"""Where a source's track events and live counts go besides its own files: MQTT and the webhook. Each
destination buffers and sends from its own thread, so a call here never waits on the network."""

from __future__ import annotations


class EventsOut:
    def __init__(self, mqtt=None, webhook=None):
        self.mqtt = mqtt
        self.webhook = webhook

    def __bool__(self) -> bool:
        return self.mqtt is not None or self.webhook is not None

    def event(self, source: str, event: dict) -> None:
        if self.mqtt is not None:
            self.mqtt.event(source, event)
        if self.webhook is not None:
            self.webhook.event(source, event)

    def counts(self, source: str, counts: dict[str, int]) -> None:
        if self.mqtt is not None:
            self.mqtt.counts(source, counts)

    def source_state(self, source: str, up: bool) -> None:
        if self.mqtt is not None:
            self.mqtt.source_state(source, up)

    def start(self) -> None:
        for out in (self.mqtt, self.webhook):
            if out is not None:
                out.start()

    def stop(self) -> None:
        for out in (self.mqtt, self.webhook):
            if out is not None:
                out.stop()
