"""Config loading: YAML + key=value overrides into dataclasses, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from deepsynth.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    tags: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    path: str | None = None


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# deepsynth train c.yaml\nname: demo\noptim:\n  lr: 0.001\n")
    cfg = load_config(Cfg, p, ["steps=3", "optim.lr=5e-5", "tags=[a, b]", "path=/x"])
    assert cfg.name == "demo" and cfg.steps == 3 and cfg.tags == ["a", "b"] and cfg.path == "/x"
    assert isinstance(cfg.optim, Optim) and cfg.optim.lr == pytest.approx(5e-5)


def test_defaults_kept_for_missing_nested_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, p)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.lr == 0.5


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="stepz"):
        load_config(Cfg, None, ["stepz=1"])


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, None, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, bad)


def test_bad_scalar_names_key():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(Cfg, None, ["optim.lr=fast"])
