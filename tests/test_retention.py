"""Retention deletes finalised outputs by age and by disk budget, oldest first, and nothing else."""

from __future__ import annotations

import os
import time

from pipeline.sinks.retention import enforce


def make(path, size: int, age_days: float, now: float):
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: the size counts, no disk is used
    os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    return path


def test_retention_when_files_are_older_than_the_limit_deletes_only_those(tmp_path):
    now = time.time()
    old = make(tmp_path / "door.20261101-000000.mp4", 10, 9, now)
    old_log = make(tmp_path / "door.20261101-000000.jsonl", 10, 9, now)
    fresh = make(tmp_path / "door.mp4", 10, 1, now)
    partial = make(tmp_path / ".door.partial.mp4", 10, 30, now)  # being written: never touched
    other = make(tmp_path / "notes.txt", 10, 30, now)  # not ours
    assert set(enforce(tmp_path, max_age_days=7, max_gb=0, now=now)) == {old, old_log}
    assert fresh.exists() and partial.exists() and other.exists() and not old.exists()


def test_retention_when_over_the_disk_budget_deletes_oldest_first_until_under(tmp_path):
    now = time.time()
    files = [make(tmp_path / f"cam.{i}.mp4", 400_000_000, 10 - i, now) for i in range(5)]  # 2 GB
    deleted = enforce(tmp_path, max_age_days=0, max_gb=1.0, now=now)
    assert deleted == files[:3]  # 2.0 -> 1.6 -> 1.2 -> 0.8 GB
    assert all(f.exists() for f in files[3:])


def test_retention_when_no_limit_is_set_deletes_nothing(tmp_path):
    now = time.time()
    f = make(tmp_path / "cam.mp4", 10, 365, now)
    assert enforce(tmp_path, 0, 0, now=now) == [] and f.exists()


def test_retention_when_clips_and_snapshots_are_old_deletes_them_too_and_never_partial_ones(tmp_path):
    now = time.time()
    (tmp_path / "clips" / "door").mkdir(parents=True)
    (tmp_path / "snapshots" / "door").mkdir(parents=True)
    clip = make(tmp_path / "clips" / "door" / "door.20261101-000000.mp4", 10, 9, now)
    shot = make(tmp_path / "snapshots" / "door" / "door.3.20261101-000000.jpg", 10, 9, now)
    writing = make(tmp_path / "clips" / "door" / ".door.20261130-000000.partial.mp4", 10, 9, now)
    assert set(enforce(tmp_path, max_age_days=7, max_gb=0, now=now)) == {clip, shot}
    assert writing.exists()
