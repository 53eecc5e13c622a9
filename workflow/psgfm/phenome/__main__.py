"""Run the phenome stage outside the workflow: ``python -m psgfm.phenome --config C --out D``.

Reads ``samples`` and the ``phenome`` block of the config (schema defaults filled in and
checked against workflow/schemas/config.schema.yaml), and writes the outputs of rule
``phenome`` into ``--out``. The phecode map is ``--map``, else the one rule ``phecode_map``
put in ``resources/phecode_maps/``, else it is fetched as that rule does.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import jsonschema
import yaml

from psgfm.config import CONFIG_SCHEMA, fill_defaults, load_schema
from psgfm.phenome.build import OUTPUTS, PhenomeInputError, run_phenome
from psgfm.phenome.maps import PhecodeMapError, fetch_map
from psgfm.phenome.outcomes import OutcomeDefinitionError


def phenome_config(path: str | Path) -> tuple[dict, str]:
    """(the phenome block with schema defaults, the sample sheet path) of a config file."""
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    schema = load_schema(CONFIG_SCHEMA)["properties"]
    block = config.get("phenome") or {}
    fill_defaults(block, schema["phenome"])
    try:
        jsonschema.validate(block, schema["phenome"])
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        raise PhenomeInputError(f"{path}: phenome.{where}: {exc.message}") from exc
    if "samples" not in config:
        raise PhenomeInputError(f"{path}: `samples:` (the sample sheet) is not set.")
    return block, config["samples"]


def map_csv(block: dict, out: Path, given: str | None) -> tuple[str, dict | None]:
    if given:
        return given, None
    name = block["map"]["name"]
    cached = Path("resources/phecode_maps") / f"{name}.csv"
    if block["map"]["source"] == "pypi" and cached.exists():
        return str(cached), None
    target = out / "phecode_map" / f"{name}.csv"
    prov = fetch_map(
        name,
        target,
        block["map"]["source"],
        block["map"].get("path"),
        cache_dir="resources/phecode_maps/.wheel",
    )
    return str(target), prov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m psgfm.phenome", description=__doc__)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--out", required=True, help="output folder (results/phenome in the DAG)")
    ap.add_argument("--map", help="phecode map CSV (default: resources/phecode_maps/NAME.csv)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    try:
        block, sheet = phenome_config(args.config)
        csv, prov = map_csv(block, out, args.map)
        native = block.get("input_format", "native") == "native"
        counts = run_phenome(
            block.get("diagnoses") if native else None,
            block.get("persons") if native else None,
            sheet,
            csv,
            out={k: str(out / v) for k, v in OUTPUTS.items()},
            config=block,
            map_provenance=prov,
        )["counts"]
    except (PhenomeInputError, OutcomeDefinitionError, PhecodeMapError) as exc:
        logging.error("%s", exc)
        return 1
    logging.info(
        "phenome: %d persons, %d phecodes and outcomes, %d label rows -> %s",
        counts["persons_in_cohort"],
        counts["phecodes_observed"],
        counts["label_rows"],
        out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
