"""Config loading, line-accurate errors, source shorthand and credential redaction: real YAML files, real
pydantic validation, no mocks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.redact import redact_text, redact_uri
from pipeline.settings import derive_name, guess_kind, load_settings
from pipeline.yamlpos import line_for, parse_yaml_with_lines


def write(tmp_path: Path, text: str, name: str = "perceptd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def config_error(path: Path | None, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message  # the CLI prints it as one line
    return message


# ------------------------------------------------------------------------------------ yamlpos: line map

NESTED = """\
sources:
  - uri: a.mp4
  - name: back
    uri: b.mp4
    loop: true
model:
  name: retinaface
  confidence: 0.6
sinks:
  video:
    fourcc: mp4v
"""


def test_parse_yaml_with_lines_when_keys_are_nested_and_in_list_items():
    data, lines = parse_yaml_with_lines(NESTED, "x.yaml")
    assert data["sources"][1] == {"name": "back", "uri": "b.mp4", "loop": True}
    assert lines[("sources",)] == 1
    assert lines[("sources", 0)] == 2
    assert lines[("sources", 0, "uri")] == 2
    assert lines[("sources", 1)] == 3
    assert lines[("sources", 1, "uri")] == 4
    assert lines[("sources", 1, "loop")] == 5
    assert lines[("model", "confidence")] == 8
    assert lines[("sinks", "video", "fourcc")] == 11


def test_parse_yaml_with_lines_when_a_key_holds_a_block_value_the_key_line_wins():
    # "video:" is on line 2; its mapping's first key is on line 3: errors about sinks.video point at 2.
    _, lines = parse_yaml_with_lines("sinks:\n  video:\n    fourcc: mp4v\n", "x.yaml")
    assert lines[("sinks",)] == 1
    assert lines[("sinks", "video")] == 2


def test_parse_yaml_with_lines_when_text_is_empty():
    assert parse_yaml_with_lines("", "x.yaml") == ({}, {})
    assert parse_yaml_with_lines("# only a comment\n", "x.yaml") == ({}, {})


def test_parse_yaml_with_lines_when_syntax_is_bad_names_file_and_line():
    with pytest.raises(ConfigError) as info:
        parse_yaml_with_lines("sources:\n  - uri: a.mp4\nmodel: {name: x\n", "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:")
    assert "invalid YAML" in str(info.value)
    line = int(str(info.value).split(":")[1])
    assert line in (3, 4)  # the unclosed flow mapping: where it opens or where the file ends


def test_parse_yaml_with_lines_when_yaml_has_python_tags_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    text = f'sources: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(ConfigError) as info:
        parse_yaml_with_lines(text, "evil.yaml")
    assert str(info.value).startswith("evil.yaml:1:")
    assert not marker.exists()


def test_parse_yaml_with_lines_when_a_key_repeats_names_both_lines():
    # PyYAML alone keeps the last `model:` and silently drops the first one's settings.
    text = "sources:\n  - uri: a.mp4\n    loop: true\n    loop: false\nmodel: {confidence: 0.9}\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml_with_lines(text, "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:4: sources[0].loop: duplicate key (first at line 3)")
    with pytest.raises(ConfigError) as info:
        parse_yaml_with_lines("model:\n  confidence: 0.9\nsources: [a.mp4]\nmodel: retinaface\n", "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:4: model: duplicate key (first at line 1)")


def test_parse_yaml_with_lines_when_the_same_key_is_in_different_mappings_it_is_fine():
    data, _ = parse_yaml_with_lines("sources:\n  - {name: a, uri: x}\n  - {name: b, uri: y}\n", "cfg.yaml")
    assert [s["name"] for s in data["sources"]] == ["a", "b"]


def test_line_for_when_the_key_is_absent_uses_the_nearest_ancestor():
    _, lines = parse_yaml_with_lines(NESTED, "x.yaml")
    assert line_for(lines, ("sources", 0, "name")) == 2  # derived, not in the file: the item's line
    assert line_for(lines, ("model", "iou")) == 6
    assert line_for(lines, ("engine", "max_batch")) == 1  # whole section absent: the document
    assert line_for({}, ("model",)) is None


# ------------------------------------------------------------------------------ load_settings: errors

def test_load_settings_when_second_source_item_is_bad_names_its_line_and_index(tmp_path):
    path = write(tmp_path, """
        sources:
          - uri: a.mp4
          - name: back
            uri: ""
        """)
    msg = config_error(path)
    assert msg.startswith(f"{path}:4: sources[1].uri:")
    assert "more error" not in msg


def test_load_settings_when_a_source_value_has_the_wrong_type_names_key_line_and_value(tmp_path):
    path = write(tmp_path, """
        sources:
          - uri: a.mp4
          - uri: b.mp4
            loop: maybe
        """)
    msg = config_error(path)
    assert msg.startswith(f"{path}:4: sources[1].loop:")
    assert "'maybe'" in msg
    # one bad item also fails the list ("at least 1 item"): that echo is not reported as a second error
    assert "more error" not in msg


def test_load_settings_when_the_only_source_is_bad_reports_one_error(tmp_path):
    path = write(tmp_path, "sources:\n  - uri: a.mp4\n    speed: -1\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:3: sources[0].speed:")
    assert "(got -1)" in msg
    assert "more error" not in msg  # not also "sources: should have at least 1 item"


def test_load_settings_when_nested_section_value_is_bad_names_dotted_key_and_line(tmp_path):
    path = write(tmp_path, """
        sources: [a.mp4]
        sinks:
          output_dir: out
          video:
            fourcc: toolong
        """)
    msg = config_error(path)
    assert msg.startswith(f"{path}:5: sinks.video.fourcc:")
    assert "'toolong'" in msg


def test_load_settings_when_value_is_out_of_range_shows_limit_and_value(tmp_path):
    path = write(tmp_path, """
        sources: [a.mp4]
        model:
          confidence: 1.5
        """)
    msg = config_error(path)
    assert msg.startswith(f"{path}:3: model.confidence:")
    assert "1" in msg and "(got 1.5)" in msg


def test_load_settings_when_engine_max_batch_is_not_a_number(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nengine:\n  max_batch: lots\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:3: engine.max_batch:")
    assert "'lots'" in msg


@pytest.mark.parametrize("value, want", [("auto", "auto"), ("true", True), ("false", False)])
def test_load_settings_when_engine_spin_wait_is_auto_or_a_bool_then_kept(tmp_path, value, want):
    path = write(tmp_path, f"sources: [a.mp4]\nengine:\n  spin_wait: {value}\n")
    assert load_settings(path).engine.spin_wait == want
    assert load_settings(write(tmp_path, "sources: [a.mp4]\n", "plain.yaml")).engine.spin_wait == "auto"


def test_load_settings_when_engine_spin_wait_is_another_word_names_key_line_and_value(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nengine:\n  spin_wait: sometimes\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:3: engine.spin_wait:")
    assert "'sometimes'" in msg


@pytest.mark.parametrize("text, line, dotted, suggestion", [
    ("sourcs: [a.mp4]\n", 1, "sourcs", "sources"),
    ("sources:\n  - uri: a.mp4\n    looop: true\n", 3, "sources[0].looop", "loop"),
    ("sources: [a.mp4]\nmodel:\n  confidance: 0.5\n", 3, "model.confidance", "confidence"),
    ("sources: [a.mp4]\nsinks:\n  video:\n    fourc: MJPG\n", 4, "sinks.video.fourc", "fourcc"),
    ("sources: [a.mp4]\nmetrics:\n  prot: 9000\n", 3, "metrics.prot", "port"),
    ("sources: [a.mp4]\nengine: {max_bath: 2}\n", 2, "engine.max_bath", "max_batch"),
])
def test_load_settings_when_key_is_misspelt_suggests_the_nearest(tmp_path, text, line, dotted, suggestion):
    path = write(tmp_path, text)
    msg = config_error(path)
    assert msg.startswith(f"{path}:{line}: {dotted}: unknown key")
    assert f"did you mean '{suggestion}'?" in msg


def test_load_settings_when_unknown_key_has_no_close_match_lists_the_valid_keys(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nengine:\n  zzzz: 1\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:3: engine.zzzz: unknown key; valid keys here:")
    for key in ("backend", "max_batch", "threads", "precision", "cache_dir"):
        assert key in msg


def test_load_settings_when_config_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- a.mp4\n- b.mp4\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:1:")
    assert "mapping" in msg


def test_load_settings_when_sources_missing_says_so(tmp_path):
    path = write(tmp_path, "model: retinaface\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}")
    assert "sources" in msg and "required" in msg.lower()


def test_load_settings_when_no_file_uses_the_builtin_sample():
    s = load_settings(None)
    assert [(x.name, x.uri) for x in s.sources] == [("carphone", "sample:carphone")]
    assert s.model.name == "retinaface"


# ------------------------------------------------------------------------------ source shorthand

def test_load_settings_when_sources_are_plain_strings_with_the_same_stem_names_are_unique(tmp_path):
    path = write(tmp_path, """
        sources:
          - /data/day1/clip.mp4
          - /data/day2/clip.mp4
          - /data/day3/clip.avi
        """)
    s = load_settings(path)
    assert [x.name for x in s.sources] == ["clip", "clip-2", "clip-3"]
    assert [x.uri for x in s.sources] == ["/data/day1/clip.mp4", "/data/day2/clip.mp4", "/data/day3/clip.avi"]


def test_load_settings_when_a_derived_name_meets_an_explicit_one_the_explicit_keeps_it(tmp_path):
    path = write(tmp_path, """
        sources:
          - /data/clip.mp4
          - name: clip
            uri: /other/thing.mp4
        """)
    s = load_settings(path)
    assert [x.name for x in s.sources] == ["clip-2", "clip"]


@pytest.mark.parametrize("uri, name", [
    ("rtsp://admin:s3cret@cam.local:554/stream1", "cam.local"),
    ("rtsp://admin:s3@cret@10.0.0.7/live", "10.0.0.7"),  # unencoded '@' in the password
    ("rtsps://viewer:s3cret@Cam-2/h264?token=s3cret", "Cam-2"),
    ("http://192.168.1.5:8080/video.mjpg", "192.168.1.5"),
    ("0", "camera0"),
    ("/dev/video2", "video2"),
    ("sample:carphone", "carphone"),
    ("videotestsrc ! videoconvert ! appsink", "gst"),
    ("/some/dir/My Clip (1).mp4", "My_Clip_1"),
])
def test_derive_name_when_uri_has_kind_or_credentials(uri, name):
    derived = derive_name(uri)
    assert derived == name
    assert "s3" not in derived and "cret" not in derived


def test_load_settings_when_source_uri_has_credentials_name_is_the_host(tmp_path):
    path = write(tmp_path, "sources:\n  - rtsp://admin:s3cret@cam.local:554/stream1\n")
    (src,) = load_settings(path).sources
    assert src.name == "cam.local"
    assert src.uri == "rtsp://admin:s3cret@cam.local:554/stream1"  # the real URI is kept for opening
    assert src.resolved_kind == "network"


def test_load_settings_when_a_source_is_an_integer_it_is_a_camera(tmp_path):
    path = write(tmp_path, "sources: [0]\n")
    (src,) = load_settings(path).sources
    assert (src.uri, src.name, src.resolved_kind) == ("0", "camera0", "camera")


def test_load_settings_when_an_item_has_uri_but_no_name_the_name_is_derived(tmp_path):
    path = write(tmp_path, "sources:\n  - uri: /x/lobby.mp4\n    loop: true\n")
    (src,) = load_settings(path).sources
    assert (src.name, src.loop) == ("lobby", True)


@pytest.mark.parametrize("uri, kind", [
    ("0", "camera"),
    ("3", "camera"),
    ("/dev/video0", "camera"),
    ("rtsp://x", "network"),
    ("RTSP://cam/stream", "network"),
    ("http://x/y.mjpg", "network"),
    ("https://x/live.m3u8", "network"),
    ("udp://239.0.0.1:1234", "network"),
    ("a ! b", "gstreamer"),
    ("gst:videotestsrc ! appsink", "gstreamer"),
    ("clip.mp4", "file"),
    ("/abs/path/clip.mkv", "file"),
    ("sample:carphone", "file"),
])
def test_guess_kind_when_uri_is(uri, kind):
    assert guess_kind(uri) == kind


def test_load_settings_when_kind_is_explicit_it_wins_over_the_guess(tmp_path):
    path = write(tmp_path, "sources:\n  - uri: '0'\n    kind: file\n")
    (src,) = load_settings(path).sources
    assert src.resolved_kind == "file"


def test_load_settings_when_source_names_repeat_is_rejected_at_the_sources_line(tmp_path):
    path = write(tmp_path, """
        model: retinaface
        sources:
          - {name: door, uri: a.mp4}
          - {name: door, uri: b.mp4}
        """)
    msg = config_error(path)
    assert msg.startswith(f"{path}:2: sources:")
    assert "'door' is used twice" in msg


def test_load_settings_when_source_name_has_bad_characters(tmp_path):
    path = write(tmp_path, "sources:\n  - name: front door\n    uri: a.mp4\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:2: sources[0].name:")
    assert "'front door'" in msg


# ------------------------------------------------------------------------------ model shorthand

def test_load_settings_when_model_is_a_plain_name(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nmodel: retinaface\n")
    m = load_settings(path).model
    assert (m.name, m.family, m.iou) == ("retinaface", "auto", 0.45)


def test_load_settings_when_model_is_a_plain_path_and_overridden(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nmodel: /models/yolov8n.onnx\n")
    assert load_settings(path).model.name == "/models/yolov8n.onnx"
    overridden = load_settings(path, {"model.name": "retinaface", "model.family": "retinaface"})
    assert (overridden.model.name, overridden.model.family) == ("retinaface", "retinaface")


# ------------------------------------------------------------------------------ command-line overrides

def test_load_settings_when_override_is_bad_blames_the_command_line(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nengine:\n  max_batch: 2\n")
    msg = config_error(path, {"engine.max_batch": "lots"})
    assert msg.startswith("command line: engine.max_batch:")
    assert "'lots'" in msg
    assert str(path) not in msg


def test_load_settings_when_override_is_bad_without_a_file_blames_the_command_line():
    msg = config_error(None, {"metrics.port": 70000})
    assert msg.startswith("command line: metrics.port:")
    assert "70000" in msg


def test_load_settings_when_file_is_bad_and_an_override_is_fine_blames_the_file(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nengine:\n  max_batch: lots\n")
    msg = config_error(path, {"metrics.port": 0})
    assert msg.startswith(f"{path}:3: engine.max_batch:")


def test_load_settings_when_overrides_are_given_they_win_over_the_file(tmp_path):
    path = write(tmp_path, """
        sources: [a.mp4]
        sinks:
          output_dir: from-file
        metrics:
          port: 9999
        """)
    s = load_settings(path, {"sinks.output_dir": "from-cli", "metrics.port": 0,
                             "sources": [{"name": "cli", "uri": "b.mp4"}, "c.mp4"]})
    assert s.sinks.output_dir == Path("from-cli")
    assert s.metrics.port == 0
    assert [(x.name, x.uri) for x in s.sources] == [("cli", "b.mp4"), ("c", "c.mp4")]


def test_load_settings_when_command_line_sources_repeat_a_name_blames_the_command_line():
    msg = config_error(None, {"sources": [{"name": "a", "uri": "x.mp4"}, {"name": "a", "uri": "y.mp4"}]})
    assert msg.startswith("command line: sources:")
    assert "'a' is used twice" in msg


def test_load_settings_when_override_targets_a_non_mapping(tmp_path):
    path = write(tmp_path, "sources: [a.mp4]\nmodel: [1, 2]\n")
    msg = config_error(path, {"model.name": "retinaface"})
    assert "model" in msg and "command-line" in msg


# ------------------------------------------------------------------------------ redaction

@pytest.mark.parametrize("uri, shown", [
    ("rtsp://admin:s3cret@cam.local:554/stream1", "rtsp://admin:***@cam.local:554/stream1"),
    ("rtsp://admin:s3@cret@cam/live", "rtsp://admin:***@cam/live"),  # FFmpeg reads to the last '@'
    ("rtsp://:s3cret@cam/live", "rtsp://:***@cam/live"),
    ("rtsp://admin:s3cret@Cam.Local/x", "rtsp://admin:***@Cam.Local/x"),  # host as written
    ("rtsp://admin:s3cret@[fe80::1]:554/x", "rtsp://admin:***@[fe80::1]:554/x"),
    ("rtsp://admin@cam.local/stream1", "rtsp://admin@cam.local/stream1"),  # user only: nothing secret
    ("https://cdn.example/live.m3u8?token=s3cret&q=hd", "https://cdn.example/live.m3u8?token=***&q=hd"),
    ("https://cdn.example/live.m3u8?q=hd&access_token=s3cret", "https://cdn.example/live.m3u8?q=hd&access_token=***"),
    ("http://cam/snap.mjpg?user=bob&password=s3cret", "http://cam/snap.mjpg?user=bob&password=***"),
    ("http://cam/v.mjpg?api_key=s3cret#top", "http://cam/v.mjpg?api_key=***#top"),
    ("rtsp://cam.local:554/stream1", "rtsp://cam.local:554/stream1"),  # no credentials: unchanged
    ("/data/clip.mp4", "/data/clip.mp4"),
    ("0", "0"),
])
def test_redact_uri_when(uri, shown):
    assert redact_uri(uri) == shown
    assert "s3" not in redact_uri(uri) and "cret" not in redact_uri(uri)


def test_redact_text_when_several_uris_are_in_a_sentence():
    text = ("source 'a': cannot open rtsp://admin:s3cret@cam1/x; source 'b': "
            "{'uri': 'rtsp://op:s3@cret@cam2:554', 'loop': 'maybe'} and http://cam3/v?token=s3cret done")
    out = redact_text(text)
    assert "s3" not in out and "cret" not in out
    assert "rtsp://admin:***@cam1/x;" in out
    assert "'rtsp://op:***@cam2:554', 'loop': 'maybe'}" in out
    assert "http://cam3/v?token=*** done" in out


def test_redact_text_when_nothing_is_secret_leaves_text_alone():
    text = "opened rtsp://admin@cam:554/s and http://cam:8080/v.mjpg?fps=5, see me@example.com"
    assert redact_text(text) == text


def test_load_settings_when_error_quotes_a_uri_its_password_is_redacted(tmp_path):
    path = write(tmp_path, "sources: rtsp://admin:s3@cret@cam/live\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}:1: sources:")
    assert "rtsp://admin:***@cam/live" in msg
    assert "s3" not in msg and "cret" not in msg


def test_progress_when_bare_yaml_off_then_read_as_off(tmp_path):
    """The documented value `off` is a boolean to YAML 1.1; an operator writing it as documented must not
    get an error."""
    path = write(tmp_path, """
        sources: [sample:carphone]
        sinks:
          progress: off
        """)
    assert load_settings(path).sinks.progress == "off"
    assert "sinks.progress" in config_error(write(tmp_path, "sources: [a.mp4]\nsinks:\n  progress: true\n", "bad.yaml"))
