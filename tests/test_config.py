"""Config and sample-sheet validation: clear errors naming the key/row and the fix."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT

from psgfm.config import ConfigError, batches, load_recordings, validate_config

CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_fill():
    cfg = validate_config(CONFIG)
    assert cfg["harmonise"]["target_fs"] == 128
    partial = copy.deepcopy(CONFIG)
    del partial["harmonise"]["flat_std_uv"]
    assert validate_config(partial)["harmonise"]["flat_std_uv"] == 0.1


def _layer(base: dict, over: dict) -> dict:
    """Snakemake's --configfile layering: nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _layer(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _overlay_path(name: str):
    """An experiment's config overlay: experiments/<folder>/<name>, exactly one of them."""
    found = sorted((ROOT / "experiments").glob(f"*/{name}"))
    assert len(found) == 1, f"{name}: expected one experiments/*/{name}, found {found}"
    return found[0]


def _overlay(name: str) -> dict:
    return yaml.safe_load(_overlay_path(name).read_text())


def test_validation_overlays_are_valid_configs():
    val = yaml.safe_load((ROOT / "config" / "validation.yaml").read_text())
    atlas = _overlay("validation-atlas.yaml")
    cfg = validate_config(_layer(CONFIG, val), "config/validation.yaml")
    assert cfg["probe"]["enabled"] and cfg["pretrain"]["spectral_weight"] == 1.0
    both = validate_config(_layer(_layer(CONFIG, val), atlas), "validation-atlas.yaml")
    # the larger atlas cohort: embedded with make validate's encoder, everything else as there
    assert both["model"]["checkpoint"] == f"{cfg['results']}/model/encoder.pt"
    assert not both["probe"]["enabled"] and both["results"] != cfg["results"]
    assert both["atlas"] == cfg["atlas"] and both["embed"] == cfg["embed"]
    assert both["phenome"]["min_cases"] == cfg["phenome"]["min_cases"]
    third = _overlay("validation-atlas2.yaml")
    follow = validate_config(_layer(cfg, third), "validation-atlas2.yaml")
    assert follow["model"]["checkpoint"] == both["model"]["checkpoint"]
    assert (follow["atlas"]["combine"], follow["atlas"]["pca_scope"]) == ("concat", "modality")
    assert follow["demo"]["seed"] not in (cfg["demo"]["seed"], both["demo"]["seed"])
    fourth = _overlay("validation-atlas3.yaml")
    check = validate_config(_layer(cfg, fourth), "validation-atlas3.yaml")
    assert check["atlas"]["penalizer"] == [0.01, 0.1, 1, 10, 100]
    assert check["atlas"]["pca_components"] is None and check["atlas"]["combine"] == "concat"
    seeds = {cfg["demo"]["seed"], both["demo"]["seed"], follow["demo"]["seed"]}
    assert check["demo"]["seed"] not in seeds
    assert len({check["results"], follow["results"], both["results"], cfg["results"]}) == 4
    fifth = _overlay("validation-atlas4.yaml")
    confirm = validate_config(_layer(cfg, fifth), "validation-atlas4.yaml")
    assert confirm["atlas"] == check["atlas"] and confirm["demo"]["n_subjects"] == 1200
    assert confirm["demo"]["seed"] not in seeds | {check["demo"]["seed"]}
    # the read-out heads' declared check: a sixth cohort, the same block plus atlas.readout
    sixth = _overlay("validation-atlas5.yaml")
    ro = validate_config(_layer(cfg, sixth), "validation-atlas5.yaml")
    assert {k: v for k, v in ro["atlas"].items() if k != "readout"} == {
        k: v for k, v in check["atlas"].items() if k != "readout"
    }
    assert ro["atlas"]["readout"]["enabled"] and not check["atlas"]["readout"]["enabled"]
    assert ro["atlas"]["readout"]["targets"] == ["ahi", "n3_fraction"]
    assert ro["demo"]["seed"] not in seeds | {check["demo"]["seed"], confirm["demo"]["seed"]}
    assert ro["model"]["checkpoint"] == check["model"]["checkpoint"]
    rep = _overlay("validation-atlas6.yaml")
    again = validate_config(_layer(cfg, rep), "validation-atlas6.yaml")
    assert again["atlas"] == ro["atlas"] and again["model"] == ro["model"]
    assert again["demo"]["seed"] not in seeds | {ro["demo"]["seed"], confirm["demo"]["seed"]}
    big = _overlay("validation-atlas7.yaml")
    larger = validate_config(_layer(cfg, big), "validation-atlas7.yaml")
    assert larger["atlas"] == ro["atlas"] and larger["demo"]["n_subjects"] == 1000
    assert larger["demo"]["seed"] not in {again["demo"]["seed"], ro["demo"]["seed"]} | seeds
    # make validate-seeds: the 8-epoch seed runs keep make validate's cohort and phenome, with
    # the atlas block of the third to fifth cohorts
    long = _overlay("validation-long.yaml")
    seed = {"results": "results-validation-long-s43", "model": {"seed": 43}}
    run = validate_config(_layer(_layer(cfg, long), seed), "validation-long.yaml")
    assert run["atlas"] == check["atlas"] and run["samples"] == cfg["samples"]
    assert run["phenome"] == cfg["phenome"] and run["model"]["seed"] == 43
    # the oracle command's --configfile reads the same layered atlas block
    from psgfm.validation.atlas import atlas_block

    files = [ROOT / "config" / "validation.yaml", _overlay_path("validation-atlas3.yaml")]
    assert atlas_block(files) == check["atlas"]


def test_config_holds_only_the_user_config_and_every_experiment_overlay_is_valid():
    """config/ is the pipeline's; every experiment overlay layers over config/validation.yaml."""
    assert sorted(p.name for p in (ROOT / "config").iterdir()) == [
        "config.yaml",
        "recordings.tsv",
        "validation.yaml",
    ]
    val = _layer(CONFIG, yaml.safe_load((ROOT / "config" / "validation.yaml").read_text()))
    overlays = sorted((ROOT / "experiments").glob("*/*.yaml"))
    assert len(overlays) >= 9
    for path in overlays:
        cfg = validate_config(_layer(val, yaml.safe_load(path.read_text())), str(path))
        assert cfg["results"].startswith("results-validation"), path
    # the read-outs' re-run overlay, layered as its comment says (over the 8-epoch overlay)
    readout = _layer(
        _layer(val, _overlay("validation-long.yaml")), _overlay("validation-readout.yaml")
    )
    ro = validate_config(readout, "validation-readout.yaml")
    assert ro["atlas"]["readout"]["enabled"] and ro["atlas"]["combine"] == "concat"


def _reversed_keys(value):
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_key_order_does_not_change_what_rules_receive():
    """Snakemake compares params by repr: reordered config keys must give identical blocks."""
    before = validate_config(CONFIG)
    after = validate_config(_reversed_keys(CONFIG))
    assert list(CONFIG["harmonise"]) != list(_reversed_keys(CONFIG)["harmonise"])
    for block in before:
        assert repr(before[block]) == repr(after[block]), block
    assert before == validate_config(CONFIG)  # same content, defaults included


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c["harmonise"].update(target_fs="fast"), r"harmonise.target_fs"),
        (lambda c: c["harmonise"].update(batchsize=3), r"'batchsize' was unexpected.*allowed keys"),
        (lambda c: c["export"].update(dtype="int8"), r"export.dtype.*'int8' is not one of"),
        (lambda c: c.pop("samples"), r"'samples' is a required property"),
        (lambda c: c["export"].update(chunk_seconds=301), r"multiple of export.patch_seconds"),
        (lambda c: c["atlas"].update(penalizer=[]), r"atlas.penalizer"),
        (lambda c: c["atlas"].update(penalizer=[0.1, -1]), r"atlas.penalizer"),
    ],
)
def test_invalid_config_is_reported(mutate, match):
    cfg = copy.deepcopy(CONFIG)
    mutate(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def _sheet(tmp_path, text):
    p = tmp_path / "s.tsv"
    p.write_text(text)
    return p


def test_sample_sheet_errors_name_row_and_column(tmp_path):
    head = "recording_id\tsubject_id\tedf\thypnogram\tpsg_date\tsite\n"
    ok = load_recordings(_sheet(tmp_path, head + "r1\tS1\ta.edf\t\t2019-01-02\tx\n"))
    assert ok.loc[0, "hypnogram"] == ""
    with pytest.raises(ConfigError, match=r"row 3 \(recording_id=r2\), column psg_date"):
        load_recordings(
            _sheet(
                tmp_path, head + "r1\tS1\ta.edf\t\t2019-01-02\t\nr2\tS2\tb.edf\t\t02/01/2019\t\n"
            )
        )
    with pytest.raises(ConfigError, match="repeat"):
        load_recordings(
            _sheet(
                tmp_path, head + "r1\tS1\ta.edf\t\t2019-01-02\t\nr1\tS2\tb.edf\t\t2019-01-02\t\n"
            )
        )
    with pytest.raises(ConfigError, match="unknown column"):
        load_recordings(
            _sheet(tmp_path, "recording_id\tsubject\tedf\tpsg_date\nr\tS\ta\t2019-01-01\n")
        )
    with pytest.raises(ConfigError, match="column subject_id"):
        load_recordings(_sheet(tmp_path, "recording_id\tedf\tpsg_date\nr\ta\t2019-01-01\n"))
    with pytest.raises(ConfigError, match="not a calendar date"):
        load_recordings(_sheet(tmp_path, head + "r1\tS1\ta.edf\t\t2019-02-31\t\n"))
    with pytest.raises(ConfigError, match="lists no recordings"):
        load_recordings(_sheet(tmp_path, head))


def test_batches_cover_every_recording_once():
    ids = [f"r{i}" for i in range(17)]
    b = batches(ids, 8)
    assert list(b) == ["b0000", "b0001", "b0002"]
    assert sum(b.values(), []) == ids
