"""Command-line interface: ``psgfm <command>``; mirrors the functions the rules call."""

from __future__ import annotations

import argparse
import logging
import sys

from psgfm import __version__


def _cmd_validate(args: argparse.Namespace) -> int:
    from psgfm.config import load_config, load_recordings
    from psgfm.signals.montage import load_rules

    if args.explain:
        return _explain(args)
    cfg = load_config(args.config)
    sheet = load_recordings(cfg["samples"])
    rules = load_rules(cfg["harmonise"]["channel_rules"])
    print(
        f"{args.config}: valid; {len(sheet)} recordings in {cfg['samples']}; "
        f"{len(rules.rules)} channel rules (+{len(rules.vocabulary)} vocabulary labels)"
    )
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


def _explain(args: argparse.Namespace) -> int:
    """``psgfm validate --explain EDF``: the mapping of one recording, printed, nothing written."""
    from pathlib import Path

    from psgfm.config import load_config
    from psgfm.signals.harmonise import explain_recording

    if Path(args.config).exists():
        cfg = dict(load_config(args.config)["harmonise"])
    elif args.rules:
        cfg = {}
    else:
        print(f"error: config {args.config} not found; pass --config or --rules", file=sys.stderr)
        return 2
    if args.rules:
        cfg["channel_rules"] = args.rules
    status = 0
    for edf in args.explain:
        result = explain_recording(edf, cfg, site=args.site)
        head = f"{edf}: {result['kind'] or 'header not readable'}"
        if result["duration_s"] is not None:
            head += f", {result['duration_s']:g} s"
        print(f"{head}; rules {cfg.get('channel_rules', 'default')}; site {args.site or '-'}")
        rows = [
            [
                "" if r[key] is None else (f"{r[key]:g}" if key == "fs_in" else str(r[key]))
                for _, key in EXPLAIN_COLUMNS
            ]
            for r in result["audit"]
        ]
        widths = [
            max([len(title), *(len(row[i]) for row in rows)])
            for i, (title, _) in enumerate(EXPLAIN_COLUMNS[:-1])
        ]
        for row in [[t for t, _ in EXPLAIN_COLUMNS], *rows]:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[-1]]))
        if result["status"] == "ok":
            print("recording: ok")
        else:
            print(f"recording: rejected: {result['reason']}")
            status = 1
        print()
    return status


def _cmd_harmonise(args: argparse.Namespace) -> int:
    from psgfm.config import load_config, load_recordings
    from psgfm.signals.harmonise import harmonise_batch

    cfg = load_config(args.config)
    sheet = load_recordings(cfg["samples"])
    if args.recording:
        sheet = sheet[sheet["recording_id"].isin(args.recording)]
    qc = harmonise_batch(sheet.to_dict("records"), args.out, cfg["harmonise"])
    print(qc[["recording_id", "status", "reason"]].to_string(index=False))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from psgfm.config import load_config
    from psgfm.signals.export import export_batch

    cfg = load_config(args.config)
    manifest = export_batch(args.harmonised, args.out, cfg["export"])
    print(manifest[["recording_id", "n_chunks", "modalities"]].to_string(index=False))
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


def _cmd_embed(args: argparse.Namespace) -> int:
    from psgfm.config import load_config
    from psgfm.model.embed import embed_edf

    cfg = load_config(args.config)
    ckpt = args.checkpoint or cfg["model"]["checkpoint"]
    if not ckpt and not args.random_init:
        print(
            "error: no weights: pass --checkpoint PATH (e.g. results/model/encoder.pt) or set "
            "model.checkpoint; --random-init embeds with an untrained encoder",
            file=sys.stderr,
        )
        return 2
    night = embed_edf(
        args.edf, None if args.random_init else ckpt, args.out, cfg, hypnogram=args.hypnogram
    )
    print(f"wrote embeddings of {night['recording_id'].iloc[0]} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psgfm", description=__doc__)
    p.add_argument("--version", action="version", version=f"psgfm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser(
        "validate",
        help="check the config, sample sheet and channel rules; --explain EDF: show the mapping",
    )
    v.add_argument("--config", default="config/config.yaml")
    v.add_argument(
        "--explain",
        nargs="+",
        metavar="EDF",
        help="print what each source channel of these recordings maps to and why (reads the "
        "samples for the channel checks; writes nothing); exit status 1 if one is rejected",
    )
    v.add_argument("--site", help="with --explain: the sample-sheet site (its site rules apply)")
    v.add_argument("--rules", help="with --explain: a channel rules file instead of the config's")
    v.set_defaults(func=_cmd_validate)

    h = sub.add_parser("harmonise", help="harmonise recordings of the sample sheet into a folder")
    h.add_argument("--config", default="config/config.yaml")
    h.add_argument("--out", required=True)
    h.add_argument("--recording", nargs="*", help="only these recording ids")
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
    em.add_argument("--config", default="config/config.yaml")
    em.add_argument("--out", required=True)
    em.set_defaults(func=_cmd_embed)

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

    d = sub.add_parser("demo", help="generate the seeded demo cohort")
    d.add_argument("--out", default="resources/demo")
    d.add_argument("--n-subjects", type=int, default=24)
    d.add_argument("--hours", type=float, default=1.0)
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

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RulesError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
