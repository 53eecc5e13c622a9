"""Declarative channel mapping: source EDF labels -> canonical channels and modalities.

The rules file (resources/channel_rules.yaml) is ordered; the first matching rule wins.
See its header for the format. This module only decides *what* to do with each label; the
signal work happens in :mod:`psgfm.signals.harmonise`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from psgfm import MODALITIES

UNIT_SCALE_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
"""Factor that turns a value in the EDF physical dimension into microvolts."""


class RulesError(ValueError):
    """The channel-rules file is malformed; the message names the file, entry and fix."""


def normalise_label(label: str) -> str:
    """Case-, space- and punctuation-insensitive key of a channel label."""
    text = unicodedata.normalize("NFKC", label).lower()
    return re.sub(r"[^0-9a-zµμ]+", "", text)


def unit_scale_to_uv(unit: str) -> float | None:
    """µV per unit of an EDF physical dimension, or None when it is not a voltage."""
    key = unicodedata.normalize("NFKC", unit).strip().lower().replace("μ", "µ")
    return UNIT_SCALE_TO_UV.get(key)


@dataclass(frozen=True)
class Rule:
    canonical: str
    modality: str
    labels: frozenset[str]
    reference: tuple[str, ...] = ()
    unit: str | None = "uV"
    min_fs: float = 0.0
    origin: str = "rules"  # "site:<name>", "rules" or "vocabulary"


@dataclass
class RuleSet:
    path: str
    rules: list[Rule]
    site_rules: dict[str, list[Rule]]
    references: dict[str, frozenset[str]]
    vocabulary: list[Rule] = field(default_factory=list)

    def ordered(self, site: str | None) -> list[Rule]:
        return self.site_rules.get(site or "", []) + self.rules + self.vocabulary


@dataclass
class Assignment:
    """What the rules decided for one source channel."""

    index: int
    label: str
    canonical: str | None = None
    modality: str | None = None
    rule: Rule | None = None
    reference_indices: tuple[int, ...] = ()
    role: str = "dropped"  # "signal", "reference", "dropped"
    reason: str = ""


def _rule_from_entry(entry: dict, defaults: dict, origin: str, path: str, where: str) -> Rule:
    allowed = {"canonical", "modality", "labels", "reference", "unit", "min_fs"}
    unknown = set(entry) - allowed
    if unknown:
        raise RulesError(
            f"{path}: {where}: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}"
        )
    for key in ("canonical", "modality", "labels"):
        if key not in entry:
            raise RulesError(f"{path}: {where}: missing `{key}`")
    modality = entry["modality"]
    if modality not in MODALITIES:
        raise RulesError(f"{path}: {where}: modality {modality!r} is not one of {MODALITIES}")
    labels = entry["labels"]
    if isinstance(labels, str) or not labels:
        raise RulesError(f"{path}: {where}: `labels` must be a non-empty list")
    mdef = defaults.get(modality, {})
    ref = entry.get("reference")
    refs = tuple(r.strip() for r in str(ref).split(",") if r.strip()) if ref else ()
    unit = entry.get("unit", mdef.get("unit", "uV"))
    if unit is not None and unit_scale_to_uv(unit) is None:
        raise RulesError(f"{path}: {where}: unit {unit!r} is not a voltage unit (use uV or null)")
    return Rule(
        canonical=str(entry["canonical"]),
        modality=modality,
        labels=frozenset(normalise_label(str(x)) for x in labels),
        reference=refs,
        unit=unit,
        min_fs=float(entry.get("min_fs", mdef.get("min_fs", 0.0))),
        origin=origin,
    )


def load_rules(path: str | Path) -> RuleSet:
    """Load and check a rules file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulesError(
            f"channel rules file {path} not found; set harmonise.channel_rules"
        ) from None
    except yaml.YAMLError as err:
        raise RulesError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or "rules" not in doc:
        raise RulesError(f"{path}: expected a mapping with a `rules:` list")
    defaults = doc.get("modality_defaults", {}) or {}
    references = {
        name: frozenset(normalise_label(x) for x in labels)
        for name, labels in (doc.get("references") or {}).items()
    }
    rules = [
        _rule_from_entry(e, defaults, "rules", str(path), f"rules[{i}]")
        for i, e in enumerate(doc["rules"])
    ]
    site_rules = {
        site: [
            _rule_from_entry(e, defaults, f"site:{site}", str(path), f"sites.{site}[{i}]")
            for i, e in enumerate(entries)
        ]
        for site, entries in (doc.get("sites") or {}).items()
    }
    for rule in [*rules, *(r for rs in site_rules.values() for r in rs)]:
        for ref in rule.reference:
            if ref not in references:
                raise RulesError(
                    f"{path}: rule for {rule.canonical} names reference {ref!r}, which is not "
                    f"under `references:` (known: {sorted(references)})"
                )
    vocabulary = []
    if doc.get("vocabulary"):
        vpath = path.parent / doc["vocabulary"]
        groups = json.loads(vpath.read_text(encoding="utf-8"))
        seen: set[str] = set()
        for modality, labels in groups.items():
            mdef = defaults.get(modality, {})
            for label in labels:
                key = normalise_label(label)
                if key in seen or not key:
                    continue
                seen.add(key)
                vocabulary.append(
                    Rule(
                        canonical=label.strip(),
                        modality=modality,
                        labels=frozenset({key}),
                        unit=mdef.get("unit", "uV"),
                        min_fs=float(mdef.get("min_fs", 0.0)),
                        origin="vocabulary",
                    )
                )
    return RuleSet(str(path), rules, site_rules, references, vocabulary)


def assign_channels(
    labels: list[str], ruleset: RuleSet, site: str | None = None
) -> list[Assignment]:
    """Decide the fate of every source channel of one recording.

    ``labels`` are the raw header labels in file order (annotation channels excluded).
    Duplicate labels are all dropped: which copy is meant cannot be known.
    """
    keys = [normalise_label(x) for x in labels]
    out = [Assignment(index=i, label=lab) for i, lab in enumerate(labels)]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    available = {i for i, k in enumerate(keys) if counts[k] == 1 and k}
    for i, k in enumerate(keys):
        if not k:
            out[i].reason = "empty label"
        elif counts[k] > 1:
            out[i].reason = (
                f"duplicate label: {counts[k]} channels are called {labels[i]!r}; which one is "
                "meant cannot be known. Rename them in the EDF or drop the extra copy."
            )

    def find_reference(name: str) -> int | None:
        for j in sorted(available):
            if keys[j] in ruleset.references[name] and out[j].role != "signal":
                return j
        return None

    produced: dict[str, int] = {}
    for rule in ruleset.ordered(site):
        for i in sorted(available):
            if out[i].role != "dropped" or out[i].reason or keys[i] not in rule.labels:
                continue
            ref_idx = [find_reference(r) for r in rule.reference]
            if any(j is None or j == i for j in ref_idx):
                continue  # reference absent: this rule does not apply, a later one may
            if rule.canonical in produced:
                out[i].reason = (
                    f"{rule.canonical} already produced from {labels[produced[rule.canonical]]!r} "
                    "by an earlier rule; only the first is kept"
                )
                continue
            produced[rule.canonical] = i
            out[i].canonical = rule.canonical
            out[i].modality = rule.modality
            out[i].rule = rule
            out[i].role = "signal"
            out[i].reference_indices = tuple(ref_idx)
            for j in ref_idx:
                if out[j].role != "reference":
                    out[j].role = "reference"
                    out[j].reason = f"used as reference for {rule.canonical}"
                else:
                    out[j].reason += f", {rule.canonical}"
    for a in out:
        if a.role == "dropped" and not a.reason:
            a.reason = "no rule matches this label; add it to the channel rules file"
    return out
