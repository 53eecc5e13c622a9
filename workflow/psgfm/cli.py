"""Command-line interface: ``psgfm <command>``; mirrors the functions the rules call."""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from psgfm import __version__


def missing_files(sheet) -> list[tuple[str, str, str]]:
    """(recording_id, column, path) of every file the sample sheet names that does not exist."""
    out = []
    for row in sheet.to_dict("records"):
        for col in ("edf", "hypnogram", "events"):
            path = row.get(col) or ""
            if path and not Path(path).exists():
                out.append((row["recording_id"], col, path))
    return out


def _cmd_validate(args: argparse.Namespace) -> int:
    from psgfm.config import load_config, load_recordings
    from psgfm.signals.montage import load_rules

    if args.explain:
        return _explain(args)
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path)
    sheet = load_recordings(cfg["samples"])
    rules = load_rules(cfg["harmonise"]["channel_rules"])
    missing = missing_files(sheet)
    print(
        f"{path}: valid; {len(sheet)} recordings in {cfg['samples']}; "
        f"{len(rules.rules)} channel rules (+{len(rules.vocabulary)} vocabulary labels)"
    )
    if missing:
        demo_dir = Path(cfg["demo"]["out_dir"]).resolve()
        in_demo = [
            m
            for m in missing
            if cfg["demo"]["enabled"] and Path(m[2]).resolve().is_relative_to(demo_dir)
        ]
        print(
            f"warning: {len(missing)} file(s) named in {cfg['samples']} do not exist; a run "
            "records their recordings as QC rows ('file not found'):",
            file=sys.stderr,
        )
        for rid, col, p in missing[:20]:
            print(f"  {rid}  {col}: {p}", file=sys.stderr)
        if len(missing) > 20:
            print(f"  ... and {len(missing) - 20} more", file=sys.stderr)
        if in_demo:
            print(
                f"  ({len(in_demo)} of them are in the demo cohort's folder "
                f"{cfg['demo']['out_dir']}, which the run generates first)",
                file=sys.stderr,
            )
        if args.strict:
            return 1
    return 0


EXPLAIN_COLUMNS = [
    ("#", "source_index"),
    ("source label", "source_label"),
    ("Hz", "fs_in"),
    ("unit", "unit_in"),
    ("text", "header_encoding"),
    ("-> canonical", "canonical"),
    ("modality", "modality"),
    ("role", "role"),
    ("rule", "rule"),
    ("reference", "reference"),
    ("used", "used"),
    ("why", "reason"),
]


# columns left out, in this order, when the table is wider than the terminal
EXPLAIN_OPTIONAL = ("text", "role", "unit", "rule")


def explain_summary(audit: list[dict]) -> list[str]:
    """Per modality, the canonical channels used (and how many source channels were not)."""
    from psgfm import MODALITIES

    used = [r for r in audit if r.get("used")]
    lines = []
    for m in MODALITIES:
        names = [str(r["canonical"]) for r in used if r.get("modality") == m]
        lines.append(f"  {m:<5} {len(names):>2}: {', '.join(names) if names else '-'}")
    lines.append(f"  not used: {len(audit) - len(used)} source channel(s) (why: last column)")
    return lines


def explain_table(audit: list[dict], width: int) -> list[str]:
    """The audit rows as a table at most ``width`` characters wide: optional columns are left
    out as needed, the last column ("why") is wrapped under itself, or put on its own
    indented line when too little room is left."""
    import textwrap

    rows = [
        [
            "" if r[key] is None else (f"{r[key]:g}" if key == "fs_in" else str(r[key]))
            for _, key in EXPLAIN_COLUMNS
        ]
        for r in audit
    ]
    titles = [t for t, _ in EXPLAIN_COLUMNS]
    keep = list(range(len(titles) - 1))

    def widths():
        return {i: max([len(titles[i]), *(len(row[i]) for row in rows)]) for i in keep}

    def left_width():
        return sum(w + 2 for w in widths().values())

    for name in EXPLAIN_OPTIONAL:
        if width - left_width() >= 30:
            break
        keep.remove(titles.index(name))
    w = widths()
    room = width - left_width()
    out = []
    for row in [titles, *rows]:
        left = "  ".join(row[i].ljust(w[i]) for i in keep) + "  "
        why = row[-1]
        if room >= 20:
            parts = textwrap.wrap(why, room) or [""]
            out.append(left + parts[0])
            out += [" " * len(left) + p for p in parts[1:]]
        else:
            out.append(left.rstrip())
            out += ["    " + p for p in textwrap.wrap(why, max(width - 4, 20))]
    return [line.rstrip() for line in out]


def _explain(args: argparse.Namespace) -> int:
    """``psgfm validate --explain EDF``: the mapping of one recording, printed, nothing written."""
    import shutil

    from psgfm.signals.harmonise import explain_recording

    if args.config or Path(DEFAULT_CONFIG).is_file() or not args.rules:
        try:
            cfg = dict(cli_config(args.config)[0]["harmonise"])
        except Exception as err:
            if not args.rules:
                raise
            print(f"psgfm: {err}; using --rules with default settings", file=sys.stderr)
            cfg = {}
    else:
        cfg = {}
    if args.rules:
        cfg["channel_rules"] = args.rules
    # fitted to the terminal (or $COLUMNS); piped to a file or another program: full width
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        width = shutil.get_terminal_size((120, 24)).columns
    else:
        width = 10**6
    status = 0
    for edf in args.explain:
        result = explain_recording(edf, cfg, site=args.site)
        head = f"{edf}: {result['kind'] or 'header not readable'}"
        if result["duration_s"] is not None:
            head += f", {result['duration_s']:g} s"
        print(f"{head}; rules {cfg.get('channel_rules', 'default')}; site {args.site or '-'}")
        if result["status"] == "ok":
            print("recording: ok; channels used per modality:")
        else:
            print(f"recording: rejected: {result['reason']}")
            status = 1
        for line in explain_summary(result["audit"]):
            print(line)
        print()
        for line in explain_table(result["audit"], width):
            print(line)
        print()
    return status


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


ONE_BLAS_THREAD_COMMANDS = ("harmonise", "export")


def one_blas_thread(argv: list[str]) -> None:
    """Start OpenBLAS with one thread for a command that never asks it for more: harmonisation
    holds BLAS to one thread while it runs (its parallelism is the channels'), and export
    uses no BLAS, but numpy's import starts OpenBLAS's whole thread pool first (~0.07 CPU-s
    of the import on 2 cores). Called before anything imports numpy (the parser does, through
    ``psgfm.signals.sheet``), and never over the user's own ``OPENBLAS_NUM_THREADS``."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ONE_BLAS_THREAD_COMMANDS and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def text_table(rows: list[dict], columns: list[str]) -> str:
    """Rows as a plain text table, columns right-aligned (as pandas prints a frame without
    its index), so that ``psgfm export`` prints without importing pandas."""
    cells = [[str(c) for c in columns]] + [
        ["" if r[c] is None else str(r[c]) for c in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        " ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells
    )


def _cmd_harmonise(args: argparse.Namespace) -> int:
    from psgfm.config import load_config, load_recordings
    from psgfm.signals.harmonise import harmonise_batch

    cfg = load_config(args.config)
    sheet = load_recordings(cfg["samples"])
    if args.recording:
        sheet = sheet[sheet["recording_id"].isin(args.recording)]
    # channels in parallel, as the harmonise rule passes its threads: by default every core
    # this process may use (recordings run one after another, so a batch smaller than the
    # core count would otherwise leave cores idle)
    hcfg = {**cfg["harmonise"], "threads": args.threads or available_cores()}
    qc = harmonise_batch(sheet.to_dict("records"), args.out, hcfg)
    print(qc[["recording_id", "status", "reason"]].to_string(index=False))
    if args.export:  # what `psgfm export --harmonised OUT --out EXPORT` does, in this process
        _print_manifest(_export(args.out, args.export, cfg))
    return 0


def _export(harmonised: str, out: str, cfg: dict):
    from psgfm.signals.export import export_manifest

    return export_manifest(harmonised, out, cfg["export"])


def _print_manifest(manifest) -> None:
    print(text_table(manifest.to_pylist(), ["recording_id", "n_chunks", "modalities"]))


class _NoPandas(importlib.abc.MetaPathFinder):
    """An import finder under which ``import pandas`` fails as if pandas were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"pandas is not imported by this command: {name}", name=name)
        return None


@contextlib.contextmanager
def pandas_blocked() -> Iterator[None]:
    """Within the block pandas cannot be imported (unless it already was). pyarrow imports
    pandas, when it is installed, the first time it converts any array (``pa.array``), only
    to ask whether the object is a pandas one: ~0.35 CPU-s that ``psgfm export``, which never
    uses pandas, would otherwise spend. pyarrow takes the failed import as "pandas absent"."""
    if "pandas" in sys.modules:
        yield
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _cmd_export(args: argparse.Namespace) -> int:
    from psgfm.config import load_config

    with pandas_blocked():  # the files are the same (tests/test_cli_imports.py)
        _print_manifest(_export(args.harmonised, args.out, load_config(args.config)))
    return 0


def _cmd_sheet(args: argparse.Namespace) -> int:
    from psgfm.io import write_text
    from psgfm.signals.sheet import UNPAIRED_KINDS, build_sheet, sheet_tsv

    result = build_sheet(
        args.dirs,
        id_regex=args.id_regex,
        subject_regex=args.subject_regex,
        site=args.site or "",
        dates=args.dates,
    )
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)
    for p in result.problems:
        level = "warning" if args.allow_unpaired and p.kind in UNPAIRED_KINDS else "error"
        print(f"{level}: {p.message}", file=sys.stderr)
    text = sheet_tsv(result.sheet)
    if args.out:
        write_text(text, args.out)
    else:
        sys.stdout.write(text)
    print(f"{len(result.sheet)} recordings", file=sys.stderr)
    return 1 if result.failed(args.allow_unpaired) else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from psgfm.demo.cohort import generate_demo_cohort

    sheet = generate_demo_cohort(
        args.out, n_subjects=args.n_subjects, hours=args.hours, seed=args.seed, layout=args.layout
    )
    print(f"wrote {len(sheet)} recordings to {args.out}")
    return 0


DEFAULT_CONFIG = "config/config.yaml"
# config values that are paths: relative to the workflow folder when its own config is used
CONFIG_PATHS = (("harmonise", "channel_rules"), ("model", "checkpoint"), ("model", "init"))


def _workflow_root() -> Path | None:
    """The checkout this psgfm was installed from (``pip install -e``), if it has a config."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / DEFAULT_CONFIG).is_file() and (root / "Snakefile").is_file() else None


def _apply_sets(raw: dict, sets: list[str]) -> dict:
    """``--set KEY.SUB=VALUE`` overrides (VALUE read as YAML: 20, true, [a, b], null)."""
    import yaml

    from psgfm.config import ConfigError

    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. export.dtype=float16")
        *parents, leaf = key.strip().split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a block of the config")
        node[leaf] = yaml.safe_load(value)
    return raw


def cli_config(arg: str | None, sets: list[str] | None = None) -> tuple[dict, Path]:
    """The validated config of a one-file command: ``--config``, else ./config/config.yaml,
    else the workflow's own config (its relative paths resolved against the workflow folder),
    with ``--set`` overrides; (config, path)."""
    import yaml

    from psgfm.config import ConfigError, validate_config

    root = None
    if arg:
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(
                f"config {arg} not found; pass --config PATH (a workflow config such as the "
                "repository's config/config.yaml)"
            )
    elif Path(DEFAULT_CONFIG).is_file():
        path = Path(DEFAULT_CONFIG)
    else:
        root = _workflow_root()
        if root is None:
            raise ConfigError(
                f"no {DEFAULT_CONFIG} in {Path.cwd()} and no workflow checkout next to the "
                "installed psgfm; pass --config PATH (the workflow's config/config.yaml)"
            )
        path = root / DEFAULT_CONFIG
        print(
            f"psgfm: using {path} (none in this folder; --config PATH picks another)",
            file=sys.stderr,
        )
    raw = _apply_sets(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, sets)
    cfg = validate_config(raw, source=str(path))
    if root is not None:
        for block, key in CONFIG_PATHS:
            value = cfg.get(block, {}).get(key)
            if value and not Path(value).is_absolute() and not Path(value).exists():
                cfg[block][key] = str(root / value)
    return cfg, path


class _OnlyOnce(logging.Filter):
    """Drops the harmonise/export warnings of a rejected recording: the command reports the
    rejection itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.WARNING and record.name.startswith("psgfm.signals"))


def _embed_report(out: Path, rid: str, cfg: dict, edf: str, site: str) -> list[str]:
    """What ``psgfm embed`` did: modalities and channels, chunks (partial or not)."""
    import pandas as pd

    lines = []
    qc = pd.read_parquet(out / "qc.parquet").iloc[0]
    mods = [m for m in cfg["export"]["modalities"] if f"has_{m}" in qc]
    found = [f"{m} ({int(qc[f'n_{m}'])})" for m in mods if bool(qc[f"has_{m}"])]
    missing = [m for m in mods if not bool(qc[f"has_{m}"])]
    lines.append(
        f"  modalities: {', '.join(found) or 'none'} channels"
        + (f"; missing: {', '.join(missing)} (masked)" if missing else "")
    )
    explain = f"psgfm validate --explain {edf}" + (f" --site {site}" if site else "")
    lines.append(
        f"  channels: {int(qc['n_channels'])} used, {int(qc['n_dropped'])} dropped "
        f"(`{explain}` lists each and why)"
    )
    chunks_path = out / f"{rid}.chunks.parquet"
    if chunks_path.exists():
        chunks = pd.read_parquet(chunks_path, columns=["chunk_index", "n_real_patches"])
        ex = cfg["export"]
        per_chunk = int(ex["chunk_seconds"] // ex["patch_seconds"])
        partial = chunks[chunks["n_real_patches"] < per_chunk]
        text = (
            f"  recording: {float(qc['duration_s']):g} s in {len(chunks)} chunk(s) of "
            f"{ex['chunk_seconds']} s"
        )
        if len(partial):
            real = int(partial["n_real_patches"].iloc[-1]) * ex["patch_seconds"]
            text += f"; the last is a partial chunk ({real:g} s of signal, zero padded)"
        else:
            text += ", none partial"
        lines.append(text)
    return lines


def _cmd_embed(args: argparse.Namespace) -> int:
    from psgfm.model.embed import embed_edf

    cfg, _ = cli_config(args.config, args.set)
    ckpt = args.checkpoint or cfg["model"]["checkpoint"]
    if not ckpt and not args.random_init:
        print(
            "error: no weights: pass --checkpoint PATH (e.g. results/model/encoder.pt) or set "
            "model.checkpoint; --random-init embeds with an untrained encoder",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    qc_path = out / "qc.parquet"
    had_qc, had_out = qc_path.exists(), out.exists()
    quiet = _OnlyOnce()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
    try:
        night = embed_edf(
            args.edf,
            None if args.random_init else ckpt,
            out,
            cfg,
            hypnogram=args.hypnogram,
            site=args.site or "",
        )
    except ValueError as err:
        # nothing of a refused recording is left behind
        if not had_qc:
            qc_path.unlink(missing_ok=True)
        if not had_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        message = str(err)
        if "min_last_chunk_seconds" in message:
            message += (
                "; for this file: psgfm embed ... --set export.min_last_chunk_seconds=SECONDS"
            )
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(quiet)
    rid = night["recording_id"].iloc[0]
    print(f"wrote embeddings of {rid} to {out}")
    for line in _embed_report(out, rid, cfg, args.edf, args.site or ""):
        print(line)
    return 0


def _flatten(value, prefix=""):
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def config_changes(before: dict, after: dict) -> list[tuple[str, object, object]]:
    """(dotted key, before, after) of every value that differs (missing: None)."""
    a, b = _flatten(before), _flatten(after)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _cmd_config_diff(args: argparse.Namespace) -> int:
    import yaml

    from psgfm.config import validate_config

    raw: dict = {}
    files = [DEFAULT_CONFIG, *(args.configfile or [])]
    for path in files:
        layer = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        raw = _merge(raw, layer)
    now = validate_config(raw, source=", ".join(files))
    recorded = Path(args.results or now["results"]) / "pipeline_info" / "config.yaml"
    if not recorded.is_file():
        print(f"error: {recorded} not found: no finished run to compare with", file=sys.stderr)
        return 2
    before = yaml.safe_load(recorded.read_text(encoding="utf-8")) or {}
    changes = config_changes(before, now)
    for key, old, new in changes:
        print(f"{key}: {old!r} -> {new!r}")
    print(f"{len(changes)} changed value(s) since the run recorded in {recorded}", file=sys.stderr)
    return 0


def _merge(base: dict, over: dict) -> dict:
    """Snakemake's --configfile layering: nested blocks merged, other values replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cmd_unlock_stale(args: argparse.Namespace) -> int:
    from psgfm.runlock import unlock_stale

    action, message = unlock_stale(args.dir)
    if action != "none":
        print(f"psgfm unlock-stale: {message}", file=sys.stderr)
    return 1 if action == "running" else 0


def _cmd_demo_check(args: argparse.Namespace) -> int:
    from psgfm.demo.check import check_demo

    ok, lines = check_demo(args.results)
    for line in lines:
        print(f"psgfm demo-check: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _cmd_stage(args: argparse.Namespace) -> int:
    from psgfm.config import load_config
    from psgfm.heads.train import stage_edf

    cfg = load_config(args.config)
    ckpt = args.checkpoint or cfg["model"]["checkpoint"]
    if not ckpt and not args.random_init:
        print(
            "error: no encoder weights: pass --checkpoint PATH (e.g. results/model/encoder.pt) "
            "or set model.checkpoint",
            file=sys.stderr,
        )
        return 2
    df = stage_edf(
        args.edf,
        None if args.random_init else ckpt,
        args.head,
        args.out,
        cfg,
        hypnogram=args.hypnogram,
    )
    print(f"wrote a hypnogram of {len(df)} epochs to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psgfm", description=__doc__)
    p.add_argument("--version", action="version", version=f"psgfm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser(
        "validate",
        help="check the config, sample sheet and channel rules; --explain EDF: show the mapping",
    )
    v.add_argument(
        "--config",
        help="workflow config (default: config/config.yaml here, else the workflow's own)",
    )
    v.add_argument(
        "--explain",
        nargs="+",
        metavar="EDF",
        help="print what each source channel of these recordings maps to and why (reads the "
        "samples for the channel checks; writes nothing); exit status 1 if one is rejected",
    )
    v.add_argument("--site", help="with --explain: the sample-sheet site (its site rules apply)")
    v.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a file the sample sheet names does not exist "
        "(without it: a warning listing them, status 0)",
    )
    v.add_argument("--rules", help="with --explain: a channel rules file instead of the config's")
    v.set_defaults(func=_cmd_validate)

    h = sub.add_parser("harmonise", help="harmonise recordings of the sample sheet into a folder")
    h.add_argument("--config", default="config/config.yaml")
    h.add_argument("--out", required=True)
    h.add_argument("--recording", nargs="*", help="only these recording ids")
    h.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads converting a recording's channels in parallel (default: the cores "
        "available to this process)",
    )
    h.add_argument(
        "--export",
        metavar="DIR",
        help="then export the harmonised recordings to chunked Arrow tensors in DIR, in the "
        "same process: the files `psgfm export --harmonised OUT --out DIR` writes, without a "
        "second interpreter start",
    )
    h.set_defaults(func=_cmd_harmonise)

    e = sub.add_parser("export", help="export a harmonised folder to chunked Arrow tensors")
    e.add_argument("--config", default="config/config.yaml")
    e.add_argument("--harmonised", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_cmd_export)

    em = sub.add_parser("embed", help="harmonise, export and embed one EDF outside the DAG")
    em.add_argument("edf")
    em.add_argument("--checkpoint", help="encoder weights (psgfm or SleepFM-Clinical release)")
    em.add_argument("--random-init", action="store_true", help="untrained encoder (model.seed)")
    em.add_argument("--hypnogram", help="optional hypnogram (CSV or EDF+)")
    em.add_argument(
        "--config",
        help="workflow config (default: config/config.yaml here, else the workflow's own)",
    )
    em.add_argument(
        "--site", help="the recording's sample-sheet site: its channel rules apply (e.g. nox)"
    )
    em.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set export.min_last_chunk_seconds=20 (repeatable)",
    )
    em.add_argument("--out", required=True)
    em.set_defaults(func=_cmd_embed)

    st = sub.add_parser(
        "stage", help="predict the hypnogram of one EDF with the encoder and the staging head"
    )
    st.add_argument("edf")
    st.add_argument("--checkpoint", help="encoder weights (psgfm or SleepFM-Clinical release)")
    st.add_argument("--random-init", action="store_true", help="untrained encoder (model.seed)")
    st.add_argument("--head", required=True, help="staging head (results/heads/staging/...)")
    st.add_argument("--hypnogram", help="optional scored hypnogram, kept beside the prediction")
    st.add_argument("--config", default="config/config.yaml")
    st.add_argument("--out", required=True)
    st.set_defaults(func=_cmd_stage)

    from psgfm.signals.sheet import DEFAULT_ID_REGEX

    s = sub.add_parser(
        "sheet",
        help="write a sample sheet (TSV) of the EDFs and annotation files under folders",
        description="Pair each EDF/BDF under the folders with its hypnogram (<id>-nsrr.xml, "
        "<id>-Hypnogram.edf, <id>.csv) and events (<id>.events.csv) by recording id; see "
        "docs/cohorts.md. Exit status 1 when files are unpaired (unless --allow-unpaired), "
        "when two files claim one id, or when a date is missing.",
    )
    s.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched recursively")
    s.add_argument(
        "--id-regex",
        default=DEFAULT_ID_REGEX,
        help="applied to each file name without its last suffix; group `id` (or group 1) is "
        "the recording id. Sleep-EDF: '^(?P<id>S[CT]\\d{4})' pairs SC4001E0-PSG.edf with "
        "SC4001EC-Hypnogram.edf (default: %(default)s)",
    )
    s.add_argument(
        "--subject-regex",
        help="applied to the recording id; group `subject` (or group 1) is the subject_id, "
        "e.g. 'shhs\\d-(?P<subject>\\d+)' (default: subject_id = recording_id)",
    )
    s.add_argument("--site", help="value of the site column (selects site channel rules)")
    s.add_argument(
        "--dates",
        help="CSV/TSV with psg_date and recording_id (or subject_id); default: EDF header dates",
    )
    s.add_argument(
        "--allow-unpaired",
        action="store_true",
        help="report EDFs without annotation and annotations without EDF as warnings",
    )
    s.add_argument("-o", "--out", help="write the sheet here (default: standard output)")
    s.set_defaults(func=_cmd_sheet)

    u = sub.add_parser(
        "unlock-stale",
        help="remove a Snakemake lock left by an interrupted run, when no Snakemake process "
        "runs in the folder (what `make demo` does first)",
    )
    u.add_argument("dir", nargs="?", default=".", help="the workflow folder (default: .)")
    u.set_defaults(func=_cmd_unlock_stale)

    dc = sub.add_parser(
        "demo-check",
        help="check the demo's stated margins on a finished run (the last step of make demo)",
    )
    dc.add_argument(
        "results", nargs="?", default="results", help="results folder (default: results)"
    )
    dc.set_defaults(func=_cmd_demo_check)

    c = sub.add_parser(
        "config-diff",
        help="the config keys changed since the last run (what a dry run's params reasons mean)",
    )
    c.add_argument(
        "--configfile",
        nargs="+",
        help="overlays layered over config/config.yaml, as snakemake --configfile",
    )
    c.add_argument("--results", help="results folder of the run (default: the config's)")
    c.set_defaults(func=_cmd_config_diff)

    d = sub.add_parser("demo", help="generate the seeded demo cohort")
    d.add_argument("--out", default="resources/demo")
    d.add_argument("--n-subjects", type=int, default=96)
    d.add_argument("--hours", type=float, default=0.25)
    d.add_argument("--seed", type=int, default=20261124)
    d.add_argument(
        "--layout",
        choices=("sites", "nsrr"),
        default="sites",
        help="sites: the multi-site demo (default); nsrr: an SHHS-like cohort in an NSRR "
        "folder tree with XML annotations (docs/demo.md)",
    )
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from psgfm.config import ConfigError
    from psgfm.signals.montage import RulesError

    # CheckpointError (psgfm.model.checkpoint) is a ValueError: importing it here would import
    # torch for every command (1.4-2.5 s), also for harmonise and export, which never use it.

    argv = sys.argv[1:] if argv is None else argv
    one_blas_thread(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RulesError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
