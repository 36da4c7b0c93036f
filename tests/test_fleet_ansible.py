"""The Ansible role (config/ansible) run for real: the example playbook and inventory applied with
`ansible-playbook -c local` to a throwaway root per host, secrets from a real Ansible Vault file, perceptd
installed from a wheel of this checkout into a venv made by the system's Python (Debian's here, JetPack's on
a device), the config checked by perceptd, the unit and drop-ins verified by systemd-analyze, the agent's
command line started with the real Prometheus.
Only what needs a real device is switched off: apt, systemd, the system user. Also ansible-lint (production
profile), --syntax-check, and broken edits that those checks must catch."""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.test_grafana import prometheus_port
from tests.test_pipeline import wait_for
from tests.test_service import need

ANSIBLE = REPO / "config" / "ansible"
EXAMPLE = yaml.safe_load((ANSIBLE / "inventory.example.yml").read_text())["jetsons"]
HOSTS = sorted(EXAMPLE["hosts"])
# The secrets as vault.example.yml names them; the values have what breaks careless quoting.
SECRETS = {"vault_cam_door_password": "d00r pass$word", "vault_cam_yard_password": "yard:#1",
           "vault_mqtt_password": "mq${tt}", "vault_remote_write_password": "rw 'secret'"}
# The system's Python makes the venv, as JetPack's does on a device; Debian's has its OpenCV as a system
# package (python3-opencv), like JetPack's.
SYSTEM_PYTHON = Path("/usr/bin/python3")


def tool(name: str) -> str | None:
    """A command installed with the test extra, whether or not the venv is activated."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def ansible_env(home: Path) -> dict:
    env = dict(os.environ)
    # Ansible's own state (collections cache, temp files) in the test's folder, not the user's home.
    env.update(ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_REMOTE_TEMP=str(home / "tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"))
    return env


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP per host: {'jetson-door': {'ok': 21, 'changed': 0, ...}}."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


class Fleet:
    """The example inventory made local: each host gets its own root under tmp, and the switches for what
    only a device has. Everything else (cameras, secrets, site, MQTT) is the example's."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.home = tmp / "ansible-home"
        self.roots = {host: tmp / "root" / host for host in HOSTS}
        self.env = ansible_env(self.home)
        wheel = self._wheel()
        self.vault_password = tmp / "vault-password"
        self.vault_password.write_text("correct horse battery staple\n")
        self.vault = tmp / "vault.yml"
        self.vault.write_text(yaml.safe_dump(SECRETS))
        subprocess.run([tool("ansible-vault"), "encrypt", "--vault-password-file", str(self.vault_password),
                        str(self.vault)], env=self.env, check=True, capture_output=True, timeout=120)
        assert self.vault.read_text().startswith("$ANSIBLE_VAULT;")
        group = grp.getgrgid(65534).gr_name  # nogroup: stands in for perceptd, which the test does not create
        self.group_gid = 65534
        self.remote_write_port = free_port()  # nothing listens there: the agent's sends are refused, on loopback
        local = {host: {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
            "perceptd_root": str(self.roots[host]), "perceptd_wheel": str(wheel),
            "perceptd_python": str(SYSTEM_PYTHON),
            # Nothing from an index at test time: the wheel alone, its dependencies are not installed (the test
            # imports neither; perceptd's own check runs from the checkout, below).
            "perceptd_pip_environment": {"PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_CONFIG_FILE": os.devnull},
            "perceptd_nodeps_packages": [],
            "perceptd_install_packages": False, "perceptd_manage_services": False, "perceptd_manage_user": False,
            "perceptd_group": group, "perceptd_prometheus_group": group,
            # The checkout's perceptd checks each config (the installed one has no dependencies here), with
            # the credentials folder the role wrote as $CREDENTIALS_DIRECTORY: every ${NAME} must resolve.
            "perceptd_check_config": f"env PYTHONPATH={REPO} {sys.executable} -m pipeline check-config",
            "prometheus_remote_write_url": f"http://127.0.0.1:{self.remote_write_port}/api/v1/write",
        } for host in HOSTS}
        self.inventory = tmp / "local.yml"
        self.inventory.write_text(yaml.safe_dump({"jetsons": {"hosts": local}}))

    def _wheel(self) -> Path:
        """A wheel of this checkout, built offline by the system's pip from a copy (no build/ or egg-info
        left in the checkout)."""
        src = self.tmp / "src"
        src.mkdir()
        for name in ("pipeline", "engines"):
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src / name)
        env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
        subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                        "-q", "-w", str(self.tmp / "wheels"), str(src)], env=env, check=True, timeout=300,
                       capture_output=True)
        (wheel,) = (self.tmp / "wheels").glob("perceptd-*.whl")
        return wheel

    def play(self, *extra: str) -> tuple[dict, str]:
        proc = subprocess.run(
            [tool("ansible-playbook"), "-i", str(ANSIBLE / "inventory.example.yml"), "-i", str(self.inventory),
             "-e", f"@{self.vault}", "--vault-password-file", str(self.vault_password), *extra, "site.yml"],
            cwd=ANSIBLE, env=self.env, capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        return recap(out), out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The role applied three times: the first run, the second, and --check --diff after them. (--check on
    new devices, which writes nothing, is left out: another 40 s.)"""
    need(tool("ansible-playbook") is not None, "ansible-core (the test extra)")
    need(SYSTEM_PYTHON.exists() and subprocess.run([str(SYSTEM_PYTHON), "-c", "import venv, ensurepip, wheel"],
                                                   capture_output=True).returncode == 0,
         "the system Python with venv and wheel (python3-venv, python3-wheel)")
    need(shutil.which("prometheus") is not None, "Prometheus (Debian's prometheus)")
    need(os.geteuid() == 0, "root (the role makes files owned by root and another group)")
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    f.first, f.first_out = f.play()
    f.second, f.second_out = f.play()
    f.check_again, f.check_again_out = f.play("--check", "--diff")
    return f


def test_ansible_role_when_applied_twice_changes_nothing_the_second_time(fleet):
    for host in HOSTS:
        assert fleet.first[host]["changed"] > 0 and fleet.first[host]["failed"] == 0
        assert fleet.second[host]["changed"] == 0, fleet.second_out[-4000:]
        assert fleet.check_again[host]["changed"] == 0, fleet.check_again_out[-4000:]


def check_config(path: Path, credentials: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), CREDENTIALS_DIRECTORY=str(credentials))
    return subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ansible_role_when_applied_writes_each_hosts_cameras_into_a_checked_config(fleet):
    for host in HOSTS:
        root = fleet.roots[host]
        path = root / "etc/perceptd/perceptd.yaml"
        assert (mode(path), path.stat().st_uid, path.stat().st_gid) == (0o640, 0, fleet.group_gid)
        config = yaml.safe_load(path.read_text())
        cameras = EXAMPLE["hosts"][host]["perceptd_cameras"]
        assert config["sources"] == cameras  # per host, as the inventory has them, ${NAME} left for perceptd
        assert config["metrics"] == {"host": "127.0.0.1", "port": 9108}  # the agent on the device scrapes it
        assert config["mqtt"] == {"host": EXAMPLE["vars"]["perceptd_mqtt_host"], "port": 1883, "username": "perceptd",
                                  "password": "${MQTT_PASSWORD}", "device": host}
        # The checkout's perceptd accepts it as written, each ${NAME} read from the credentials the role wrote,
        # as systemd hands them over (the role checked it too, before installing it).
        proc = check_config(path, root / "etc/perceptd/credentials")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"OK ({len(cameras)} source(s)" in proc.stdout
    assert len({len(EXAMPLE["hosts"][h]["perceptd_cameras"]) for h in HOSTS}) == 2  # the hosts differ


def test_ansible_role_when_applied_puts_vault_secrets_only_into_credentials(fleet):
    for host in HOSTS:
        root = fleet.roots[host]
        wanted = EXAMPLE["hosts"][host]["perceptd_secrets"]
        creds = root / "etc/perceptd/credentials"
        assert (mode(creds), creds.stat().st_uid) == (0o700, 0)
        assert sorted(p.name for p in creds.iterdir()) == sorted(wanted)
        for name, ref in wanted.items():
            value = SECRETS[re.fullmatch(r"\{\{ (\w+) \}\}", ref).group(1)]
            assert (creds / name).read_bytes() == value.encode()  # exactly: no newline added, nothing quoted
            assert (mode(creds / name), (creds / name).stat().st_uid) == (0o600, 0)
        dropin = (root / "etc/systemd/system/perceptd.service.d/credentials.conf").read_text()
        assert sorted(re.findall(r"^LoadCredential=(\w+):/etc/perceptd/credentials/(\w+)$", dropin, re.M)) == \
            sorted((n, n) for n in wanted)
        # No secret anywhere else under /etc: not in the config, the unit, the agent's config.
        for path in (root / "etc").rglob("*"):
            if path.is_file() and creds not in path.parents and path.name != "remote-write.password":
                text = path.read_text()
                leaked = [k for k, v in SECRETS.items() if v in text]
                assert not leaked, f"{path} holds {leaked}"
        password = root / "etc/prometheus/remote-write.password"
        assert password.read_text() == SECRETS["vault_remote_write_password"]
        assert (mode(password), password.stat().st_gid) == (0o640, fleet.group_gid)


def test_ansible_role_when_applied_installs_the_repositorys_unit_unchanged(fleet):
    for host in HOSTS:
        unit = fleet.roots[host] / "etc/systemd/system/perceptd.service"
        assert unit.read_bytes() == (REPO / "config/perceptd.service").read_bytes()
        assert mode(unit) == 0o644


def test_ansible_role_when_applied_makes_a_venv_that_keeps_the_systems_opencv(fleet):
    venv = fleet.roots[HOSTS[0]] / "opt/perceptd"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    proc = subprocess.run([str(venv / "bin/python"), "-c",
                           "import importlib.metadata as m, cv2; print(m.version('perceptd')); print(cv2.__file__)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, cv2_file = proc.stdout.split()
    assert version == (REPO / "pipeline/__init__.py").read_text().split('__version__ = "')[1].split('"')[0]
    # The system's OpenCV (JetPack's on a device), not a pip wheel inside the venv.
    assert not cv2_file.startswith(str(venv)), cv2_file
    assert not list(venv.glob("lib/python3*/site-packages/opencv_python*"))


def test_ansible_role_when_applied_runs_the_real_prometheus_as_an_agent_with_fleet_labels(fleet, tmp_path):
    host = HOSTS[0]
    root = fleet.roots[host]
    agent = yaml.safe_load((root / "etc/prometheus/agent.yml").read_text())
    assert agent["global"]["external_labels"] == {"site": EXAMPLE["vars"]["perceptd_site"], "device": host}
    assert agent["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9108"]
    assert agent["remote_write"][0]["basic_auth"]["password_file"] == "/etc/prometheus/remote-write.password"
    # The rest is the repository's config/prometheus/agent.yml, as it is.
    source = yaml.safe_load((REPO / "config/prometheus/agent.yml").read_text())
    assert agent["global"]["scrape_interval"] == source["global"]["scrape_interval"]
    assert agent["scrape_configs"] == source["scrape_configs"]
    assert agent["remote_write"][0]["queue_config"] == source["remote_write"][0]["queue_config"]
    promtool = subprocess.run(["promtool", "check", "config", "--syntax-only", str(root / "etc/prometheus/agent.yml")],
                              capture_output=True, text=True, timeout=60)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    # The drop-in's command line, as systemd would run it, with the device's paths moved under tmp: the flag
    # the role chose for this Prometheus version must start it in agent mode.
    dropin = (root / "etc/systemd/system/prometheus.service.d/perceptd-agent.conf").read_text()
    exec_start = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert exec_start[0] == "ExecStart="  # clears the package's own ExecStart
    local_config = tmp_path / "agent.yml"
    local_config.write_text((root / "etc/prometheus/agent.yml").read_text().replace(
        "/etc/prometheus/", f"{root}/etc/prometheus/"))
    argv = [arg.replace("/etc/prometheus/agent.yml", str(local_config))
               .replace("/var/lib/prometheus/agent", str(tmp_path / "wal"))
               .replace("127.0.0.1:9090", "127.0.0.1:0")
            for arg in shlex.split(exec_start[1][len("ExecStart="):])]
    assert Path(argv[0]).exists(), argv  # the package's binary, as the unit names it
    log = tmp_path / "prometheus.log"
    prom = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        port = prometheus_port(log, prom)

        def ready_text() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as r:
                return r.read().decode()
        assert "Agent" in wait_for(ready_text, 60, "the agent ready", prom)
    finally:
        prom.terminate()
        prom.wait(60)


def verify_units(units: Path, unit: str, tmp_path: Path, replace: dict[str, str]) -> str:
    """`systemd-analyze verify` of a unit as the role left it, with its drop-ins (systemd finds <unit>.d/ next to
    the file), and paths that only exist on a device replaced; what it says, which must be nothing."""
    copy = tmp_path / "units"
    shutil.copytree(units, copy, dirs_exist_ok=True)
    text = (copy / unit).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    (copy / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(copy / unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_ansible_role_when_applied_leaves_units_and_drop_ins_that_systemd_analyze_verifies(fleet, tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian's systemd)")
    package_unit = Path("/lib/systemd/system/prometheus.service")  # Debian's and Ubuntu's prometheus package
    need(package_unit.exists(), "Debian's prometheus package (its unit)")
    for host in HOSTS:
        root = fleet.roots[host]
        units = root / "etc/systemd/system"
        # The venv's perceptd, which the role made, stands in for /opt/perceptd/bin/perceptd.
        said = verify_units(units, "perceptd.service", tmp_path / host,
                            {"/opt/perceptd/bin/perceptd": str(root / "opt/perceptd/bin/perceptd")})
        assert "perceptd" not in said, said  # not a warning about the unit or its drop-in (e.g. an unknown key)
        shutil.copy(package_unit, units / "prometheus.service")  # the package's unit with the role's drop-in
        try:
            said = verify_units(units, "prometheus.service", tmp_path / host, {})
        finally:
            (units / "prometheus.service").unlink()
        assert "prometheus" not in said and "perceptd-agent" not in said, said


def test_ansible_role_when_a_camera_key_is_misspelled_fails_and_keeps_the_devices_config(fleet, tmp_path):
    host = HOSTS[0]
    config = fleet.roots[host] / "etc/perceptd/perceptd.yaml"
    before = config.read_bytes()
    cameras = [dict(c) for c in EXAMPLE["hosts"][host]["perceptd_cameras"]]
    cameras[0]["detect_fsp"] = 5  # detect_fps
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"jetsons": {"hosts": {host: {"perceptd_cameras": cameras}}}}))
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", str(ANSIBLE / "inventory.example.yml"), "-i", str(fleet.inventory),
         "-i", str(broken), "-e", f"@{fleet.vault}", "--vault-password-file", str(fleet.vault_password),
         "--limit", host, "site.yml"],
        cwd=ANSIBLE, env=fleet.env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert recap(out)[host]["failed"] == 1
    # perceptd's own message, with the line and the key it meant, in the failed task's output.
    assert "Write the config" in out and "detect_fsp" in out and "detect_fps" in out, out[-4000:]
    assert config.read_bytes() == before  # the device keeps the config it runs


def test_ansible_playbook_when_checked_passes_syntax_check_and_production_lint(tmp_path):
    need(tool("ansible-lint") is not None, "ansible-lint (the test extra)")
    env = ansible_env(tmp_path / "ansible-home")
    syntax = subprocess.run([tool("ansible-playbook"), "-i", "inventory.example.yml", "--syntax-check", "site.yml"],
                            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=300)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    lint = subprocess.run([tool("ansible-lint")], cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=600)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Profile 'production' was required, and it passed" in lint.stdout + lint.stderr


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """config/ copied (the role finds the unit at ../../../perceptd.service) with one edit in one file."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    path = tmp_path / "config/ansible" / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {file}"
    path.write_text(text.replace(old, new))
    return tmp_path / "config/ansible"


def test_ansible_lint_when_a_module_parameter_is_misspelled_fails(tmp_path):
    need(tool("ansible-lint") is not None, "ansible-lint (the test extra)")
    # (A template's or copy's options are not checked by ansible-lint, those being action plugins: the role's
    # real run above fails on them instead.)
    copy = broken_copy(tmp_path, "roles/perceptd/tasks/venv.yml", '    patterns: ["opencv_python*',
                       '    paterns: ["opencv_python*')
    lint = subprocess.run([tool("ansible-lint")], cwd=copy, env=ansible_env(tmp_path / "ansible-home"),
                          capture_output=True, text=True, timeout=600)
    out = lint.stdout + lint.stderr
    assert lint.returncode != 0, out
    assert "args[module]" in out and "paterns" in out, out


def test_ansible_syntax_check_when_a_task_keyword_is_misspelled_fails(tmp_path):
    need(tool("ansible-playbook") is not None, "ansible-core (the test extra)")
    copy = broken_copy(tmp_path, "roles/perceptd/tasks/venv.yml", "  notify: Restart perceptd\n\n- name: Install the packages",
                       "  notifyy: Restart perceptd\n\n- name: Install the packages")
    syntax = subprocess.run([tool("ansible-playbook"), "-i", "inventory.example.yml", "--syntax-check", "site.yml"],
                            cwd=copy, env=ansible_env(tmp_path / "ansible-home"), capture_output=True, text=True,
                            timeout=300)
    assert syntax.returncode != 0
    assert "notifyy" in syntax.stdout + syntax.stderr
