"""Phecode maps: fetch (as data), verify, load; ICD code normalisation; exclusion ranges.

The published maps (phecode 1.2, phecodeX, phecodeX_WHO) ship as CSVs inside the PheTK wheel
on PyPI. PheTK is GPL-3.0, so it is never imported or vendored here: the pinned wheel is
downloaded at run time, its sha256 and the sha256 of the CSV inside it are checked, and the CSV
is extracted into ``resources/phecode_maps/`` (git-ignored). A user may instead point the
config at a folder holding ``{name}.csv`` (``phenome.map.source: path``).

Map layout after :func:`load_map` (one row per ICD code x phecode it counts toward)::

    code_system   ICD9CM | ICD10CM | ICD10   (from the map's ``flag`` column and map name)
    icd           the code as the map writes it (with dots)
    icd_key       dotless, upper-case form used for joining
    phecode       the phecode the code counts toward (phecode 1.2: ``phecode_unrolled``,
                  so a code lists its own phecode and each roll-up parent as separate rows)
    phecode_string, phecode_category, sex (Both | Female | Male), exclude_range (phecode12)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import polars as pl

from psgfm.io import atomic_path, sha256_file

PHETK_VERSION = "0.3.6"
PHETK_WHEEL = f"phetk-{PHETK_VERSION}-py3-none-any.whl"
PHETK_WHEEL_SHA256 = "777f4d11950d5162ee656f13113b7603f98ff6effcdc3b7d3e558152e5a3830b"
MAPS = {
    "phecode12": {
        "member": "phetk/phecode/phecode12.csv",
        "sha256": "ff4e90d3c2d31a902195238a98c8f1d5654c7d064a22639a31c52f3a77ab0ac9",
        "version": "1.2",
    },
    "phecodeX": {
        "member": "phetk/phecode/phecodeX.csv",
        "sha256": "c7eff3824f371e4c6d5b4f6283d33532c2bb69cd627d8524f318aa088e818a74",
        "version": "X (US ICD-9-CM/ICD-10-CM)",
    },
    "phecodeX_WHO": {
        "member": "phetk/phecode/phecodeX_WHO.csv",
        "sha256": "4eb4fb97f1c19eb1e4e0276b3bc48834ba6422b3eb3e9402c71885fba5b5b78f",
        "version": "X (WHO ICD-10)",
    },
}
LICENCE_NOTE = (
    f"Map CSV taken as data from the PheTK {PHETK_VERSION} wheel on PyPI (PheTK is GPL-3.0; "
    "its code is neither imported nor redistributed). The phecode maps are published by the "
    "PheWAS Catalog / phecodeX authors (Bastarache et al.); cite them and check their terms "
    "before redistributing the CSV."
)
CODE_SYSTEMS = ("ICD9CM", "ICD10CM", "ICD10")
MAP_COLUMNS = (
    "code_system",
    "icd",
    "icd_key",
    "phecode",
    "phecode_string",
    "phecode_category",
    "sex",
    "exclude_range",
)


class PhecodeMapError(ValueError):
    """The phecode map could not be fetched, verified or read."""


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


def normalise_code_expr(expr: pl.Expr) -> pl.Expr:
    """Join key of an ICD code: whitespace stripped, upper-case, dots removed.

    'I10.', ' i10 ', 'I10' -> 'I10'; '401.9', '4019' -> '4019'; 'A01.03', 'A0103' -> 'A0103'.
    Map codes carry dots at the standard position and no two map codes of one code system
    share a dotless form, so matching on the dotless form accepts both input styles.
    """
    return (
        expr.cast(pl.String)
        .str.strip_chars()
        .str.to_uppercase()
        .str.replace_all(r"[.\s]", "")
        .replace("", None)
    )


def normalise_code(code: str | None) -> str | None:
    """Python twin of :func:`normalise_code_expr` (used by the pandas reference)."""
    if code is None:
        return None
    key = "".join(str(code).strip().upper().replace(".", "").split())
    return key or None


def normalise_code_system_expr(expr: pl.Expr) -> pl.Expr:
    """'icd10-cm', ' ICD10CM ', 'ICD-9-CM' -> 'ICD10CM' / 'ICD9CM'; 'ICD10' stays WHO."""
    return expr.cast(pl.String).str.strip_chars().str.to_uppercase().str.replace_all(r"[-_ ]", "")


def normalise_code_system(value: str | None) -> str | None:
    if value is None:
        return None
    return "".join(ch for ch in str(value).strip().upper() if ch not in "-_ ")


def phecode_from_number(value: str | float) -> str:
    """SleepFM/PheWAS numeric phecode -> phecode 1.2 string: 8.0 -> '008', 250.21 -> '250.21'."""
    text = str(value).strip()
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    whole = whole.zfill(3)
    return f"{whole}.{frac}" if frac else whole


def phecode_sort_key(phecode: str) -> tuple:
    """Numeric order of phecode strings ('008' < '008.5' < '010'; 'ID_001' style too)."""
    prefix, _, rest = phecode.rpartition("_")
    try:
        return (prefix, float(rest), phecode)
    except ValueError:
        return (prefix, float("inf"), phecode)


def parse_exclude_range(text: str | None, known: list[str] | None = None) -> list[str]:
    """Phecodes named by an ``exclude_range`` cell.

    The cell is a comma-separated list of phecodes (the 1.2 map writes each one out), but a
    range ``a-b`` is accepted too: it expands to the ``known`` phecodes numerically within
    [a, b] (both ends included).
    """
    if text is None:
        return []
    out: list[str] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (float(x) for x in part.split("-", 1))
            out.extend(p for p in known or [] if lo <= float(p) <= hi)
        else:
            out.append(phecode_from_number(part) if part[0].isdigit() else part)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Fetch and verify
# ---------------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(dest_dir: Path) -> Path:
    """Download the pinned PheTK wheel (pip, else the PyPI JSON API) into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PHETK_WHEEL
    if target.exists():
        return target
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [f"phetk=={PHETK_VERSION}", "-d", str(dest_dir), "--quiet"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        if target.exists():
            return target
    except (subprocess.SubprocessError, OSError):
        pass
    url = f"https://pypi.org/pypi/phetk/{PHETK_VERSION}/json"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            meta = json.load(resp)
        wheel_url = next(u["url"] for u in meta["urls"] if u["filename"] == PHETK_WHEEL)
        with urllib.request.urlopen(wheel_url, timeout=120) as resp, atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
    except Exception as exc:  # noqa: BLE001 - any network failure reads the same to the user
        raise PhecodeMapError(
            f"could not download {PHETK_WHEEL} from PyPI ({exc}). Fix: run where PyPI is "
            "reachable, or download the wheel yourself, extract the map CSV and set "
            "phenome.map.source: path with phenome.map.path: <folder holding the CSV>."
        ) from exc
    return target


def extract_map(wheel: str | os.PathLike, name: str, out_csv: str | os.PathLike) -> dict:
    """Verify ``wheel`` and the map CSV inside it; write the CSV to ``out_csv``."""
    if name not in MAPS:
        raise PhecodeMapError(f"unknown map {name!r}; choose one of {sorted(MAPS)}")
    spec = MAPS[name]
    got = sha256_file(wheel)
    if got != PHETK_WHEEL_SHA256:
        raise PhecodeMapError(
            f"{wheel}: sha256 {got} does not match the pinned {PHETK_WHEEL_SHA256} of "
            f"{PHETK_WHEEL}. Fix: delete the file and fetch it again from PyPI."
        )
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(spec["member"])
    got = _sha256_bytes(data)
    if got != spec["sha256"]:
        raise PhecodeMapError(
            f"{wheel}:{spec['member']}: sha256 {got} does not match the pinned {spec['sha256']}."
        )
    with atomic_path(out_csv) as tmp:
        tmp.write_bytes(data)
    return {
        "name": name,
        "version": spec["version"],
        "source": f"pypi:phetk=={PHETK_VERSION} ({PHETK_WHEEL}, member {spec['member']})",
        "wheel_sha256": PHETK_WHEEL_SHA256,
        "sha256": got,
        "licence": LICENCE_NOTE,
    }


def fetch_map(
    name: str,
    out_csv: str | os.PathLike,
    source: str = "pypi",
    path: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Put map ``name`` at ``out_csv``; return its provenance (name, version, source, sha256)."""
    if name not in MAPS:
        raise PhecodeMapError(f"unknown map {name!r}; choose one of {sorted(MAPS)}")
    if source == "path":
        if not path:
            raise PhecodeMapError(
                "phenome.map.source is 'path' but phenome.map.path is empty; set it to the "
                f"folder holding {name}.csv."
            )
        src = Path(path)
        src = src / f"{name}.csv" if src.is_dir() else src
        if not src.exists():
            raise PhecodeMapError(f"phecode map {src} does not exist; fix phenome.map.path.")
        with atomic_path(out_csv) as tmp:
            shutil.copyfile(src, tmp)
        digest = sha256_file(out_csv)
        pinned = MAPS[name]["sha256"]
        return {
            "name": name,
            "version": MAPS[name]["version"] if digest == pinned else "user-supplied",
            "source": f"path:{src}",
            "sha256": digest,
            "matches_pinned_sha256": digest == pinned,
            "licence": "user-supplied copy; see its origin for terms. " + LICENCE_NOTE,
        }
    if source != "pypi":
        raise PhecodeMapError(f"phenome.map.source must be 'pypi' or 'path', not {source!r}")
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return extract_map(_download_wheel(Path(tmp)), name, out_csv)
    return extract_map(_download_wheel(Path(cache_dir)), name, out_csv)


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


def _code_system_of(name: str, flag: pl.Expr) -> pl.Expr:
    if name == "phecodeX_WHO":
        return pl.lit("ICD10")
    return pl.when(flag == "9").then(pl.lit("ICD9CM")).otherwise(pl.lit("ICD10CM"))


def load_map(path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Read a map CSV into the layout of the module docstring (see there)."""
    path = Path(path)
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # noqa: BLE001
        raise PhecodeMapError(f"{path}: cannot read the phecode map CSV ({exc})") from exc
    return standardise_map(raw, name, source=str(path))


def standardise_map(raw: pl.DataFrame, name: str, source: str = "map") -> pl.DataFrame:
    """Map CSV columns (phecode, ICD, flag, ...) -> the standard layout (one row per code x
    phecode). For phecode 1.2 the target is ``phecode_unrolled`` and the phecode-level
    attributes (string, category, sex, exclude_range) are those of that target phecode."""
    need = ["phecode", "ICD", "flag", "phecode_string", "phecode_category", "sex"]
    if name == "phecode12":
        need += ["exclude_range", "phecode_unrolled"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise PhecodeMapError(
            f"{source}: map {name} lacks column(s) {missing}; a {name} map needs {need}."
        )
    raw = raw.with_columns(pl.col(c).cast(pl.String) for c in need)
    if "exclude_range" not in raw.columns:
        raw = raw.with_columns(exclude_range=pl.lit(None, pl.String))
    attrs = (
        raw.select("phecode", "phecode_string", "phecode_category", "sex", "exclude_range")
        .unique("phecode", keep="first", maintain_order=True)
        .with_columns(pl.col("sex").str.strip_chars().str.to_titlecase())
    )
    target = "phecode_unrolled" if name == "phecode12" else "phecode"
    out = (
        raw.select(
            code_system=_code_system_of(name, pl.col("flag").str.strip_chars()),
            icd=pl.col("ICD").str.strip_chars(),
            phecode=pl.col(target).str.strip_chars(),
        )
        .with_columns(icd_key=normalise_code_expr(pl.col("icd")))
        .unique(["code_system", "icd_key", "phecode"], keep="first", maintain_order=True)
        .join(attrs, on="phecode", how="left")
        .with_columns(pl.col("sex").fill_null("Both"))
        .select(MAP_COLUMNS)
    )
    return out


def phecode_table(map_df: pl.DataFrame) -> pl.DataFrame:
    """One row per phecode: phecode, phecode_string, phecode_category, sex, exclude_range."""
    return (
        map_df.select("phecode", "phecode_string", "phecode_category", "sex", "exclude_range")
        .unique("phecode", keep="first")
        .sort("phecode")
    )


def exclusion_pairs(map_df: pl.DataFrame) -> pl.DataFrame:
    """(phecode, excluded_by) pairs: a record of ``excluded_by`` disqualifies a control of
    ``phecode``. The phecode itself is left out (its own records make a case or exclusion)."""
    table = phecode_table(map_df)
    known = table["phecode"].to_list()
    rows = []
    for phe, cell in zip(table["phecode"], table["exclude_range"]):
        for other in parse_exclude_range(cell, known):
            if other != phe:
                rows.append((phe, other))
    return pl.DataFrame(
        rows, schema={"phecode": pl.String, "excluded_by": pl.String}, orient="row"
    ).unique()


def load_sleepfm_subset(path: str | os.PathLike) -> pl.DataFrame:
    """SleepFM-Clinical label vocabulary -> (label_idx, phecode as phecode 1.2 string, phenotype)."""
    df = pl.read_csv(path, infer_schema=False)
    missing = {"label_idx", "phecode"} - set(df.columns)
    if missing:
        raise PhecodeMapError(f"{path}: lacks column(s) {sorted(missing)}")
    return df.select(
        label_idx=pl.col("label_idx").cast(pl.Int64),
        phecode=pl.col("phecode").map_elements(phecode_from_number, return_dtype=pl.String),
        phenotype=pl.col("phenotype") if "phenotype" in df.columns else pl.lit(None, pl.String),
    )


SLEEPFM_N_LABELS = 1065
"""Labels of the SleepFM-Clinical release's disease head (sleepfm_label_mapping.csv)."""


def sleepfm_label_vocabulary(path) -> pd.DataFrame:
    """The release's 1,065 labels: ``label_idx``, ``phecode`` (the phenome's phecode 1.2 string,
    e.g. release ``8.0`` -> ``008``; named outcomes such as ``death`` unchanged),
    ``release_phecode`` (the release's string) and ``phenotype``."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    labels = load_sleepfm_subset(path).to_pandas()
    labels["release_phecode"] = raw["phecode"].to_numpy()
    if len(labels) != SLEEPFM_N_LABELS or labels["label_idx"].tolist() != list(
        range(SLEEPFM_N_LABELS)
    ):
        raise ValueError(
            f"{path}: expected the release's {SLEEPFM_N_LABELS} labels with label_idx 0..{SLEEPFM_N_LABELS - 1} "
            "in order (phenome.sleepfm_labels)"
        )
    if labels["phecode"].duplicated().any():
        dup = labels.loc[labels["phecode"].duplicated(), "phecode"].tolist()[:3]
        raise ValueError(f"{path}: phecode(s) {dup} repeat")
    return labels[["label_idx", "phecode", "release_phecode", "phenotype"]]
