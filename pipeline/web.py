"""The live view: a page with one tile per source (MJPEG of the annotated frames, fps, latency, state),
its JSON feed, and optional access control. Everything is inline: no build step, no external assets."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import socket
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

PROTECTED = ("/", "/api/", "/stream/")
STALLED_VIEWER_S = 5.0  # a viewer whose socket takes no data for this long is dropped

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>perceptd</title>
<style>
 body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#ddd}
 header{padding:8px 14px;background:#1b1b1b;display:flex;gap:16px;align-items:baseline}
 header b{font-size:16px;color:#fff} #grid{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
 .tile{background:#1b1b1b;border-radius:6px;overflow:hidden;width:480px}
 .tile img{display:block;width:480px;height:360px;object-fit:contain;background:#000}
 .meta{display:flex;justify-content:space-between;padding:6px 10px}
 .sal{cursor:pointer;user-select:none}
 .up{color:#5c5}.down,.finished{color:#e55}.connecting{color:#db3}
</style></head><body>
<header><b>perceptd</b><span id="engine"></span></header>
<div id="grid"></div>
<script>
const q = location.search;  // carries ?token= to the streams and the feed when one is in use
const grid = document.getElementById('grid');
const tiles = {};
// The heat map toggle (sinks.overlay.saliency): each choice is its own stream, so nothing is drawn twice
// for a viewer and other viewers keep theirs.
function src(name, heat) {
  const p = new URLSearchParams(q); if (heat) p.set('saliency', '1');
  const qs = p.toString();
  return '/stream/' + encodeURIComponent(name) + '.mjpg' + (qs ? '?' + qs : '');
}
function tile(name) {
  const t = document.createElement('div'); t.className = 'tile'; t.dataset.source = name;
  t.innerHTML = '<img alt=""><div class="meta"><b></b><label class="sal" hidden><input type="checkbox" ' +
    'class="saliency-toggle" checked> heat map</label><span class="state"></span><span class="perf"></span></div>';
  t.querySelector('b').textContent = name;
  const box = t.querySelector('.saliency-toggle');
  box.onchange = () => { t.querySelector('img').src = src(name, box.checked); };
  grid.appendChild(t); return t;
}
function showSaliency(t, name, available) {
  const label = t.querySelector('.sal'), img = t.querySelector('img');
  if (img.getAttribute('src') !== null && label.hidden === !available) return;
  label.hidden = !available;
  img.src = src(name, available && t.querySelector('.saliency-toggle').checked);
}
async function refresh() {
  try {
    const r = await fetch('/api/status' + q); const s = await r.json();
    document.getElementById('engine').textContent = s.engine;
    for (const [name, src] of Object.entries(s.sources)) {
      const t = tiles[name] || (tiles[name] = tile(name));
      showSaliency(t, name, !!s.saliency);
      const st = t.querySelector('.state'); st.textContent = src.state; st.className = 'state ' + src.state;
      t.querySelector('.perf').textContent = src.fps.toFixed(1) + ' fps · ' + src.latency_ms.toFixed(0) + ' ms';
    }
    for (const name of Object.keys(tiles)) if (!(name in s.sources)) { tiles[name].remove(); delete tiles[name]; }
  } catch (e) {}
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class TokenAccess:
    """Bearer token, HTTP basic auth (any user, the token as password) or ?token= in the URL (so <img>
    tags and a bookmarked page work). Protects the page and streams; /metrics only when asked."""

    def __init__(self, token: str, protect_metrics: bool):
        self._token = token.encode()
        self._prefixes = PROTECTED + (("/metrics",) if protect_metrics else ())

    def protects(self, path: str) -> bool:
        return path == "/" or any(path.startswith(p) for p in self._prefixes if p != "/")

    def allows(self, handler: BaseHTTPRequestHandler) -> bool:
        header = handler.headers.get("Authorization", "")
        given = b""
        if header.startswith("Bearer "):
            given = header[7:].strip().encode()
        elif header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:].strip()).split(b":", 1)[-1]
            except ValueError:
                given = b""
        else:
            given = parse_qs(urlsplit(handler.path).query).get("token", [""])[0].encode()
        return hmac.compare_digest(given, self._token)


class LiveView:
    """Routes for the HTTP server, reading the running pipeline."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def routes(self) -> dict:
        return {"/": self.page, "/api/status": self.status}

    def streams(self) -> dict:
        return {"/stream/": self.stream}

    def page(self):
        return 200, PAGE.encode(), "text/html; charset=utf-8"

    def status(self):
        p = self.pipeline
        info = p.worker.info if p.worker else {}
        engine = f"{info.get('model', '')} · {info.get('backend', '')} {info.get('device', '')} {info.get('precision', '')}"
        body = {"engine": engine, "saliency": bool(info.get("saliency")), "sources": p.status()}
        return 200, json.dumps(body).encode(), "application/json"

    def stream(self, handler: BaseHTTPRequestHandler, rest: str) -> None:
        name = rest.removesuffix(".mjpg")
        preview = self.pipeline.preview(name)
        if preview is None:
            body = b"no such source\n"
            handler.send_response(404)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        # A browser that stops reading fills the socket buffer; a bounded send then fails and the viewer
        # is dropped, instead of a handler thread (or worse, the pipeline) waiting on it forever.
        handler.connection.settimeout(STALLED_VIEWER_S)
        # A small send buffer bounds what a stalled viewer holds in the kernel and lets the stall show.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        seq = 0
        heat = parse_qs(urlsplit(handler.path).query).get("saliency", ["0"])[0] == "1"
        with preview.watch(heat):
            while not self.pipeline.stopping:
                item = preview.next(seq, timeout=1.0, heat=heat)
                if item is None:
                    continue
                seq, jpeg = item
                try:
                    handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                        + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    handler.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
                    log.debug("live view of '%s': viewer gone", name)
                    return
