"""Validation of the workflow configuration and of the recording sample sheet.

Errors name the file, the row or key, the offending value and the fix, because the people
who read them are running a 10,000-recording cohort, not debugging Python.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
import yaml

if TYPE_CHECKING:  # pandas is imported where it is used: `psgfm export` never needs it
    import pandas as pd

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
RECORDINGS_SCHEMA = SCHEMA_DIR / "recordings.schema.yaml"
SHEET_COLUMNS = ("recording_id", "subject_id", "edf", "hypnogram", "psg_date", "site", "events")
OPTIONAL_COLUMNS = ("hypnogram", "site", "events")


class ConfigError(ValueError):
    """A configuration or sample-sheet problem the user must fix."""


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (the same documents, ~10x faster)."""


def load_schema(path: Path) -> dict:
    """A YAML schema file as a dict."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=SAFE_LOADER)


def fill_defaults(instance: dict, schema: dict) -> None:
    """Fill the schema's ``default`` values into ``instance`` where keys are absent, recursively."""
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub and key not in instance:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict):
            fill_defaults(instance[key], sub)


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _explain(error: jsonschema.ValidationError, schema: dict) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{error.message}; add it (see config/config.yaml for a documented example)"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message


def validate_config(config: dict, source: str = "config/config.yaml") -> dict:
    """Validate ``config`` against the schema; return a copy with defaults filled in."""
    schema = load_schema(CONFIG_SCHEMA)
    cfg = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  - {_where(e)}: {_explain(e, schema)}" for e in errors]
        raise ConfigError(
            f"{source} is not valid ({len(errors)} problem(s)):\n"
            + "\n".join(lines)
            + f"\nFix the keys above; the schema is {CONFIG_SCHEMA}."
        )
    fill_defaults(cfg, schema)
    exp = cfg["export"]
    if exp["chunk_seconds"] % exp["patch_seconds"]:
        raise ConfigError(
            f"{source}: export.chunk_seconds ({exp['chunk_seconds']}) must be a multiple of "
            f"export.patch_seconds ({exp['patch_seconds']})."
        )
    if exp["chunk_seconds"] % exp["epoch_seconds"]:
        raise ConfigError(
            f"{source}: export.chunk_seconds ({exp['chunk_seconds']}) must be a multiple of "
            f"export.epoch_seconds ({exp['epoch_seconds']})."
        )
    return sorted_keys(cfg)


def sorted_keys(value):
    """``value`` with the keys of every mapping in it sorted (lists keep their order).

    Snakemake decides whether a rule's params changed by comparing their ``repr``; a dict's
    repr follows key order, so reordering keys in config.yaml would re-run rules whose config
    did not change. Every rule receives its config blocks with sorted keys, so it does not.
    """
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


def load_config(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=SAFE_LOADER) or {}
    return validate_config(raw, source=str(path))


def load_recordings(path: str | Path) -> pd.DataFrame:
    """Read and validate the sample sheet; every problem is reported with row and column."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sample sheet {path} does not exist; set `samples:` in the config.")
    return validate_recordings(read_sheet_tsv(path), path)


def read_sheet_tsv(path: str | Path) -> pd.DataFrame:
    """A TSV sample sheet as strings, values as they are: a ``#`` inside a value is part of
    it (paths may hold ``#``, as ``psgfm sheet`` writes them); only lines whose first
    character is ``#`` are comments."""
    import pandas as pd

    with open(path, encoding="utf-8", newline="") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    return pd.read_csv(
        io.StringIO("".join(lines)),
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )


def validate_recordings(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Validate a sample sheet read as strings (``path`` names it in errors); return it with
    the optional columns filled in and values stripped."""
    import pandas as pd

    df = df.copy()
    df.columns = [c.strip() for c in df.columns]
    unknown = [c for c in df.columns if c not in SHEET_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown column(s) {unknown}; allowed: {', '.join(SHEET_COLUMNS)}."
        )
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    schema = load_schema(RECORDINGS_SCHEMA)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for i, row in enumerate(df.to_dict("records")):
        record = {k: v.strip() for k, v in row.items() if isinstance(v, str) and v.strip()}
        for err in validator.iter_errors(record):
            col = _where(err) if err.absolute_path else err.message.split("'")[1]
            value = record.get(col, "")
            problems.append(
                f"  - row {i + 2} (recording_id={record.get('recording_id', '?')}), column "
                f"{col}: {err.message if err.validator != 'pattern' else repr(value) + ' is malformed'}"
                f"; expected: {schema['properties'].get(col, {}).get('description', '')}"
            )
        if "psg_date" in record and not problems:
            try:
                pd.Timestamp(record["psg_date"])
            except ValueError:
                problems.append(
                    f"  - row {i + 2} (recording_id={record.get('recording_id')}), column psg_date: "
                    f"{record['psg_date']!r} is not a calendar date; use YYYY-MM-DD"
                )
    dup = df["recording_id"][df["recording_id"].duplicated()].unique().tolist()
    if dup:
        problems.append(f"  - recording_id values repeat: {dup}; each recording needs its own id")
    if problems:
        raise ConfigError(f"sample sheet {path} is not valid:\n" + "\n".join(problems))
    if df.empty:
        raise ConfigError(f"sample sheet {path} lists no recordings; add at least one row.")
    return df.apply(lambda s: s.str.strip())


def batches(recording_ids: list[str], batch_size: int) -> dict[str, list[str]]:
    """Split recordings, in sheet order, into batches named ``b0000``, ``b0001``, ..."""
    return {
        f"b{k // batch_size:04d}": recording_ids[k : k + batch_size]
        for k in range(0, len(recording_ids), batch_size)
    }
