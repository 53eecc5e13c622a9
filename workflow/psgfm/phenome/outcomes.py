"""Named outcomes: all-cause mortality and composites of phecodes / ICD prefixes.

Definitions are read from a YAML file (``phenome.outcomes``; the shipped
``resources/named_outcomes.yaml`` holds the 24 named labels of the SleepFM-Clinical release).
A composite outcome becomes one more column of the stage's (person, phecode) grids: a record
counts toward it when its code maps to one of its phecodes or starts with one of its ICD
prefixes, and the phecode rules apply unchanged. Mortality is labelled from the persons table
(event = death at the end of follow-up; no prevalent cases).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from psgfm.phenome.maps import normalise_code

FIELDS = {
    "mortality",
    "phecodes",
    "icd10",
    "icd9",
    "description",
    "category",
    "source",
    "judgement",
}
# input code systems each prefix family applies to
PREFIX_SYSTEMS = {"icd10": ("ICD10CM", "ICD10"), "icd9": ("ICD9CM",)}


class OutcomeDefinitionError(ValueError):
    """The named-outcome definitions are malformed; the message names the file and the fix."""


@dataclass
class Outcome:
    name: str
    description: str
    category: str
    source: str
    mortality: bool = False
    phecodes: list[str] = field(default_factory=list)
    icd10: list[str] = field(default_factory=list)
    icd9: list[str] = field(default_factory=list)
    judgement: str | None = None


def _codes(value, name: str, key: str, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | int | float):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise OutcomeDefinitionError(
            f"{path}: outcome {name!r}: {key} must be a list of codes (got {value!r}). "
            f'Fix: write e.g. {key}: ["428"].'
        )
    return [str(v).strip() for v in value if str(v).strip()]


def load_outcomes(path: str | os.PathLike | None) -> list[Outcome]:
    """Validated outcome definitions of ``path`` (in file order); [] when ``path`` is None."""
    if path is None:
        return []
    path = str(path)
    if not Path(path).exists():
        raise OutcomeDefinitionError(
            f"{path}: named-outcome definitions not found. Fix: set phenome.outcomes to an "
            "existing YAML file (e.g. resources/named_outcomes.yaml) or to null."
        )
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise OutcomeDefinitionError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(raw, dict) or not raw:
        raise OutcomeDefinitionError(
            f"{path}: expected a mapping of outcome name -> definition (got {type(raw).__name__})."
        )
    out = []
    for name, spec in raw.items():
        name = str(name).strip()
        if not isinstance(spec, dict):
            raise OutcomeDefinitionError(f"{path}: outcome {name!r} must be a mapping.")
        unknown = sorted(set(spec) - FIELDS)
        if unknown:
            raise OutcomeDefinitionError(
                f"{path}: outcome {name!r} has unknown key(s) {unknown}; allowed: {sorted(FIELDS)}."
            )
        missing = [k for k in ("description", "category", "source") if not spec.get(k)]
        if missing:
            raise OutcomeDefinitionError(
                f"{path}: outcome {name!r} lacks {missing}. Fix: describe every outcome "
                "(description, category, source)."
            )
        o = Outcome(
            name=name,
            description=str(spec["description"]),
            category=str(spec["category"]),
            source=str(spec["source"]),
            mortality=bool(spec.get("mortality", False)),
            phecodes=_codes(spec.get("phecodes"), name, "phecodes", path),
            icd10=_codes(spec.get("icd10"), name, "icd10", path),
            icd9=_codes(spec.get("icd9"), name, "icd9", path),
            judgement=spec.get("judgement"),
        )
        has_codes = bool(o.phecodes or o.icd10 or o.icd9)
        if o.mortality == has_codes:
            raise OutcomeDefinitionError(
                f"{path}: outcome {name!r} must be either mortality: true or a composite with "
                "phecodes / icd10 / icd9 (not both, not neither)."
            )
        out.append(o)
    if sum(o.mortality for o in out) > 1:
        raise OutcomeDefinitionError(f"{path}: more than one outcome has mortality: true.")
    return out


def check_names(outcomes: list[Outcome], phecodes: list[str], path: str) -> None:
    """Outcome names must not be phecodes of the map (they share the label tables)."""
    clash = sorted({o.name for o in outcomes} & set(phecodes))
    if clash:
        raise OutcomeDefinitionError(
            f"{path}: outcome name(s) {clash} are phecodes of the map; rename them."
        )


def outcome_rows(outcomes: list[Outcome]) -> pl.DataFrame:
    """Phecode-table rows of the outcomes (phecode = name; sex Both; no exclusion range)."""
    return pl.DataFrame(
        {
            "phecode": [o.name for o in outcomes],
            "phecode_string": [o.description for o in outcomes],
            "phecode_category": [o.category for o in outcomes],
            "sex": ["Both"] * len(outcomes),
            "exclude_range": pl.Series([None] * len(outcomes), dtype=pl.String),
        }
    )


def prefix_table(outcomes: list[Outcome], index: dict[str, int]) -> pl.DataFrame:
    """(input code_system, dotless prefix, phecode_idx) of every composite's ICD prefixes."""
    rows = []
    for o in outcomes:
        for family in ("icd10", "icd9"):
            for prefix in getattr(o, family):
                key = normalise_code(prefix)
                for system in PREFIX_SYSTEMS[family]:
                    rows.append((system, key, index[o.name]))
    return pl.DataFrame(
        rows,
        schema={"code_system": pl.String, "prefix": pl.String, "phecode_idx": pl.UInt32},
        orient="row",
    ).unique(maintain_order=True)


def definitions_table(outcomes: list[Outcome]) -> list[dict]:
    """The definitions as plain dicts (provenance)."""
    return [
        {
            k: v
            for k, v in o.__dict__.items()
            if v not in (None, [], False) or k in ("name", "mortality")
        }
        for o in outcomes
    ]
