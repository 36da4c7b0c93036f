"""The output directory: names never reused, finalising never replaces a file, leftovers of a killed run
recovered (real writers killed with SIGKILL), and one daemon per directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.errors import UserError
from pipeline.sinks.outdir import OutputDir, partial_of
from tests.conftest import count_video_frames, read_jsonl


def opened(path) -> OutputDir:
    out = OutputDir(path)
    out.open()
    return out


def test_claim_when_names_are_taken_gives_stamped_then_numbered_stems(tmp_path):
    out = opened(tmp_path)
    assert out.claim("door", (".mp4", ".jsonl")) == "door"
    # Claimed but not created yet: a second source of the same name (a reload) must not get it.
    second = out.claim("door", (".mp4", ".jsonl"))
    assert second.startswith("door.") and second != "door"
    third = out.claim("door", (".mp4", ".jsonl"))
    assert third.startswith("door.") and third not in ("door", second)  # the same second numbered, or the next
    # A file of an earlier run (any suffix of the source's outputs, final or partial) takes the stem.
    (tmp_path / "gate.jsonl").write_text("{}\n")
    partial_of(tmp_path / "yard.mp4").write_bytes(b"x")
    fresh = OutputDir(tmp_path)  # another run's view of the directory: only the files count
    assert fresh.claim("gate", (".mp4", ".jsonl")) != "gate"
    assert fresh.claim("yard", (".mp4", ".jsonl")) != "yard"
    assert fresh.claim("gate", (".mp4",)) == "gate"  # only the suffixes asked about count
    out.close()


def test_finalise_when_the_final_name_exists_lands_elsewhere_and_keeps_the_old_file(tmp_path):
    out = opened(tmp_path)
    final = tmp_path / "door.jsonl"
    final.write_text("earlier run\n")
    partial = partial_of(final)
    partial.write_text("this run\n")
    landed = out.finalise(partial, final)
    assert landed != final and landed.name.startswith("door.") and landed.suffix == ".jsonl"
    assert final.read_text() == "earlier run\n" and landed.read_text() == "this run\n"
    assert not partial.exists()
    out.close()


def test_open_when_another_daemon_holds_the_directory_refuses_with_its_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pipeline.sinks.outdir import OutputDir
        OutputDir({str(tmp_path)!r}).open()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another perceptd \(pid {holder.pid}\)"):
            OutputDir(tmp_path).open()
    finally:
        holder.kill()
        holder.wait()
    opened(tmp_path).close()  # the lock went with the process


KILLED_WRITER = """
import os, sys
import cv2, numpy as np
path, fourcc = sys.argv[1], sys.argv[2]
w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 25, (320, 240))
assert w.isOpened()
for i in range(150):
    img = np.full((240, 320, 3), i % 255, np.uint8)
    cv2.putText(img, str(i), (40, 140), cv2.FONT_HERSHEY_SIMPLEX, 3, (0, 0, 255), 5)
    w.write(img)
if len(sys.argv) > 3:
    with open(sys.argv[3], "ab") as f:
        f.write(b'{"frame": 0}\\n{"frame": 1}\\n{"fra')  # a line cut in the middle
os.kill(os.getpid(), 9)
"""


def test_recover_when_a_killed_run_left_partial_files_finalises_what_can_be_read(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    mkv, mp4, events = (partial_of(tmp_path / n) for n in ("cam.mkv", "door.mp4", "door.jsonl"))
    for args in ((mkv, "mp4v", events), (mp4, "mp4v")):
        proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True)
        assert proc.returncode == -9, proc.stderr
    partial_of(tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "door.jsonl").write_text('{"earlier": true}\n')  # an earlier run's file of the same name
    before = (tmp_path / "door.jsonl").read_bytes()

    recovered = opened(tmp_path).recover() or []
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # nothing left unfinalised
    # Matroska plays up to where the writer died: recovered under its own name.
    assert "cam.mkv" in names and count_video_frames(tmp_path / "cam.mkv") > 50
    # An MP4 without its index does not play: kept, under a name that says so.
    assert "door.unfinished.mp4" in names
    # JSONL cut back to its whole lines, next to (not over) the earlier file.
    assert (tmp_path / "door.jsonl").read_bytes() == before
    logs = [p for p in tmp_path.glob("door.*.jsonl")]
    assert len(logs) == 1 and read_jsonl(logs[0]) == [{"frame": 0}, {"frame": 1}]
    assert "empty.jsonl" not in names
    assert recovered == []  # open() already recovered everything; a second pass finds nothing


def test_run_when_another_perceptd_writes_to_the_output_directory_exits_2_and_leaves_it_alone(
        carphone, tmp_path, cache_dir):
    from tests.conftest import run_perceptd
    from tests.daemon import Daemon

    with Daemon(tmp_path, cache_dir, [{"name": "car", "uri": str(carphone), "loop": True, "realtime": True}]) as first:
        first.start()
        first.wait_processed("car", 5)
        second = run_perceptd("run", "--source", str(carphone), "--output", str(first.out), "--metrics-port", "0",
                              cache_dir=cache_dir, timeout=120)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line == (f"perceptd: error: output directory {first.out} is in use by another perceptd "
                        f"(pid {first.proc.pid}); give each instance its own sinks.output_dir (or --output)")
        first.wait_processed("car", 5)  # untouched by the attempt
        assert first.stop() == 0
    assert not list(first.out.glob("carphone*")) and "Traceback" not in second.stderr
