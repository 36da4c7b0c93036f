"""Fault injection, outputs: restarts over earlier outputs, SIGKILL of the whole process group, a full disk
(a real tmpfs) and a directory that turns read-only. Each asserts survival, intact outputs and conserved
frames (the daemon's end-of-run accounting: captured = processed + dropped)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import count_video_frames, read_jsonl
from tests.daemon import Daemon, snapshot
from tests.test_service import need

LIVE = {"loop": True, "realtime": True}


def outputs(directory: Path, stem: str, suffix: str) -> list[Path]:
    """A source's finalised files of one kind, oldest first (`car.mp4` sorts after `car.2026...` by name);
    `.jsonl` means the per-frame logs, `.events.jsonl` the track events."""
    found = (p for p in directory.glob(f"{stem}*{suffix}") if not p.name.startswith("."))
    if suffix == ".jsonl":
        found = (p for p in found if not p.name.endswith(".events.jsonl"))
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def test_restart_when_earlier_outputs_exist_writes_new_names_and_leaves_them_byte_identical(
        carphone, tmp_path, cache_dir):
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    first = Daemon(tmp_path, cache_dir, src, name="first").start()
    first.wait_processed("car", 30)
    assert first.stop() == 0, first.log
    before = snapshot(first.out)
    assert set(before) == {"car.mp4", "car.jsonl", "car.events.jsonl"}
    first_accounting = first.accounting()["car"]

    second = Daemon(tmp_path, cache_dir, src, name="second").start()  # systemctl restart: same config
    second.wait_processed("car", 30)
    assert second.stop() == 0, second.log
    after = snapshot(second.out)
    for name, data in before.items():
        assert after[name] == data, f"{name} was changed by the second run"
    new = sorted(set(after) - set(before))
    assert len(new) == 3 and all(re.fullmatch(r"car\.\d{8}-\d{6}(-\d+)?\.(mp4|jsonl|events\.jsonl)", n)
                                 for n in new), new
    stamp = new[0].split(".")[1]  # one stem for the run's three files
    assert all(n.split(".")[1] == stamp for n in new), new
    jsonl = next(second.out / n for n in new if n.endswith(".jsonl") and not n.endswith(".events.jsonl"))
    video = next(second.out / n for n in new if n.endswith(".mp4"))
    records = read_jsonl(jsonl)
    captured, processed, dropped = second.accounting()["car"]
    assert len(records) == processed and count_video_frames(video) == processed
    assert first_accounting[1] == len(read_jsonl(second.out / "car.jsonl"))

    # A file source re-run on the same directory keeps the earlier files too.
    third = Daemon(tmp_path, cache_dir, [{"name": "car", "uri": str(carphone), "max_frames": 40}], name="third")
    third.start()
    assert third.proc.wait(120) == 0, third.log
    final = snapshot(third.out)
    assert all(final[n] == d for n, d in after.items()) and len(final) == len(after) + 3
    assert third.accounting()["car"] == (40, 40, 0)


def shm_blocks(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"perceptd_{pid}_*"))


def test_sigkill_of_the_process_group_then_a_clean_start_recovers_and_keeps_every_finalised_file(
        carphone, tmp_path, cache_dir):
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    # mp4v: an MP4 with its index written at close (H.264's fragmented MP4: tests/test_h264.py)
    segments = {"video": {"segment_s": 1, "codec": "mp4v"}, "events": {"segment_s": 1}}
    with Daemon(tmp_path, cache_dir, src, name="killed", sinks=segments) as killed:
        killed.start()
        killed.wait_log(r"wrote .*car\.\d{8}-\d{6}.*\.jsonl")  # a few segments finalised
        killed.wait_processed("car", 20)
        daemon_pid = killed.proc.pid
        assert shm_blocks(daemon_pid), "the running daemon's frames are in named shared memory"
        killed.kill_group()  # the daemon, its worker, multiprocessing's resource tracker: no cleanup at all
    finalised = snapshot(killed.out)
    partials = sorted(p.name for p in killed.out.glob(".*.partial.*"))
    assert any(n.endswith(".jsonl") for n in partials) and any(n.endswith(".mp4") for n in partials), partials
    # SIGKILL leaves the blocks behind for the next start to clean (not asserted here: another test's daemon,
    # starting meanwhile, may already have swept them).

    with Daemon(tmp_path, cache_dir, src, name="clean", sinks=segments) as clean:
        clean.start()
        # Every perceptd sweeps a dead one's blocks as it starts, so under xdist another test's daemon may get
        # there first: the start must leave none, whoever removed them (the sweep itself: the test below).
        assert not shm_blocks(daemon_pid)
        assert clean.log.count("recovered ") == len(partials), clean.log
        clean.wait_processed("car", 20)
        assert clean.stop() == 0, clean.log
    after = snapshot(clean.out)
    for name, data in finalised.items():
        assert after[name] == data, f"{name} changed"
    assert not list(clean.out.glob(".*.partial.*"))
    # The killed run's JSONL was cut back to whole lines; its MP4 (no index yet) is kept under a name that
    # says it does not play; every other video plays.
    for p in outputs(clean.out, "car", ".jsonl"):
        read_jsonl(p)
    unfinished = outputs(clean.out, "car", ".unfinished.mp4")
    assert len(unfinished) == 1
    for p in outputs(clean.out, "car", ".mp4"):
        if p not in unfinished:
            assert count_video_frames(p) > 0, p
    captured, processed, dropped = clean.accounting()["car"]
    assert processed > 0


def test_stale_block_sweep_removes_only_blocks_whose_owner_is_gone_and_says_so(tmp_path, caplog):
    from pipeline.shm import remove_stale_blocks
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    names = [f"perceptd_{gone.pid}_0", f"perceptd_{gone.pid}_7", f"perceptd_{os.getpid()}_0",
             "perceptd_notapid_0", f"other_{gone.pid}_0"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="pipeline.shm"):
        removed = remove_stale_blocks(tmp_path)
    assert sorted(removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    assert "removed 2 shared-memory block(s) left by a perceptd that did not exit cleanly" in caplog.text
    caplog.clear()
    assert remove_stale_blocks(tmp_path) == [] and "removed" not in caplog.text
    assert remove_stale_blocks(tmp_path / "absent") == []  # no /dev/shm: nothing to do


# ------------------------------------------------------------------------------------------ disk faults


@pytest.fixture()
def small_disk(tmp_path):
    """A real 24 MB file system (tmpfs), mounted for the test: root only (CI runs as root)."""
    need(os.geteuid() == 0, "root, to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> None:
    """Write zeros into `path` until only `leave` bytes are free on its file system."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        remaining = max(0, free - leave)
        try:
            while remaining > 0:
                n = f.write(chunk[:remaining])
                remaining -= n
            f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_when_space_runs_out_pauses_outputs_keeps_processing_and_resumes_once_freed(
        carphone, astronaut_clip, small_disk, tmp_path, cache_dir):
    out = small_disk / "out"
    sources = [{"name": "car", "uri": str(carphone), **LIVE}, {"name": "astro", "uri": str(astronaut_clip), **LIVE}]
    sinks = {"output_dir": str(out), "reserve_mb": 2, "retry_s": 0.5, "min_free_percent": 0,
             "video": {"segment_s": 2}, "events": {"segment_s": 2}}
    with Daemon(tmp_path, cache_dir, sources, sinks=sinks) as d:
        d.start()
        d.wait_processed("car", 20)
        ballast = small_disk / "ballast"
        fill(ballast, leave=1 << 20)  # another program filled the disk: 1 MB left, under the 2 MB reserve
        for source in ("car", "astro"):
            for sink in ("video", "events"):
                d.wait_metric(lambda m: m.get(f'perceptd_sink_up{{sink="{sink}",source="{source}"}}') == 0, 30,
                              f"{source}'s {sink} paused")
        assert re.search(r"source 'car': video paused: .*sinks.reserve_mb", d.log)
        assert d.metric("perceptd_sink_errors_total", source="car", sink="video") >= 1
        # Inference and the metrics go on for every source while nothing can be written.
        d.wait_processed("car", 30)
        d.wait_processed("astro", 30)
        fill(small_disk / "ballast2", leave=0)  # now completely full; the finalised files are safe
        d.wait_processed("car", 10)
        ballast.unlink()
        (small_disk / "ballast2").unlink()
        for source in ("car", "astro"):
            for sink in ("video", "events"):
                d.wait_metric(lambda m: m.get(f'perceptd_sink_up{{sink="{sink}",source="{source}"}}') == 1, 30,
                              f"{source}'s {sink} resumed")
        assert "resumed after" in d.log
        d.wait_processed("car", 20)
        m = d.scrape()
        assert d.stop() == 0, d.log
    for source in ("car", "astro"):
        captured, processed, dropped = d.accounting()[source]
        lines = [r for p in outputs(out, source, ".jsonl") for r in read_jsonl(p)]  # whole lines only
        frames = [r["frame"] for r in lines]
        assert frames == sorted(set(frames))  # in order across the files, none twice
        skipped = m[f'perceptd_sink_frames_skipped_total{{sink="events",source="{source}"}}']
        assert skipped > 0 and len(lines) + skipped >= processed - 5 and len(lines) <= processed
        videos = outputs(out, source, ".mp4")
        assert videos and not [p for p in videos if "unfinished" in p.name]
        assert sum(count_video_frames(p) for p in videos) <= processed
    assert not list(out.glob(".*.partial.*"))


def test_events_sink_when_a_write_hits_enospc_keeps_only_whole_lines(small_disk):
    from pipeline.sinks.files import EventsSink
    from pipeline.sinks.outdir import OutputDir

    out = OutputDir(small_disk / "out")
    out.open()
    events = EventsSink(out, "car", out.claim("car", (".jsonl",)))
    events.write({"frame": 0})
    fill(small_disk / "ballast", leave=0)
    record = {"frame": 1, "detections": ["x" * 100] * 1000}  # 100 kB: cannot fit
    with pytest.raises(OSError) as exc:
        events.write(record)
    assert exc.value.errno == errno.ENOSPC
    (small_disk / "ballast").unlink()
    events.write({"frame": 2})  # a new file: the first was finalised when the write failed
    events.close()
    assert [p.name for p in events.files][0] == "car.jsonl" and len(events.files) == 2
    assert [read_jsonl(p) for p in events.files] == [[{"frame": 0}], [{"frame": 2}]]
    assert not [p for p in (small_disk / "out").iterdir() if ".partial" in p.name]


def _without_dac_override() -> None:
    """preexec_fn: root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys file permissions, as the
    service's own user would (PR_CAPBSET_DROP, then exec drops them from the new program)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_directory_when_the_output_directory_refuses_writes_pauses_and_resumes_once_writable(
        carphone, tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "out"
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    sinks = {"retry_s": 0.5, "video": {"segment_s": 1}, "events": {"segment_s": 1}}
    d = Daemon(tmp_path, cache_dir, src, sinks=sinks)
    if os.geteuid() == 0:
        real_popen = subprocess.Popen

        def popen(*args, **kwargs):
            kwargs.setdefault("preexec_fn", _without_dac_override)
            return real_popen(*args, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", popen)
    with d:
        d.start()
        d.wait_processed("car", 20)
        out.chmod(0o555)  # someone remounted or chmod-ed it: new files and renames are refused
        try:
            d.wait_metric(lambda m: m.get('perceptd_sink_up{sink="events",source="car"}') == 0, 30, "events paused")
            d.wait_metric(lambda m: m.get('perceptd_sink_up{sink="video",source="car"}') == 0, 30, "video paused")
            assert re.search(r"events paused: Permission denied \(.*/out/\.car\..*partial\.jsonl\)", d.log), d.log
            d.wait_processed("car", 30)  # processing goes on
        finally:
            out.chmod(0o755)
        for sink in ("video", "events"):
            d.wait_metric(lambda m: m.get(f'perceptd_sink_up{{sink="{sink}",source="car"}}') == 1, 30,
                          f"{sink} resumed")
        d.wait_processed("car", 20)
        m = d.scrape()
        assert d.stop() == 0, d.log
    captured, processed, dropped = d.accounting()["car"]
    lines = [r for p in outputs(out, "car", ".jsonl") for r in read_jsonl(p)]
    skipped = m['perceptd_sink_frames_skipped_total{sink="events",source="car"}']
    assert skipped > 0 and len(lines) <= processed
    assert not list(out.glob(".*.partial.*")), "a file whose rename was refused is finalised once it can be"
    for p in outputs(out, "car", ".mp4"):
        assert count_video_frames(p) > 0
    assert json.loads((out / "car.jsonl").read_text().splitlines()[0])["frame"] == 0
