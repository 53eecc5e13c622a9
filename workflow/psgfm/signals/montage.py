"""Declarative channel mapping: source EDF labels -> canonical channels and modalities.

The rules file (resources/channel_rules.yaml) is ordered; the first matching rule wins.
See its header for the format. This module only decides *what* to do with each label; the
signal work happens in :mod:`psgfm.signals.harmonise`.

How one label is matched (docs/channels.md lists the families):

* labels are compared case-, space-, punctuation- and accent-insensitively;
* a vendor type prefix (``label_forms.prefixes``: ``EEG C3-A2``) may stand before any label;
* a referential suffix (``label_forms.referential_suffixes``: ``C3-Ref``) marks one electrode
  against the amplifier's common reference. Such a label matches the single-electrode labels
  of rules that re-reference (``C3`` with ``reference: M2``), the reference families and the
  vocabulary, never a rule for an already referenced derivation: ``EEG LOC-Ref`` is not ``LOC``.
  Subtracting two channels recorded against the same common reference cancels it, so
  ``EEG C3-Ref`` - ``EEG A2-Ref`` is the derivation C3-A2 (= C3-M2);
* reference electrodes, ground and linked-mastoid channels (``references:``) are only ever
  references, never signals, whatever a later list says;
* channels that are not model inputs (position, light, ...; ``not_model:``) are named so.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from psgfm import MODALITIES

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (the same documents, ~10x faster)."""

UNIT_SCALE_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
"""Factor that turns a value in the EDF physical dimension into microvolts."""

EDF_LABEL_WIDTH = 16
NO_MATCH = "no rule matches this label; add it to the channel rules file"


class RulesError(ValueError):
    """The channel-rules file is malformed; the message names the file, entry and fix."""


def _fold(text: str) -> str:
    """NFKC, lower case, accents removed (``Impédance`` -> ``impedance``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize(
        "NFKC", "".join(c for c in decomposed if not unicodedata.combining(c))
    ).lower()


def normalise_label(label: str) -> str:
    """Case-, space-, punctuation- and accent-insensitive key of a channel label."""
    return re.sub(r"[^0-9a-zµμ]+", "", _fold(label))


def normalise_unit(unit: str) -> str:
    """Case- and space-insensitive key of a physical dimension (symbols such as ° kept)."""
    return re.sub(r"\s+", "", _fold(unit))


def unit_scale_to_uv(unit: str) -> float | None:
    """µV per unit of an EDF physical dimension, or None when it is not a voltage."""
    key = unicodedata.normalize("NFKC", unit).strip().lower().replace("μ", "µ")
    return UNIT_SCALE_TO_UV.get(key)


@dataclass(frozen=True)
class LabelSet:
    """Normalised labels, and prefixes from labels written with a trailing ``*``."""

    exact: frozenset[str]
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, labels) -> LabelSet:
        exact, prefixes = set(), []
        for raw in labels:
            text = str(raw).strip()
            if text.endswith("*"):
                key = normalise_label(text[:-1])
                if key:
                    prefixes.append(key)
            elif normalise_label(text):
                exact.add(normalise_label(text))
        return cls(frozenset(exact), tuple(prefixes))

    def match(self, keys) -> bool:
        if not self.exact.isdisjoint(keys):
            return True
        return bool(self.prefixes) and any(k.startswith(self.prefixes) for k in keys if k)


@dataclass(frozen=True)
class LabelKeys:
    """The forms under which one source label is matched."""

    exact: str  # normalised label
    bare: str  # without a vendor type prefix ("EEG C3-A2" -> "c3a2"); == exact when none
    electrode: str  # without prefix and referential suffix ("EEG C3-Ref" -> "c3"), else ""

    def __post_init__(self):
        # sets, so matching against thousands of rules is one set operation each
        object.__setattr__(self, "as_is", frozenset(k for k in (self.exact, self.bare) if k))
        object.__setattr__(self, "all", self.as_is | ({self.electrode} - {""}))

    # as_is: keys for rules whose labels are used as recorded (derivations);
    # all: keys for single electrodes: rules that re-reference, references, vocabulary
    as_is: frozenset[str] = field(init=False, repr=False, compare=False)
    all: frozenset[str] = field(init=False, repr=False, compare=False)


@dataclass(frozen=True)
class LabelForms:
    """Vendor decorations of labels (``label_forms:`` of the rules file)."""

    prefixes: tuple[str, ...] = ()
    referential_suffixes: tuple[str, ...] = ()

    def keys(self, label: str) -> LabelKeys:
        exact = normalise_label(label)
        bare = exact
        text = _fold(label).strip()
        for prefix in self.prefixes:
            # a prefix counts only as its own word: "EEG2" is not "EEG" + "2"
            m = re.match(rf"{re.escape(prefix)}[\s_:/.-]+(.+)$", text)
            if m and normalise_label(m.group(1)):
                bare = normalise_label(m.group(1))
                break
        electrode = ""
        for suffix in self.referential_suffixes:
            if bare.endswith(suffix) and len(bare) > len(suffix):
                electrode = bare[: -len(suffix)]
                break
        return LabelKeys(exact, bare, electrode)


@dataclass(frozen=True)
class Rule:
    canonical: str
    modality: str
    labels: frozenset[str]
    reference: tuple[str, ...] = ()
    unit: str | None = "uV"
    min_fs: float = 0.0
    origin: str = "rules"  # "site:<name>", "rules" or "vocabulary"
    # the physiological ceiling of the quantity (SpO2: 100 %): samples on a physical-max rail
    # at this value are physiology, not amplifier clipping
    ceiling: float | None = None
    prefixes: tuple[str, ...] = ()  # labels written with a trailing "*"

    def match(self, keys: LabelKeys) -> bool:
        # rules that re-reference take single electrodes, so "-Ref" forms too; the others
        # take labels as recorded; the vocabulary (own names) takes both
        forms = keys.all if self.reference or self.origin == "vocabulary" else keys.as_is
        if not self.labels.isdisjoint(forms):
            return True
        return bool(self.prefixes) and any(k.startswith(self.prefixes) for k in forms)


@dataclass(frozen=True)
class NonModel:
    """A family of channels that are not model inputs (``not_model:``)."""

    name: str
    labels: LabelSet
    units: frozenset[str] = frozenset()

    def match(self, keys: LabelKeys, unit: str | None) -> bool:
        if unit is not None and normalise_unit(unit) in self.units:
            return True
        return self.labels.match(keys.as_is)


@dataclass
class RuleSet:
    path: str
    rules: list[Rule]
    site_rules: dict[str, list[Rule]]
    references: dict[str, frozenset[str]]
    vocabulary: list[Rule] = field(default_factory=list)
    forms: LabelForms = field(default_factory=LabelForms)
    not_model: list[NonModel] = field(default_factory=list)

    _indexes: dict = field(default_factory=dict, repr=False, compare=False)

    def ordered(self, site: str | None) -> list[Rule]:
        return self.site_rules.get(site or "", []) + self.rules + self.vocabulary

    def matching(self, keys: LabelKeys, site: str | None) -> list[int]:
        """Positions in ``ordered(site)`` of the rules that match a label, in rule order."""
        if site not in self._indexes:
            ordered = self.ordered(site)
            exact: dict[str, list[int]] = {}
            for p, rule in enumerate(ordered):
                for k in rule.labels:
                    exact.setdefault(k, []).append(p)
            prefixed = [p for p, rule in enumerate(ordered) if rule.prefixes]
            self._indexes[site] = (ordered, exact, prefixed)
        ordered, exact, prefixed = self._indexes[site]
        candidates = {p for k in keys.all for p in exact.get(k, ())} | set(prefixed)
        return sorted(p for p in candidates if ordered[p].match(keys))

    def reference_family(self, keys: LabelKeys) -> str | None:
        """The `references:` family this label belongs to, if any."""
        for name, labels in self.references.items():
            if not labels.isdisjoint(keys.all):
                return name
        return None


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
    origin: str | None = None  # which part of the rules decided: site:<name>, rules,
    # vocabulary, references, not_model (None: nothing matched)
    used_by: list[str] = field(default_factory=list)  # canonical channels it references
    family: str | None = None  # its `references:` family, when it is a reference channel

    def reference_reason(self) -> str:
        return f"the reference ({self.family}) for {', '.join(self.used_by)}"


def _ceiling(entry: dict, path: str, where: str) -> float | None:
    value = entry.get("ceiling")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{path}: {where}: `ceiling` must be a number (SpO2: 100), got {value!r}")
    return float(value)


def _rule_from_entry(entry: dict, defaults: dict, origin: str, path: str, where: str) -> Rule:
    allowed = {"canonical", "modality", "labels", "reference", "unit", "min_fs", "ceiling"}
    if not isinstance(entry, dict):
        raise RulesError(f"{path}: {where}: expected a mapping with canonical, modality, labels")
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
    too_long = [x for x in labels if len(str(x).rstrip("*")) > EDF_LABEL_WIDTH]
    if too_long:
        raise RulesError(
            f"{path}: {where}: label(s) {too_long} longer than {EDF_LABEL_WIDTH} characters, "
            "which no EDF label can be (the header field is 16 bytes); write the label as it "
            "appears in the file"
        )
    mdef = defaults.get(modality, {})
    ref = entry.get("reference")
    refs = tuple(r.strip() for r in str(ref).split(",") if r.strip()) if ref else ()
    unit = entry.get("unit", mdef.get("unit", "uV"))
    if unit is not None and unit_scale_to_uv(unit) is None:
        raise RulesError(f"{path}: {where}: unit {unit!r} is not a voltage unit (use uV or null)")
    parsed = LabelSet.parse(labels)
    return Rule(
        canonical=str(entry["canonical"]),
        modality=modality,
        labels=parsed.exact,
        reference=refs,
        unit=unit,
        min_fs=float(entry.get("min_fs", mdef.get("min_fs", 0.0))),
        origin=origin,
        prefixes=parsed.prefixes,
        ceiling=_ceiling(entry, path, where),
    )


def _label_forms(doc: dict, path: str) -> LabelForms:
    forms = doc.get("label_forms") or {}
    unknown = set(forms) - {"prefixes", "referential_suffixes"}
    if unknown:
        raise RulesError(
            f"{path}: label_forms: unknown key(s) {sorted(unknown)}; allowed prefixes, "
            "referential_suffixes"
        )
    prefixes = tuple(_fold(str(p)).strip() for p in forms.get("prefixes") or [])
    suffixes = tuple(normalise_label(str(s)) for s in forms.get("referential_suffixes") or [])
    if not all(prefixes) or not all(suffixes):
        raise RulesError(f"{path}: label_forms: empty prefix or suffix")
    return LabelForms(prefixes, suffixes)


def _not_model(doc: dict, path: str) -> list[NonModel]:
    out = []
    for i, entry in enumerate(doc.get("not_model") or []):
        where = f"not_model[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise RulesError(f"{path}: {where}: expected a mapping with `name` and `labels`")
        unknown = set(entry) - {"name", "labels", "units"}
        if unknown:
            raise RulesError(
                f"{path}: {where}: unknown key(s) {sorted(unknown)}; allowed name, labels, units"
            )
        if isinstance(entry.get("labels"), str) or isinstance(entry.get("units"), str):
            raise RulesError(f"{path}: {where}: `labels` and `units` must be lists")
        out.append(
            NonModel(
                name=str(entry["name"]),
                labels=LabelSet.parse(entry.get("labels") or []),
                units=frozenset(normalise_unit(str(u)) for u in entry.get("units") or []),
            )
        )
    return out


def load_rules(path: str | Path) -> RuleSet:
    """Load and check a rules file."""
    path = Path(path)
    try:
        # libyaml where available (same documents, ~10x faster); its errors name line and column
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
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
        str(name): frozenset(normalise_label(str(x)) for x in labels)
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
    return RuleSet(
        str(path),
        rules,
        site_rules,
        references,
        vocabulary,
        _label_forms(doc, str(path)),
        _not_model(doc, str(path)),
    )


def assign_channels(
    labels: list[str],
    ruleset: RuleSet,
    site: str | None = None,
    rates: list[float] | None = None,
    units: list[str] | None = None,
) -> list[Assignment]:
    """Decide the fate of every source channel of one recording.

    ``labels`` are the raw header labels in file order (annotation channels excluded);
    ``rates`` (Hz) and ``units`` (physical dimensions) in the same order are optional: with
    ``rates`` a reference electrode slower than a rule's ``min_fs`` does not serve that rule,
    with ``units`` the ``not_model`` families also match by unit (``bpm``: a device heart
    rate). Duplicate labels are all dropped: which copy is meant cannot be known.
    """
    keys = [ruleset.forms.keys(x) for x in labels]
    out = [Assignment(index=i, label=lab) for i, lab in enumerate(labels)]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k.exact] = counts.get(k.exact, 0) + 1
    available = [i for i, k in enumerate(keys) if k.exact and counts[k.exact] == 1]
    for i, k in enumerate(keys):
        if not k.exact:
            out[i].reason = "empty label"
        elif counts[k.exact] > 1:
            out[i].reason = (
                f"duplicate label: {counts[k.exact]} channels are called {labels[i]!r}; which "
                "one is meant cannot be known. Rename them in the EDF or drop the extra copy."
            )
    family = {i: ruleset.reference_family(keys[i]) for i in available}
    for i, name in family.items():
        out[i].family = name

    def find_reference(name: str, min_fs: float) -> int | None:
        for j in available:
            if family[j] == name and (rates is None or rates[j] >= min_fs):
                return j
        return None

    def open_signal(i: int) -> bool:
        return not out[i].reason and out[i].role == "dropped" and family[i] is None

    produced: dict[str, int] = {}

    def apply(rule: Rule, channels: list[int]) -> None:
        for i in channels:
            if not open_signal(i):
                continue
            ref_idx = [find_reference(r, rule.min_fs) for r in rule.reference]
            if any(j is None for j in ref_idx):
                continue  # reference absent: this rule does not apply, a later one may
            if rule.canonical in produced:
                out[i].reason = (
                    f"{rule.canonical} already produced from {labels[produced[rule.canonical]]!r} "
                    "by an earlier rule; only the first is kept"
                )
                out[i].origin = rule.origin
                continue
            produced[rule.canonical] = i
            a = out[i]
            a.canonical, a.modality, a.rule, a.origin = (
                rule.canonical,
                rule.modality,
                rule,
                rule.origin,
            )
            a.role = "signal"
            a.reference_indices = tuple(ref_idx)
            for j in ref_idx:
                out[j].role, out[j].origin = "reference", "references"
                out[j].used_by.append(rule.canonical)

    ordered = ruleset.ordered(site)
    n_before_vocabulary = len(ordered) - len(ruleset.vocabulary)
    by_rule: dict[int, list[int]] = {}  # rule position -> matching channels, in file order
    for i in available:
        if family[i] is None:
            for p in ruleset.matching(keys[i], site):
                by_rule.setdefault(p, []).append(i)
    for p in sorted(q for q in by_rule if q < n_before_vocabulary):
        apply(ordered[p], by_rule[p])
    for i in available:  # channels that are not model inputs, before the vocabulary
        if not open_signal(i):
            continue
        unit = units[i] if units is not None else None
        hit = next((f for f in ruleset.not_model if f.match(keys[i], unit)), None)
        if hit is not None:
            out[i].reason = (
                f"not a model channel ({hit.name}); kept out of the model by design "
                "(not_model in the channel rules)"
            )
            out[i].origin = "not_model"
    for p in sorted(q for q in by_rule if q >= n_before_vocabulary):
        apply(ordered[p], by_rule[p])

    for a in out:
        if a.role == "reference":
            a.reason = a.reference_reason()
        elif a.family is not None and not a.reason:
            a.origin = "references"
            a.reason = (
                f"reference channel ({a.family}): only ever used as a reference, never "
                "as a signal, and no rule of this recording needed it"
            )
        elif a.role == "dropped" and not a.reason:
            a.reason = NO_MATCH
    return out
