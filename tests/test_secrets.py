"""`${VAR}` in the config through the real CLI: a camera password and an MQTT password from the environment
and from a systemd credential, checked by a real RTSP server and a real broker that let only those in; what
the variables hold never in the log or in an error; unset and malformed references as one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, perceptd_cmd, perceptd_env, read_jsonl
from tests.daemon import Daemon
from tests.test_mqtt import Broker
from tests.test_service import need, rtsp_server_available

CAM_PW = "cam-Pa55w0rd-9x"
MQTT_PW = "mqtt-s3cret-from-a-credential"
ODD_PW = "odd/pw#with@chars"  # unencoded '/', '#', '@' mislead URL parsing: only the mask hides all of it


def check_config(cfg: Path, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    full = perceptd_env(tmp_path / "cache")
    full.update(env)
    return subprocess.run(perceptd_cmd("check-config", str(cfg)), env=full, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def rtsp_with_login(tmp_path):
    """The test RTSP server, answering only viewer:CAM_PW."""
    need(rtsp_server_available(), "GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi)")
    server = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"), "0"],
                              env={"RTSP_AUTH": f"viewer:{CAM_PW}", "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    word, _, port = server.stdout.readline().strip().partition(" ")
    assert word == "ready", "the RTSP server did not start"
    yield int(port)
    server.kill()
    server.wait()


def test_secrets_when_env_and_credential_fill_camera_and_mqtt_passwords_both_log_in_and_never_show(
        rtsp_with_login, tmp_path, cache_dir):
    pytest.importorskip("paho.mqtt")
    broker = Broker(tmp_path, users={"perceptd": MQTT_PW})
    creds = tmp_path / "credentials"  # what systemd makes of LoadCredential=MQTT_PASSWORD:/etc/...
    creds.mkdir()
    write(creds / "MQTT_PASSWORD", MQTT_PW + "\n")  # `echo pw > file`: the newline is not the password's
    cam = {"name": "cam", "uri": "rtsp://viewer:${CAM_PASSWORD}@127.0.0.1:%d/live" % rtsp_with_login,
           "max_frames": 25}
    odd = {"name": "odd", "uri": "rtsp://viewer:${ODD_PASSWORD}@127.0.0.1:1/live"}  # nothing listens there
    mqtt = {"host": "127.0.0.1", "port": broker.port, "username": "perceptd", "password": "${MQTT_PASSWORD}"}
    try:
        with Daemon(tmp_path, cache_dir, [cam, odd], mqtt=mqtt, pipeline={"reconnect_max_attempts": 1},
                    env={"CAM_PASSWORD": CAM_PW, "ODD_PASSWORD": ODD_PW, "CREDENTIALS_DIRECTORY": str(creds)}) as d:
            d.start()
            d.wait_log(r"mqtt: connected to 127\.0\.0\.1", timeout=60)
            assert d.proc.wait(120) == 0, d.log
    finally:
        broker.stop()
    assert read_jsonl(d.out / "cam.jsonl")  # frames came: the server took the expanded password
    assert "source 'cam': opened network rtsp://viewer:***@127.0.0.1" in d.log
    assert "source 'odd': cannot open rtsp://viewer:***@127.0.0.1:1/live" in d.log
    for secret in (CAM_PW, MQTT_PW, ODD_PW, "Pa55w0rd", "s3cret", "with@chars", "pw#"):
        assert secret not in d.log, secret
    assert "u'perceptd'" in broker.log.read_text()  # mosquitto let it in as that user


def test_secrets_when_env_and_credential_both_have_the_name_the_environment_wins(carphone, tmp_path, cache_dir):
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "OUT_NAME", "from-credential")
    sinks = {"output_dir": str(tmp_path / "${OUT_NAME}" / "$${literal}"), "video": {"enabled": False}}
    source = {"name": "car", "uri": str(carphone), "max_frames": 5}
    with Daemon(tmp_path, cache_dir, [source], sinks=sinks,
                env={"OUT_NAME": "from-environment", "CREDENTIALS_DIRECTORY": str(creds)}) as d:
        d.start(wait_ready=False)
        assert d.proc.wait(120) == 0, d.log
    # $${ is a literal ${: the directory is named "${literal}"
    assert len(read_jsonl(tmp_path / "from-environment" / "${literal}" / "car.jsonl")) == 5
    assert not (tmp_path / "from-credential").exists()


def test_check_config_when_a_variable_is_unset_exits_2_with_one_line_naming_key_line_and_variable(tmp_path):
    cfg = write(tmp_path / "c.yaml", "sources:\n  - name: cam\n    uri: rtsp://admin:${CAM_PASSWORD}@cam/x\n")
    proc = check_config(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}, tmp_path)  # no such credential either
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"perceptd: error: {cfg}:3: sources[0].uri: environment variable CAM_PASSWORD is "
                               "not set"), lines[0]
    assert "LoadCredential=CAM_PASSWORD:" in lines[0] and "${CAM_PASSWORD:-default}" in lines[0]


def test_check_config_when_a_reference_is_malformed_exits_2_naming_the_key(tmp_path):
    for written in ("${CAM PASSWORD}", "${CAM_PASSWORD", "${A:-${B}}", "${}"):
        cfg = write(tmp_path / "c.yaml", f"sources: [a.mp4]\nmqtt:\n  host: h\n  password: '{written}'\n")
        proc = check_config(cfg, {}, tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{cfg}:4: mqtt.password: malformed ${{...}}" in proc.stderr, (written, proc.stderr)


def test_check_config_when_an_expanded_value_is_invalid_shows_the_reference_never_the_value(tmp_path):
    cases = {  # key: (section, value from the environment, what the error must say)
        "ca": ({"mqtt": {"host": "h", "tls": {"ca": "${CA_FILE}"}}}, "/nonexistent/secret-ca-XYZ.pem",
               "mqtt.tls.ca: file not found: ${CA_FILE} (got '${CA_FILE}')"),
        "url": ({"webhook": {"url": "${HOOK_URL}"}}, "ftp://hooks.example/T0KEN-XYZ",
                "webhook.url: give an http:// or https:// URL (got '${HOOK_URL}')"),
        "port": ({"mqtt": {"host": "h", "port": "${MQTT_PORT}"}}, "99999",
                 "mqtt.port: Input should be less than or equal to 65535 (got '${MQTT_PORT}')"),
    }
    for key, (section, value, expected) in cases.items():
        cfg = write(tmp_path / "c.yaml", yaml.safe_dump({"sources": ["a.mp4"], **section}))
        env = {"CA_FILE": value, "HOOK_URL": value, "MQTT_PORT": value}
        proc = check_config(cfg, env, tmp_path)
        assert proc.returncode == 2 and expected in proc.stderr, (key, proc.stderr)
        assert value not in proc.stderr and "XYZ" not in proc.stderr, (key, proc.stderr)


def test_check_config_when_defaults_and_plain_dollars_are_written_takes_them_as_they_are(tmp_path):
    # `$` outside `${` is an ordinary character (passwords need no escaping); an empty variable takes the
    # default, as in the shell.
    cfg = write(tmp_path / "c.yaml", yaml.safe_dump({
        "sources": ["a.mp4"], "mqtt": {"host": "${MQTT_HOST:-127.0.0.1}", "password": "pa$$word$", "port":
                                       "${MQTT_PORT:-1883}", "username": "${MQTT_USER:-}"}}))
    proc = check_config(cfg, {"MQTT_HOST": ""}, tmp_path)
    assert proc.returncode == 0, proc.stderr

    from pipeline.settings import load_settings

    s = load_settings(cfg).mqtt
    assert (s.host, s.password, s.port, s.username) == ("127.0.0.1", "pa$$word$", 1883, "")
