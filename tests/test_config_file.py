"""The shipped config files stay true: the documented default is the built-in default."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Settings, load_settings
from tests.conftest import REPO, run_perceptd


def test_documented_config_when_loaded_equals_the_builtin_defaults():
    assert load_settings(REPO / "config" / "perceptd.yaml") == load_settings(None)


def test_documented_config_when_read_mentions_every_key():
    text = (REPO / "config" / "perceptd.yaml").read_text()

    def keys(model) -> set[str]:
        out = set()
        for name, field in model.model_fields.items():
            out.add(name)
            ann = field.annotation
            for t in (ann, *getattr(ann, "__args__", ())):
                if isinstance(t, type) and issubclass(t, Settings.__mro__[1]):
                    out |= keys(t)
        return out

    missing = [k for k in keys(Settings) if f"{k}:" not in text]
    assert not missing, f"config/perceptd.yaml does not document: {missing}"


def test_check_config_when_file_is_the_documented_default(cache_dir):
    proc = run_perceptd("check-config", str(Path("config/perceptd.yaml")), cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
