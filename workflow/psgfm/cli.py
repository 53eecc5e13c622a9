"""Command-line interface: ``psgfm <command>``; mirrors the functions the rules call."""

from __future__ import annotations

import argparse
import logging
import sys

from psgfm import __version__


def _cmd_validate(args: argparse.Namespace) -> int:
    from psgfm.config import load_config, load_recordings
    from psgfm.signals.montage import load_rules

    cfg = load_config(args.config)
    sheet = load_recordings(cfg["samples"])
    rules = load_rules(cfg["harmonise"]["channel_rules"])
    print(
        f"{args.config}: valid; {len(sheet)} recordings in {cfg['samples']}; "
        f"{len(rules.rules)} channel rules (+{len(rules.vocabulary)} vocabulary labels)"
    )
    return 0


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from psgfm.demo.cohort import generate_demo_cohort

    sheet = generate_demo_cohort(
        args.out, n_subjects=args.n_subjects, hours=args.hours, seed=args.seed
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

    v = sub.add_parser("validate", help="check the config, sample sheet and channel rules")
    v.add_argument("--config", default="config/config.yaml")
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

    d = sub.add_parser("demo", help="generate the seeded demo cohort")
    d.add_argument("--out", default="resources/demo")
    d.add_argument("--n-subjects", type=int, default=24)
    d.add_argument("--hours", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=20261124)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from psgfm.config import ConfigError
    from psgfm.model.checkpoint import CheckpointError
    from psgfm.signals.montage import RulesError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RulesError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
