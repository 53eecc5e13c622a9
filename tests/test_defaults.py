"""One source of defaults: every module-level default dict of a stage equals the config
schema's defaults for its block (keys the schema requires, which have no schema default, equal
the documented value in config/config.yaml), so a stage called from Python behaves as the same
stage run by the workflow with that key left out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from psgfm.atlas import readout, run
from psgfm.config import CONFIG_SCHEMA, load_schema
from psgfm.heads import apnea
from psgfm.model import embed, pretrain
from psgfm.signals import export, harmonise

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(CONFIG_SCHEMA)
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))

MODULE_DEFAULTS = {
    "harmonise": harmonise.DEFAULTS,
    "export": export.DEFAULTS,
    "atlas": run.DEFAULTS,
    "atlas.readout": readout.DEFAULTS,
    "model": pretrain.MODEL_DEFAULTS,
    "pretrain": pretrain.PRETRAIN_DEFAULTS,
    "embed": embed.EMBED_DEFAULTS,
    "heads.apnea": apnea.DEFAULTS,
}


def _node(path: str) -> tuple[dict, dict]:
    """(schema node, config.yaml block) of a dotted block path."""
    node, conf = SCHEMA, CONFIG
    for key in path.split("."):
        node, conf = node["properties"][key], (conf or {}).get(key)
    return node, conf or {}


def _disagreements(path: str, module: dict, node: dict, conf: dict) -> list[str]:
    out = []
    props = node.get("properties", {})
    for key, value in module.items():
        where = f"{path}.{key}"
        if key not in props:
            out.append(f"{where}: a module default ({value!r}) for a key the schema lacks")
            continue
        sub = props[key]
        if isinstance(value, dict) and "properties" in sub:
            out += _disagreements(where, value, sub, (conf or {}).get(key) or {})
            continue
        value = list(value) if isinstance(value, tuple) else value
        if "default" in sub:
            expected, source = sub["default"], "schema default"
        elif key in (conf or {}):
            expected, source = conf[key], "config/config.yaml (required key)"
        else:
            out.append(f"{where}: neither a schema default nor a value in config/config.yaml")
            continue
        if value != expected:
            out.append(f"{where}: module {value!r} != {source} {expected!r}")
    return out


@pytest.mark.parametrize("block", sorted(MODULE_DEFAULTS))
def test_module_defaults_equal_the_schema(block):
    node, conf = _node(block)
    assert _disagreements(block, MODULE_DEFAULTS[block], node, conf) == []


def test_the_comparison_catches_a_drifted_default():
    node, conf = _node("export")
    drifted = {**export.DEFAULTS, "min_last_chunk_seconds": 61, "not_a_key": 1}
    found = _disagreements("export", drifted, node, conf)
    assert any("min_last_chunk_seconds" in f for f in found)
    assert any("not_a_key" in f for f in found)
