"""Config models for events out: the `mqtt` section (Home Assistant, Node-RED) and the `webhook` section.
Strict like every section (settings.py): unknown keys rejected, errors carry the YAML line. `${VAR}` in the
password (or any value) is expanded when the file is loaded, before these models see it (pipeline/secrets.py)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from pipeline.settings_tracking import Strict

class MqttTlsSettings(Strict):
    ca: Optional[Path] = Field(None, description="CA certificate file the broker's certificate is checked against")
    cert: Optional[Path] = Field(None, description="Client certificate file (mutual TLS)")
    key: Optional[Path] = Field(None, description="Client key file (mutual TLS)")
    insecure: bool = Field(False, description="Skip the broker hostname check (self-signed test brokers only)")

    @field_validator("ca", "cert", "key")
    @classmethod
    def _exists(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v


class MqttSettings(Strict):
    enabled: bool = Field(True, description="With an mqtt section present; false switches it off")
    host: str = Field(min_length=1, description="Broker host name or address")
    port: int = Field(1883, ge=1, le=65535)
    username: Optional[str] = Field(None, description="Broker user")
    password: Optional[str] = Field(None, description="Broker password; write ${VAR} to keep it out of the file "
                                    "(pipeline/secrets.py; never logged)")
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    tls: Optional[MqttTlsSettings] = Field(None, description="TLS to the broker (port 8883 usually)")
    topic_prefix: str = Field("perceptd", min_length=1, description="Topics are <topic_prefix>/<device>/...")
    device: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "perceptd",
                        description="This daemon's name in topics and in Home Assistant (default: the host name)")
    discovery: bool = Field(True, description="Publish Home Assistant MQTT discovery configs")
    discovery_prefix: str = Field("homeassistant", min_length=1)
    labels: tuple[str, ...] = Field((), description="Labels that get count sensors (empty: the model's labels, "
                                    "up to 10, else each label once it is first seen)")
    stats_interval_s: float = Field(15.0, gt=0, le=3600, description="How often <prefix>/stats is published")
    buffer: int = Field(1000, ge=10, le=1_000_000, description="Messages kept while the broker is away; beyond "
                        "it the oldest are dropped (counted)")
    keepalive_s: int = Field(30, ge=5, le=3600)

    @field_validator("topic_prefix", "device", "discovery_prefix")
    @classmethod
    def _topic_part(cls, v: str) -> str:
        if any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("no '+', '#', or leading/trailing '/' in a topic part")
        return v


class WebhookSettings(Strict):
    url: str = Field(min_length=1, description="Each track event is POSTed here as JSON")
    timeout_s: float = Field(5.0, gt=0, le=120)
    retries: int = Field(3, ge=0, le=100, description="Attempts after the first, with doubling delays")
    buffer: int = Field(1000, ge=10, le=1_000_000, description="Events waiting to be sent; beyond it the oldest "
                        "are dropped (counted)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("give an http:// or https:// URL")
        return v
