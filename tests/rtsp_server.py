"""A real RTSP server on 127.0.0.1 for the reconnection tests: GStreamer's gst-rtsp-server, through
Debian's python3-gi (run with the system Python: `/usr/bin/python3 tests/rtsp_server.py PORT`).

Serves rtsp://127.0.0.1:PORT/live: a 320x240, 25 fps moving test pattern as RTP/JPEG. PORT 0 lets the
system pick one; the server prints "ready PORT" with the port it bound. With RTSP_AUTH=user:password in the
environment it answers only clients that log in with those (basic authentication).
"""

import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1,"
            "format=I420 ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )")


def main() -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    if os.environ.get("RTSP_AUTH"):
        user, _, password = os.environ["RTSP_AUTH"].partition(":")
        auth, token = GstRtspServer.RTSPAuth(), GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        factory.add_role_from_structure(Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{sys.argv[1]}")
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
