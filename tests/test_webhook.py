"""The webhook: every track event POSTed as JSON to a real HTTP server on 127.0.0.1 (port 0), in order; an
endpoint that fails is retried, then counted, and never slows the pipeline."""

from __future__ import annotations

import http.server
import json
import threading

from tests.conftest import read_jsonl
from tests.daemon import Daemon
from tests.test_tracking_daemon import crossing_clip  # noqa: F401  (a fixture)


class Endpoint:
    """Answers 200 and keeps each JSON body; `fail` makes it answer 503 instead."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.fail = threading.Event()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.auth = self.headers.get("Authorization")
                if endpoint.fail.is_set():
                    self.send_response(503)
                else:
                    endpoint.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_when_events_happen_posts_each_one_in_order(crossing_clip, tmp_path, cache_dir):  # noqa: F811
    clip, _ = crossing_clip
    endpoint = Endpoint()
    source = {"name": "hall", "uri": str(clip), "lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]]}]}
    try:
        with Daemon(tmp_path, cache_dir, [source], webhook={"url": f"http://u:pw@127.0.0.1:{endpoint.port}/hook"},
                    metrics={"linger_s": 60}) as d:
            d.start()
            d.wait_log(r"source 'hall': \d+ captured", timeout=120)
            m = d.scrape()
            assert d.stop() == 0, d.log
    finally:
        endpoint.close()
    logged = read_jsonl(d.out / "hall.events.jsonl")
    assert endpoint.bodies == logged and [e["type"] for e in logged][0] == "new"
    assert endpoint.auth == "Basic dTpwdw=="  # u:pw, from the URL
    assert m['perceptd_webhook_sent_total{result="ok"}'] == len(logged)


def test_webhook_when_the_endpoint_fails_retries_then_counts_and_the_pipeline_goes_on(carphone, tmp_path, cache_dir):
    endpoint = Endpoint()
    endpoint.fail.set()
    source = {"name": "car", "uri": str(carphone), "max_frames": 60}
    try:
        with Daemon(tmp_path, cache_dir, [source], webhook={"url": f"http://u:s3cret@127.0.0.1:{endpoint.port}/x",
                                                            "retries": 1}, metrics={"linger_s": 60}) as d:
            d.start()
            d.wait_log(r"source 'car': \d+ captured", timeout=120)
            m = d.wait_metric(lambda m: m['perceptd_webhook_sent_total{result="failed"}'] >= 2, 30, "failures")
            assert d.stop() == 0, d.log
    finally:
        endpoint.close()
    assert d.accounting()["car"] == (60, 60, 0)  # every frame, whatever the endpoint did
    assert m['perceptd_webhook_sent_total{result="ok"}'] == 0 and endpoint.bodies == []
    assert d.log.count("webhook http://u:***@127.0.0.1") == 1  # logged once, credentials redacted
    assert "s3cret" not in d.log
