"""perceptd's Prometheus alerts: the rules parse (promtool check rules), their unit tests pass (promtool test
rules), every alert carries what an operator needs and has a test that fires it and one that must not, and
the unit tests do catch a broken alert."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "config" / "prometheus"
RULES = PROM_DIR / "perceptd-rules.yml"
RULE_TESTS = PROM_DIR / "perceptd-rules.test.yml"


def need(condition: bool, what: str) -> None:
    """CI installs every Debian package the tests use (.ci/run): there a missing one is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run should have installed it")
        pytest.skip(f"{what} is not installed here")


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    need(shutil.which("promtool") is not None, "promtool (Debian's prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def alerts(rules: dict) -> list[dict]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_rules_when_checked_by_promtool_are_valid():
    proc = promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_when_run_against_their_promtool_unit_tests_pass():
    proc = promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_when_read_have_a_severity_a_one_line_summary_and_a_description():
    problems = []
    for a in alerts(yaml.safe_load(RULES.read_text())):
        name, annotations = a["alert"], a.get("annotations", {})
        if a.get("labels", {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{name}: severity must be warning or critical, not {a.get('labels')}")
        summary = annotations.get("summary", "")
        if not summary or "\n" in summary:
            problems.append(f"{name}: needs a one-line summary")
        if len(annotations.get("description", "")) < 80:
            problems.append(f"{name}: needs a description saying what to check")
    assert not problems, "\n".join(problems)


def test_alerts_when_listed_each_have_a_firing_and_a_quiet_unit_test():
    names = {a["alert"] for a in alerts(yaml.safe_load(RULES.read_text()))}
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert names <= fires, f"no test case where these fire: {sorted(names - fires)}"
    assert names <= quiet, f"no test case where these must stay quiet: {sorted(names - quiet)}"
    assert fires | quiet <= names, f"tests for alerts that do not exist: {sorted((fires | quiet) - names)}"


# Each edit breaks one alert so that a case that fires in the unit tests no longer does (a threshold raised,
# a `for` lengthened, a branch of an `or` disabled, a matcher narrowed): the unit tests must notice and
# name it.
BROKEN = [
    ("PerceptdHighDropRate", "expr", "> 0.5", "> 0.75"),
    ("PerceptdTargetMissing", "for", "5m", "15m"),
    ("PerceptdSourceFrozen", "expr", "rate(perceptd_frames_processed_total[5m]) == 0",
     "rate(perceptd_frames_processed_total[5m]) < 0"),
    ("PerceptdReloadFailed", "expr", 'result!="ok"', 'result="failed"'),
]


def edited_copy(tmp_path: Path, alert: str | None = None, field: str = "", old: str = "",
                new: str = "") -> subprocess.CompletedProcess:
    """promtool test rules on a copy in tmp_path of the rules, reserialised with one edit to one alert (none
    without an alert), and of their unit tests."""
    rules = yaml.safe_load(RULES.read_text())
    if alert:
        rule = next(a for a in alerts(rules) if a["alert"] == alert)
        assert old in rule[field], f"{alert}'s {field} no longer contains {old!r}: update this test"
        rule[field] = rule[field].replace(old, new, 1)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    checked = promtool("check", "rules", RULES.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # still valid, only wrong
    return promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)


def test_rule_unit_tests_when_the_rules_are_only_reserialised_pass(tmp_path):
    """The control for the next test: copying through PyYAML alone breaks nothing."""
    proc = edited_copy(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("alert, field, old, new", BROKEN, ids=[b[0] for b in BROKEN])
def test_rule_unit_tests_when_an_alert_is_broken_fail(tmp_path, alert, field, old, new):
    proc = edited_copy(tmp_path, alert, field, old, new)
    assert proc.returncode != 0, f"the unit tests did not notice a broken {alert}:\n{proc.stdout}{proc.stderr}"
    assert alert in proc.stdout + proc.stderr, proc.stdout + proc.stderr
