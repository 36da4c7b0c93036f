"""Zones and lines on synthetic tracks: exact crossings with their directions, enter/exit pairs, jitter at an
edge absorbed by inertia, a path around a line's end not counted, and ends that close everything."""

from __future__ import annotations

import numpy as np

from pipeline.tracking.events import SceneEvents
from pipeline.tracking.zones import Line, Zone, inside, resolve, side_names

W, H = 640, 480


def person_at(x: float, y: float) -> list[float]:
    """A 40x100 person whose feet (the reference point) are at (x, y)."""
    return [x - 20, y - 100, x + 20, y]


def walk(scene: SceneEvents, path, track_id=1, label="person", start=0):
    events = []
    for k, (x, y) in enumerate(path):
        events += scene.update(start + k, (start + k) * 40.0, 1_700_000_000 + (start + k) * 0.04,
                               [person_at(x, y)], [0.9], [label], [track_id])
    return events


def gate() -> Line:
    a, b = resolve([[0.5, 0.0], [0.5, 1.0]], W, H)
    return Line("gate", a, b)


def test_resolve_when_values_are_fractions_scales_them_and_keeps_pixels():
    assert resolve([[0.5, 1.0], [320, 240]], W, H).tolist() == [[320.0, 480.0], [320.0, 240.0]]


def test_line_when_a_person_walks_across_and_back_counts_two_crossings_named_by_side():
    scene = SceneEvents("door", lines=(gate(),))
    there = [(100 + 20 * k, 300) for k in range(25)]  # left to right across x = 320
    back = [(580 - 20 * k, 320) for k in range(25)]
    events = walk(scene, there + back)
    crosses = [e for e in events if e["type"] == "cross"]
    assert [(e["line"], e["direction"]) for e in crosses] == [("gate", "right"), ("gate", "left")]
    assert scene.crossings == {("gate", "person", "right"): 1, ("gate", "person", "left"): 1}
    assert events[0]["type"] == "new" and events[0]["track_id"] == 1 and events[0]["source"] == "door"
    assert crosses[0]["time"].endswith("Z") and crosses[0]["box"] == person_at(*there[crosses[0]["frame"]])


def test_line_when_someone_dithers_on_it_counts_no_crossing_until_they_commit():
    scene = SceneEvents("door", lines=(gate(),), inertia=3)
    dither = [(316 + (8 if k % 2 else 0), 300) for k in range(30)]  # 316 / 324: either side, never 3 in a row
    events = walk(scene, [(200, 300)] + dither + [(400, 300)] * 3)
    assert [e["direction"] for e in events if e["type"] == "cross"] == ["right"]


def test_line_when_a_path_goes_round_its_end_counts_nothing():
    a, b = resolve([[0.5, 0.0], [0.5, 0.5]], W, H)  # the upper half of the frame only
    scene = SceneEvents("door", lines=(Line("half", a, b),))
    events = walk(scene, [(100 + 20 * k, 400) for k in range(25)])  # crosses x = 320 below the line's end
    assert not [e for e in events if e["type"] == "cross"]


def test_zone_when_walked_through_gives_one_enter_and_one_exit_and_counts_occupancy():
    porch = Zone("porch", resolve([[0.1, 0.5], [0.6, 0.5], [0.6, 1.0], [0.1, 1.0]], W, H), frozenset({"person"}))
    scene = SceneEvents("door", zones=(porch,))
    inward = walk(scene, [(50, 200 + 10 * k) for k in range(5)] + [(150 + 5 * k, 300) for k in range(10)])
    assert [e["type"] for e in inward] == ["new", "enter"] and inward[1]["zone"] == "porch"
    assert scene.occupancy() == {("porch", "person"): 1}
    out = walk(scene, [(200 + 40 * k, 300) for k in range(10)], start=15)
    assert [e["type"] for e in out] == ["exit"] and scene.occupancy() == {}
    # A car in the same place is not counted: the zone is for people.
    car = walk(scene, [(150, 300)] * 5, track_id=2, label="car", start=30)
    assert [e["type"] for e in car] == ["new"] and scene.occupancy() == {}


def test_end_when_a_track_ends_inside_a_zone_it_exits_first_and_the_end_carries_its_span():
    porch = Zone("porch", resolve([[0, 0], [1, 0], [1, 1], [0, 1]], W, H))
    scene = SceneEvents("door", zones=(porch,))
    walk(scene, [(300, 300)] * 5)
    events = scene.update(10, 400.0, 1_700_000_001.0, np.zeros((0, 4)), [], [], [], ended=[1])
    assert [e["type"] for e in events] == ["exit", "end"]
    end = events[1]
    assert end["first_seen"] < end["last_seen"] and end["best_score"] == 0.9 and end["frame"] == 10
    assert scene.close(11, 440.0, 1_700_000_002.0) == []  # nothing left to end


def test_geometry_when_checked_against_known_cases():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    assert inside(np.array([[5, 5], [15, 5], [-1, 5], [9.9, 0.1]]), square).tolist() == [True, False, False, True]
    assert side_names(np.array([0.0, 0.0]), np.array([0.0, 10.0])) == {1: "left", -1: "right"}
    assert side_names(np.array([0.0, 0.0]), np.array([10.0, 0.0])) == {1: "down", -1: "up"}
