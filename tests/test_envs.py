"""envs/: one conda environment per kind of rule, pinned within pyproject.toml's bounds."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ENVS = {"cpu": ROOT / "envs" / "cpu.yaml", "torch": ROOT / "envs" / "torch.yaml"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = {
    canonicalize_name(r.name): r
    for r in map(Requirement, PYPROJECT["project"]["dependencies"])
    if canonicalize_name(r.name) != "snakemake"  # runs the rules; not part of their envs
}
TORCH_SPEC = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def _env(path):
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict) and env.get("name") and env.get("channels"), path
    assert env["channels"][0] == "conda-forge", path
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and list(pip[0]) == ["pip"], f"{path}: one pip: section expected"
    return conda, pip[0]["pip"]


def _pins(pip_lines, path) -> dict[str, Version]:
    pins = {}
    for line in pip_lines:
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path}: {line!r} is not pinned"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path}: {name} listed twice"
        pins[name] = Version(spec[0].version)
    return pins


@pytest.mark.parametrize("kind", sorted(ENVS))
def test_env_is_valid_and_pinned_within_pyproject(kind):
    path = ENVS[kind]
    conda, pip = _env(path)
    python = [d for d in conda if d.startswith("python")]
    assert python == ["python=3.11"] and "pip" in conda, conda
    assert Version("3.11") in SpecifierSet(PYPROJECT["project"]["requires-python"])
    pins = _pins(pip, path)
    extra = set(pins) - set(RUNTIME) - {"torch"}
    assert not extra, f"{path}: {sorted(extra)} are not dependencies in pyproject.toml"
    missing = set(RUNTIME) - set(pins)
    assert not missing, f"{path}: pyproject.toml dependencies {sorted(missing)} are not pinned"
    for name, version in pins.items():
        if name in RUNTIME:
            assert version in RUNTIME[name].specifier, (
                f"{path}: {name}=={version} is outside pyproject.toml's {RUNTIME[name]}"
            )


def test_torch_only_in_the_torch_env_at_the_makefile_pin():
    assert "torch" not in _pins(_env(ENVS["cpu"])[1], ENVS["cpu"])
    torch = _pins(_env(ENVS["torch"])[1], ENVS["torch"])["torch"]
    assert f"torch=={torch}" == TORCH_SPEC
    cpu = _pins(_env(ENVS["cpu"])[1], ENVS["cpu"])
    shared = {k: v for k, v in _pins(_env(ENVS["torch"])[1], ENVS["torch"]).items() if k != "torch"}
    assert shared == cpu, "the torch env must pin the CPU stack at the same versions"


def test_every_rule_with_an_action_names_an_existing_env():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^\s*rule (\w+):\s*$", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            if not re.search(r"^\s+(script|shell|run|notebook):", body, re.M):
                continue
            m = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, re.M)
            assert m, f"{smk.name}: rule {name} has no conda: directive"
            env = (smk.parent / m.group(1)).resolve()
            assert env in {p.resolve() for p in ENVS.values()}, f"rule {name}: {m.group(1)}"
