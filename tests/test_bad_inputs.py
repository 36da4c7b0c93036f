"""The CLI's bad-input contract, through the real `perceptd` process.

Every bad input exits 2 with exactly one "perceptd: error:" line naming the file/key/URI and the fix, no
traceback, no credentials, and the output directory exactly as it was (earlier outputs byte-identical, no
partial files). All of these fail before the inference worker starts, except the ONNX-looking garbage model.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import cv2
import pytest

from tests.conftest import REPO, free_port, photo_bgr, run_perceptd

ERROR = "perceptd: error:"


def user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert the bad-input contract; return the error line. Each needle must appear in that line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (dot-files included) -> its bytes."""
    # The daemon's lock file holds no output (only the pid of whoever held the directory last).
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".perceptd.lock"}


@pytest.fixture
def out_dir(tmp_path, carphone) -> Path:
    """An output directory holding a previous run's outputs for a source named 'carphone'."""
    d = tmp_path / "out"
    d.mkdir()
    shutil.copyfile(carphone, d / "carphone.mp4")
    (d / "carphone.jsonl").write_text('{"source": "carphone", "frame": 0, "detections": []}\n')
    return d


@pytest.fixture
def untouched(out_dir):
    """Yields the output dir; afterwards asserts it is byte-identical, with no new (partial) files."""
    before = snapshot(out_dir)
    assert set(before) == {"carphone.mp4", "carphone.jsonl"}
    yield out_dir
    after = snapshot(out_dir)
    assert not [name for name in after if ".partial" in name], sorted(after)
    assert sorted(after) == sorted(before)
    for name, data in before.items():
        assert after[name] == data, f"{name} changed"


def run(*args: str, cache_dir: Path, out: Path) -> subprocess.CompletedProcess:
    return run_perceptd("run", *args, "--output", str(out), "--metrics-port", "0", cache_dir=cache_dir,
                        timeout=60)


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# ------------------------------------------------------------------------------------ config files

@pytest.fixture
def bad_configs(tmp_path, carphone) -> dict[str, Path]:
    d = tmp_path / "configs"
    d.mkdir()
    return {
        "syntax": write_config(d / "syntax.yaml", f"""
            sources:
              - name: carphone
                uri: {carphone}
               loop: [true
            """),
        "unknown_key": write_config(d / "unknown_key.yaml", f"""
            sources:
              - name: carphone
                uri: {carphone}
            model:
              confidance: 0.5
            """),
        "wrong_type": write_config(d / "wrong_type.yaml", f"""
            sources:
              - name: carphone
                uri: {carphone}
            engine:
              max_batch: lots
            """),
        "credentials": write_config(d / "credentials.yaml", """
            sources:
              - name: carphone
                uri: rtsp://admin:s3cret@127.0.0.1:1/stream
            model:
              confidance: 0.5
            """),
        "credentials_bad_value": write_config(d / "credentials_bad_value.yaml", """
            sources:
              - uri: rtsp://admin:s3cret@127.0.0.1:1/stream
                loop: maybe
            """),
    }


def test_run_when_config_has_bad_yaml_syntax_names_file_and_line(bad_configs, untouched, cache_dir):
    path = bad_configs["syntax"]
    line = user_error(run("-c", str(path), cache_dir=cache_dir, out=untouched), "invalid YAML")
    assert line.startswith(f"{ERROR} {path}:")
    assert int(line.removeprefix(f"{ERROR} {path}:").split(":")[0]) in (4, 5)


def test_run_when_config_has_an_unknown_key_suggests_the_right_one(bad_configs, untouched, cache_dir):
    path = bad_configs["unknown_key"]
    user_error(run("-c", str(path), cache_dir=cache_dir, out=untouched),
               f"{path}:5:", "model.confidance", "did you mean 'confidence'")


def test_run_when_config_value_has_the_wrong_type_names_key_line_and_value(bad_configs, untouched, cache_dir):
    path = bad_configs["wrong_type"]
    user_error(run("-c", str(path), cache_dir=cache_dir, out=untouched),
               f"{path}:5:", "engine.max_batch", "'lots'")


def test_run_when_config_file_does_not_exist_names_it(tmp_path, untouched, cache_dir):
    path = tmp_path / "nowhere" / "perceptd.yaml"
    user_error(run("-c", str(path), cache_dir=cache_dir, out=untouched), str(path), "not found")


@pytest.mark.parametrize("which", ["syntax", "unknown_key", "wrong_type", "credentials", "credentials_bad_value"])
def test_check_config_when_config_is_bad_exits_2(bad_configs, which, cache_dir):
    path = bad_configs[which]
    proc = run_perceptd("check-config", str(path), cache_dir=cache_dir, timeout=60)
    user_error(proc, str(path))
    assert "OK" not in proc.stdout


def test_check_config_when_file_does_not_exist_exits_2(tmp_path, cache_dir):
    path = tmp_path / "missing.yaml"
    user_error(run_perceptd("check-config", str(path), cache_dir=cache_dir, timeout=60), str(path), "not found")


def test_check_config_when_given_the_shipped_config_exits_0(cache_dir):
    path = REPO / "config" / "perceptd.yaml"
    if not path.is_file():
        pytest.skip("config/perceptd.yaml is not there yet")
    proc = run_perceptd("check-config", str(path), cache_dir=cache_dir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert ERROR not in proc.stderr


# ------------------------------------------------------------------------------------ credentials

def test_run_when_config_with_credentials_fails_validation_never_shows_the_password(bad_configs, untouched,
                                                                                     cache_dir):
    proc = run("-c", str(bad_configs["credentials"]), cache_dir=cache_dir, out=untouched)
    user_error(proc, "did you mean 'confidence'")
    assert "s3cret" not in proc.stderr and "s3cret" not in proc.stdout


def test_check_config_when_a_source_with_credentials_has_a_bad_value_never_shows_the_password(bad_configs,
                                                                                             cache_dir):
    proc = run_perceptd("check-config", str(bad_configs["credentials_bad_value"]), cache_dir=cache_dir, timeout=60)
    line = user_error(proc, "sources[0].loop", "'maybe'")
    assert "more error" not in line  # the only source failing is one error, not also "sources: too short"
    assert "s3cret" not in proc.stderr and "s3cret" not in proc.stdout


def test_check_config_when_the_password_holds_an_at_sign_no_part_of_it_shows(tmp_path, cache_dir):
    # Not a list, so the error quotes the URI itself; FFmpeg reads "hunter@2xyzzy" as the password.
    path = write_config(tmp_path / "c.yaml", "sources: rtsp://admin:hunter@2xyzzy@cam.local/live\n")
    proc = run_perceptd("check-config", str(path), cache_dir=cache_dir, timeout=60)
    user_error(proc, f"{path}:1:", "sources", "rtsp://admin:***@cam.local/live")
    for part in ("hunter", "2xyzzy"):
        assert part not in proc.stderr and part not in proc.stdout


def test_run_when_a_stream_with_credentials_refuses_retries_and_never_shows_the_password(untouched, cache_dir,
                                                                                       tmp_path):
    """A live source that is down is not a configuration error: it is retried with backoff (a camera
    may come up after the daemon), SIGTERM still exits 0, and nothing earlier is replaced."""
    import signal
    import time

    from tests.conftest import perceptd_cmd, perceptd_env

    port = free_port()  # nothing listens there: the connection is refused at once
    log = tmp_path / "log.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(perceptd_cmd("run", "--source", f"carphone=rtsp://admin:s3cret@127.0.0.1:{port}/s",
                                             "--output", str(untouched), "--metrics-port", "0"),
                                env=perceptd_env(cache_dir), stdout=err, stderr=err, cwd=REPO)
        deadline = time.monotonic() + 60
        while log.read_text().count("retrying in") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert text.count("retrying in") >= 2, text
    assert f"rtsp://admin:***@127.0.0.1:{port}/s" in text
    assert "s3cret" not in text


# ------------------------------------------------------------------------------------ sources

def test_run_when_the_source_file_is_missing_names_it(tmp_path, untouched, cache_dir):
    missing = tmp_path / "no-such-clip.mp4"
    user_error(run("--source", f"carphone={missing}", cache_dir=cache_dir, out=untouched),
               "source 'carphone'", str(missing), "not found")


def test_run_when_the_source_is_random_bytes_named_mp4_says_it_is_not_a_video(tmp_path, untouched, cache_dir):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(64 * 1024))
    user_error(run("--source", f"carphone={junk}", cache_dir=cache_dir, out=untouched),
               "source 'carphone'", str(junk), "not a video")


def test_run_when_the_source_is_a_png_says_it_is_a_still_image(photos, untouched, cache_dir):
    user_error(run("--source", f"carphone={photos['astronaut']}", cache_dir=cache_dir, out=untouched),
               "source 'carphone'", str(photos["astronaut"]), "still image")


def test_run_when_the_source_is_a_jpeg_named_mp4_says_it_is_a_still_image(tmp_path, untouched, cache_dir):
    ok, jpeg = cv2.imencode(".jpg", photo_bgr("coffee"))
    assert ok
    disguised = tmp_path / "coffee.mp4"
    disguised.write_bytes(jpeg.tobytes())
    user_error(run("--source", f"carphone={disguised}", cache_dir=cache_dir, out=untouched),
               str(disguised), "still image")


def test_run_when_the_source_is_an_empty_file_says_so(tmp_path, untouched, cache_dir):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    user_error(run("--source", f"carphone={empty}", cache_dir=cache_dir, out=untouched), str(empty), "empty")


def test_run_when_the_source_is_a_directory_says_so(tmp_path, untouched, cache_dir):
    user_error(run("--source", f"carphone={tmp_path}", cache_dir=cache_dir, out=untouched),
               str(tmp_path), "directory")


def test_run_when_the_sample_is_unknown_lists_the_known_ones(untouched, cache_dir):
    user_error(run("--source", "carphone=sample:nope", cache_dir=cache_dir, out=untouched),
               "sample:nope", "sample:carphone")


def test_run_when_the_second_source_is_bad_names_it_and_writes_nothing(carphone, tmp_path, untouched, cache_dir):
    missing = tmp_path / "gone.mp4"
    user_error(run("--source", f"carphone={carphone}", "--source", f"door={missing}", cache_dir=cache_dir,
                   out=untouched), "source 'door'", str(missing))


# ------------------------------------------------------------------------------------ models

def test_run_when_the_model_path_does_not_exist_names_it(carphone, tmp_path, untouched, cache_dir):
    model = tmp_path / "models" / "yolov8n.onnx"
    user_error(run("--source", f"carphone={carphone}", "--model", str(model), cache_dir=cache_dir, out=untouched),
               "model", str(model), "not found")


def test_run_when_the_model_name_is_unknown_lists_the_builtins(carphone, untouched, cache_dir):
    user_error(run("--source", f"carphone={carphone}", "--model", "retinafase", cache_dir=cache_dir,
                   out=untouched), "'retinafase'", "retinaface")


def test_run_when_the_model_is_a_text_file_named_onnx_says_it_is_not_onnx(carphone, tmp_path, untouched,
                                                                          cache_dir):
    model = tmp_path / "model.onnx"
    model.write_text("this is not a network\n" * 20)
    user_error(run("--source", f"carphone={carphone}", "--model", str(model), cache_dir=cache_dir, out=untouched),
               str(model), "not an ONNX model")


def onnx_looking_garbage(path: Path) -> Path:
    """Starts like a ModelProto (field 1 varint, field 2 string), then random bytes: passes the cheap check,
    so only the runtime inside the worker can reject it."""
    path.write_bytes(b"\x08\x07\x12\x06pytest" + os.urandom(4096))
    return path


def test_run_when_the_model_is_onnx_looking_garbage_the_worker_rejects_it(carphone, tmp_path, untouched,
                                                                         cache_dir):
    model = onnx_looking_garbage(tmp_path / "broken.onnx")
    config = write_config(tmp_path / "c.yaml", f"""
        sources:
          - name: carphone
            uri: {carphone}
        metrics:
          enabled: false
        """)
    user_error(run("-c", str(config), "--model", str(model), cache_dir=cache_dir, out=untouched), str(model))


def test_run_when_the_worker_rejects_the_model_with_metrics_on_still_exits_2(carphone, tmp_path, untouched,
                                                                            cache_dir):
    model = onnx_looking_garbage(tmp_path / "broken.onnx")
    proc = run_perceptd("run", "--source", f"carphone={carphone}", "--model", str(model), "--output",
                        str(untouched), "--metrics-port", "0", cache_dir=cache_dir, timeout=60)
    user_error(proc, str(model))


def test_run_when_the_labels_file_does_not_exist_names_it(carphone, tmp_path, untouched, cache_dir):
    labels = tmp_path / "coco.names"
    user_error(run("--source", f"carphone={carphone}", "--labels", str(labels), cache_dir=cache_dir,
                   out=untouched), "model.labels", str(labels), "not found")


def test_run_when_the_labels_file_is_empty_says_so(carphone, tmp_path, untouched, cache_dir):
    labels = tmp_path / "coco.names"
    labels.write_text("\n\n")
    user_error(run("--source", f"carphone={carphone}", "--labels", str(labels), cache_dir=cache_dir,
                   out=untouched), "model.labels", str(labels), "no labels")


# ------------------------------------------------------------------------------------ the rest of start-up

def test_run_when_the_metrics_port_is_taken_says_which_and_keeps_outputs(carphone, untouched, cache_dir):
    # This check comes after the output directory is checked: the one bad input that gets that far.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_perceptd("run", "--source", f"carphone={carphone}", "--output", str(untouched),
                            "--metrics-port", str(port), cache_dir=cache_dir, timeout=60)
    user_error(proc, f"127.0.0.1:{port}", "metrics.port")


def test_run_when_max_frames_is_zero_says_so(carphone, untouched, cache_dir):
    user_error(run("--source", f"carphone={carphone}", "--max-frames", "0", cache_dir=cache_dir, out=untouched),
               "--max-frames")


def test_run_when_source_names_repeat_on_the_command_line_blames_the_command_line(carphone, untouched,
                                                                                  cache_dir):
    user_error(run("--source", f"carphone={carphone}", "--source", f"carphone={carphone}", cache_dir=cache_dir,
                   out=untouched), "command line", "'carphone' is used twice")
