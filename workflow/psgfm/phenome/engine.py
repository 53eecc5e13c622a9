"""The phenome's heavy part, in numpy: one pass over the diagnosis records, then labels per
partition of persons.

**Pass** (:class:`RecordPass`). Records are read in Arrow batches with their string columns
dictionary-encoded (Parquet dictionary pages are read as they are), so the string work --
stripping person ids, normalising codes and code systems, parsing text dates -- is done once
per *distinct* value of a batch, and every per-record step is an integer gather: person index,
code id (code system x dotless code), day number, record status. Used records are expanded to
their phecodes (a code counts toward every phecode the map lists for it) and aggregated per
(person, phecode) into dense grids of the first and last date (uint16 days since the earliest
birth date when the cohort's span fits, else int32). Relative record times (days from the PSG
or a baseline) are turned into day numbers with a per-person anchor. Named composite outcomes
are extra grid columns: a code counts toward one when the map lists one of its phecodes for the
code or the code starts with one of its ICD prefixes (matched once per distinct code).

**Partitions.** Persons are split into contiguous ranges of the (sorted) person index, each
small enough that its grids hold at most ``partition_cells`` (person, phecode) cells. With one
partition the grids are filled during the pass; with several, the pass spills the expanded
(person, phecode, day) triples to one file per partition and each partition is aggregated
after it, so memory follows one partition whatever the cohort. ``min_records > 2`` needs the
number of distinct dates, counted per partition from the spilled triples.

**Labels** (:func:`label_blocks`). Per block of persons of a partition, the grids give every
(person, phecode) status by the rules of docs/phenome.md as integer codes; exclusion ranges
are OR-ed columns of the "has a record" grid. Blocks become Arrow tables (dictionary-encoded
strings; written to Parquet as plain strings) and the wide CSV blocks.
"""

from __future__ import annotations

import functools
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from psgfm.phenome.maps import normalise_code_expr, normalise_code_system_expr

RECORD_STATUSES = (
    "used",
    "person_not_in_cohort",
    "missing_date",
    "unparseable_date",
    "before_birth",
    "after_end_of_followup",
)
USED, NOT_IN_COHORT, MISSING_DATE, UNPARSEABLE, BEFORE_BIRTH, AFTER_END = range(6)
STATUSES = ("case", "control", "excluded")
REASONS = ("prevalent", "single_record", "too_few_records", "exclusion_range", "sex")
# summary categories: case, control, then one per exclusion reason
CATEGORIES = ("case", "control", *REASONS)
BATCH_ROWS = 1 << 20
NO_DAY = np.iinfo(np.int32).min
DEFAULT_PARTITION_CELLS = 200_000_000  # (person, phecode) cells per partition: ~0.8 GB of grids
DEFAULT_BLOCK_CELLS = 8_000_000  # label cells per output block
MAX_REL_DAYS = 100_000  # relative record times beyond this many days are unparseable


# ---------------------------------------------------------------------------------------------
# Reading: Arrow batches of (person_id, code, code_system, date)
# ---------------------------------------------------------------------------------------------


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


@dataclass
class DiagnosisSource:
    """Where the diagnosis records are and which of their columns hold what.

    ``columns`` maps the canonical names ``person_id``, ``code``, ``code_system`` (absent when
    ``code_system`` is a constant, e.g. an OMOP extract of one vocabulary) and ``time`` to the
    source's columns; ``time`` is a calendar date (``time_kind`` ``date``) or a number of days
    (``days_from_psg`` / ``days_from_baseline``)."""

    source: object
    files: list[str] | None
    lf: pl.LazyFrame
    columns: dict[str, str]
    time_kind: str = "date"
    code_system: str | None = None

    @property
    def relative(self) -> bool:
        return self.time_kind != "date"


def _constant(value: str | None, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _canonical(batch, spec: DiagnosisSource) -> pa.RecordBatch:
    names = ["person_id", "code", "code_system", "time"]
    arrays = [
        batch.column(spec.columns[c])
        if c in spec.columns
        else _constant(spec.code_system, batch.num_rows)
        for c in names
    ]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def record_batches(spec: DiagnosisSource) -> Iterator[pa.RecordBatch]:
    """The diagnosis records in batches of about BATCH_ROWS rows, with the canonical columns
    person_id, code, code_system, time.

    Parquet files are read with pyarrow (text columns as dictionaries), CSV/TSV files
    streamed by pyarrow's CSV reader (every column as text), anything else (in-memory
    tables) collected from the validated lazy frame ``spec.lf``."""
    files = spec.files
    cols = list(dict.fromkeys(spec.columns.values()))
    if files and all(f.endswith(".parquet") for f in files):
        for f in files:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            text = [c for c in cols if _is_text(schema.field(c).type)]
            pf = pq.ParquetFile(f, read_dictionary=text)
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
                yield _canonical(batch, spec)
        return
    if files and all(f.endswith((".csv", ".tsv")) for f in files):
        for f in files:
            reader = pacsv.open_csv(
                f,
                read_options=pacsv.ReadOptions(block_size=64 << 20),
                parse_options=pacsv.ParseOptions(delimiter="\t" if f.endswith(".tsv") else ","),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(cols, pa.string()),
                    include_columns=cols,
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                yield _canonical(batch, spec)
        return
    table = spec.lf.select(cols).collect().to_arrow()
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        yield _canonical(batch, spec)


_DONE = object()


def prefetch(items, depth: int = 2):
    """Iterate ``items`` in a background thread, ``depth`` ahead (reading and decoding the
    next batch overlaps the work on this one; pyarrow and numpy release the GIL)."""
    q: queue.Queue = queue.Queue(depth)
    errors: list[BaseException] = []

    def run():
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            errors.append(exc)
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (item := q.get()) is not _DONE:
        yield item
    thread.join()
    if errors:
        raise errors[0]


class Background:
    """Run ``fn(item)`` for each ``put`` item in a background thread, in order (the Parquet
    writer is single-threaded; this overlaps it with computing the next label block)."""

    def __init__(self, fn, depth: int = 2):
        self.fn = fn
        self.q: queue.Queue = queue.Queue(depth)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.q.get()) is not _DONE:
            if not self.errors:
                try:
                    self.fn(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised by put/close
                    self.errors.append(exc)

    def put(self, item) -> None:
        if self.errors:
            raise self.errors[0]
        self.q.put(item)

    def close(self) -> None:
        self.q.put(_DONE)
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def _dictionary(col: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(indices with -1 for null, dictionary) of a column, encoding it if needed."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_string_view(col.type):
        col = col.cast(pa.large_string())
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    idx = col.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return idx, col.dictionary


def _text(values: pa.Array) -> pl.Series:
    s = pl.from_arrow(values)
    return s if s.dtype == pl.String else s.cast(pl.String)


def _value_type(col) -> tuple[pa.Array, pa.DataType]:
    """(the column as one array, the type of its values: a dictionary's value type)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col, (col.type.value_type if pa.types.is_dictionary(col.type) else col.type)


def _parse_distinct(col: pa.Array, parse, fill) -> tuple[np.ndarray, np.ndarray]:
    """(parsed value, blank) per record of a text column, parsing each distinct text once;
    ``parse`` maps the distinct texts (a polars Series) to an array; null records get ``fill``."""
    idx, dic = _dictionary(col)
    raw = _text(dic)
    values = np.concatenate([parse(raw), [fill]])
    blank = np.concatenate([(raw.is_null() | (raw.str.strip_chars() == "")).to_numpy(), [True]])
    return values[idx], blank[idx]


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------


class Codes:
    """Registry of the (code system, dotless code) pairs seen, with their phecodes (CSR:
    ``offsets``/``values``), built batch by batch with vectorised joins."""

    def __init__(self, map_keys: pl.DataFrame, prefixes: pl.DataFrame | None = None):
        # map_keys: code_system, code_key, phecodes (list of phecode indices)
        # prefixes: code_system, prefix (dotless), phecode_idx -- named composite outcomes
        self.map_keys = map_keys
        self.prefixes = prefixes if prefixes is not None and prefixes.height else None
        self.systems: dict = {}  # normalised system (or None) -> sid
        self.key_df = pl.DataFrame(schema={"key": pl.String, "kid": pl.Int64})
        self.raw_df = pl.DataFrame(schema={"raw": pl.String, "kid": pl.Int64})
        self.keys: list = []  # kid -> key
        self.by_system: list = []  # sid -> int64 array kid -> cid (-1: not registered)
        self.cid_sid = np.zeros(0, np.int64)
        self.cid_kid = np.zeros(0, np.int64)
        self.cid_example: list = []
        self.offsets = np.zeros(1, np.int64)
        self.values = np.zeros(0, np.int32)

    @property
    def n(self) -> int:
        return len(self.cid_kid)

    def sid(self, system: str | None) -> int:
        if system not in self.systems:
            self.systems[system] = len(self.systems)
            self.by_system.append(np.zeros(0, np.int64))
        return self.systems[system]

    def kids(self, keys: pl.Series) -> np.ndarray:
        """Key id of each (normalised) code key, registering new keys."""
        frame = pl.DataFrame({"key": keys})
        new = frame.unique().join(self.key_df, on="key", how="anti", nulls_equal=True)
        if new.height:
            new = new.with_columns(kid=pl.int_range(pl.len(), dtype=pl.Int64) + len(self.keys))
            self.keys.extend(new["key"].to_list())
            self.key_df = pl.concat([self.key_df, new])
        found = frame.join(
            self.key_df, on="key", how="left", nulls_equal=True, maintain_order="left"
        )
        return found["kid"].to_numpy()

    def kids_of_raw(self, raw: pl.Series) -> np.ndarray:
        """Key id of each raw code spelling; spellings seen before skip the normalisation."""
        frame = pl.DataFrame({"raw": raw})
        found = frame.join(
            self.raw_df, on="raw", how="left", nulls_equal=True, maintain_order="left"
        )["kid"]
        unknown = found.is_null()
        if unknown.any():
            new_raw = raw.filter(unknown).unique(maintain_order=True)
            keys = pl.select(normalise_code_expr(pl.lit(new_raw))).to_series()
            new = pl.DataFrame({"raw": new_raw, "kid": self.kids(keys)})
            self.raw_df = pl.concat([self.raw_df, new])
            found = frame.join(
                self.raw_df, on="raw", how="left", nulls_equal=True, maintain_order="left"
            )["kid"]
        return found.to_numpy()

    def cids(self, sid: int, kids: np.ndarray, raw: list[str | None]) -> np.ndarray:
        """Code ids of (sid, kid) pairs, registering new ones (``raw``: a raw spelling each)."""
        table = self.by_system[sid]
        if len(table) < len(self.keys):
            table = np.concatenate([table, np.full(len(self.keys) - len(table), -1, np.int64)])
            self.by_system[sid] = table
        out = table[kids]
        missing = np.flatnonzero(out < 0)
        if len(missing):
            new_kids, first = np.unique(kids[missing], return_index=True)
            cids = np.arange(self.n, self.n + len(new_kids))
            table[new_kids] = cids
            system = next(s for s, i in self.systems.items() if i == sid)
            lookup = pl.DataFrame(
                {
                    "code_system": pl.Series([system] * len(new_kids), dtype=pl.String),
                    "code_key": pl.Series([self.keys[k] for k in new_kids], dtype=pl.String),
                }
            ).join(self.map_keys, on=["code_system", "code_key"], how="left", maintain_order="left")
            if self.prefixes is not None:
                lookup = self._with_prefixes(lookup)
            phe = lookup["phecodes"]
            lengths = phe.list.len().fill_null(0).to_numpy().astype(np.int64)
            values = phe.explode().drop_nulls().to_numpy().astype(np.int32)
            self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lengths)])
            self.values = np.concatenate([self.values, values])
            self.cid_sid = np.concatenate([self.cid_sid, np.full(len(new_kids), sid)])
            self.cid_kid = np.concatenate([self.cid_kid, new_kids])
            self.cid_example.extend(raw[missing[i]] for i in first)
            out = table[kids]
        return out

    def _with_prefixes(self, lookup: pl.DataFrame) -> pl.DataFrame:
        """Add the outcomes whose ICD prefixes the new codes start with to their phecodes."""
        lookup = lookup.with_row_index("i")
        hits = (
            lookup.select("i", "code_system", "code_key")
            .join(self.prefixes, on="code_system")
            .filter(pl.col("code_key").str.starts_with(pl.col("prefix")))
            .group_by("i")
            .agg(extra=pl.col("phecode_idx").cast(pl.Int32))
        )
        empty = pl.lit([], dtype=pl.List(pl.Int32))
        return lookup.join(hits, on="i", how="left", maintain_order="left").select(
            pl.concat_list(pl.col("phecodes").fill_null(empty), pl.col("extra").fill_null(empty))
            .list.unique(maintain_order=True)
            .alias("phecodes")
        )


class RecordPass:
    """One pass over the diagnosis records; see the module docstring."""

    def __init__(
        self,
        cohort: pl.DataFrame,
        map_keys: pl.DataFrame,
        n_phecodes: int,
        min_records: int,
        partition_cells: int = DEFAULT_PARTITION_CELLS,
        spill_dir: str | None = None,
        prefixes: pl.DataFrame | None = None,
        anchor: np.ndarray | None = None,
    ):
        """``anchor``: per cohort person, the day number that relative record times (days
        from the PSG or from the baseline) count from; None for calendar dates."""
        self.n_persons = cohort.height
        self.K = n_phecodes
        self.min_records = int(min_records)
        self.person_index = cohort.select(
            "person_id", pl.col("person_idx").cast(pl.Int64).alias("idx")
        )
        self.birth = cohort["birth_date"].cast(pl.Int32).to_numpy()
        self.end = cohort["end_of_followup"].cast(pl.Int32).to_numpy()
        # day numbers of used records lie in [min birth, max end]
        self.origin = int(self.birth.min()) if self.n_persons else 0
        span = int(self.end.max()) - self.origin if self.n_persons else 0
        self.day_dtype = np.uint16 if span < np.iinfo(np.uint16).max else np.int32
        self.no_day = np.iinfo(self.day_dtype).max
        self.codes = Codes(map_keys, prefixes)
        self.anchor = None if anchor is None else np.asarray(anchor, np.int32)
        self.records: dict[tuple[int, int], int] = {}
        self.n_used = np.zeros(0, np.int64)  # per code id
        self.unmapped_pairs: list[np.ndarray] = []  # (cid, person) of used unmapped records
        self.observed = np.zeros(self.K, bool)
        per = max(1, partition_cells // max(self.K, 1))
        self.bounds = list(range(0, self.n_persons, per)) + [self.n_persons]
        if self.n_persons == 0:
            self.bounds = [0, 0]
        self.spill = len(self.bounds) > 2 or self.min_records > 2
        self._tmp = None
        if self.spill:
            self._tmp = tempfile.TemporaryDirectory(prefix="phenome-", dir=spill_dir)
            self.grids = None
        else:
            self.grids = self._empty_grids(self.n_persons)

    # -- grids ------------------------------------------------------------------------------

    def _empty_grids(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        first = np.full(n * self.K, self.no_day, self.day_dtype)
        last = np.zeros(n * self.K, self.day_dtype)
        return first, last

    @property
    def partitions(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds[:-1], self.bounds[1:]))

    # -- one batch ----------------------------------------------------------------------------

    def _persons(self, col) -> np.ndarray:
        idx, dic = _dictionary(col)
        ids = pl.DataFrame({"person_id": _text(dic).str.strip_chars()})
        found = ids.join(self.person_index, on="person_id", how="left", maintain_order="left")
        lut = np.append(found["idx"].fill_null(-1).to_numpy(), -1)
        return lut[idx]  # idx -1 (null) -> the trailing -1

    def _code_ids(self, sys_col, code_col) -> tuple[np.ndarray, np.ndarray]:
        """(code id, system id) per record."""
        s_idx, s_dic = _dictionary(sys_col)
        c_idx, c_dic = _dictionary(code_col)
        systems = pl.select(normalise_code_system_expr(pl.lit(_text(s_dic)))).to_series().to_list()
        sids = np.array([self.codes.sid(s) for s in systems] + [self.codes.sid(None)], np.int64)
        raw = _text(c_dic).append(pl.Series([None], dtype=pl.String))  # + null codes
        kids = self.codes.kids_of_raw(raw)
        examples = raw.to_list()
        # code id per (system dictionary entry, code dictionary entry), then per record
        n_c = len(kids)
        table = np.empty((len(sids), n_c), np.int64)
        for i, sid in enumerate(sids):
            table[i] = self.codes.cids(int(sid), kids, examples)
        flat = s_idx.copy()
        flat[flat < 0] = len(sids) - 1
        c = c_idx.copy()
        c[c < 0] = n_c - 1
        return table.ravel()[flat * n_c + c], sids[flat]

    def _days(self, col) -> tuple[np.ndarray, np.ndarray]:
        """(day number or NO_DAY, raw value missing) per record."""
        col, t = _value_type(col)
        if _is_text(t):

            def parse(raw: pl.Series) -> np.ndarray:
                text = raw.str.strip_chars().str.slice(0, 10)
                days = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Int32)
                return days.fill_null(NO_DAY).to_numpy()

            days, blank = _parse_distinct(col, parse, NO_DAY)
            return days.astype(np.int32), blank
        s = pl.from_arrow(col)
        if s.dtype != pl.Date:
            s = s.cast(pl.Date) if isinstance(s.dtype, pl.Datetime) else s.cast(pl.Date)
        missing = s.is_null().to_numpy()
        return s.cast(pl.Int32).fill_null(NO_DAY).to_numpy().astype(np.int32), missing

    def _relative_days(self, col) -> tuple[np.ndarray, np.ndarray]:
        """(whole days or NO_DAY, raw value missing) of a column of day counts (numbers, or
        text numbers; decimals are floored; beyond +-MAX_REL_DAYS is unparseable)."""
        col, t = _value_type(col)
        if _is_text(t):

            def parse(raw: pl.Series) -> np.ndarray:
                return raw.str.strip_chars().cast(pl.Float64, strict=False).to_numpy()

            values, blank = _parse_distinct(col, parse, np.nan)
        elif pa.types.is_integer(t):  # the common case: whole days, no float round trip
            if pa.types.is_dictionary(col.type):
                col = col.cast(t)
            blank = col.is_null().to_numpy(zero_copy_only=False)
            values = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
            ok = ~blank & (np.abs(values) <= MAX_REL_DAYS)
            days = np.where(ok, values, NO_DAY).astype(np.int32)
            return days, blank
        else:
            s = pl.from_arrow(col)
            if s.dtype == pl.Boolean or not s.dtype.is_numeric():
                raise TypeError(f"day counts must be numbers, not {s.dtype}")
            blank = s.is_null().to_numpy()
            values = s.cast(pl.Float64).fill_null(np.nan).to_numpy()
        ok = np.isfinite(values) & (np.abs(values) <= MAX_REL_DAYS)
        days = np.full(len(values), NO_DAY, np.int32)
        days[ok] = np.floor(values[ok]).astype(np.int32)
        return days, blank

    def add(self, batch: pa.RecordBatch) -> None:
        person = self._persons(batch.column("person_id"))
        cid, sid = self._code_ids(batch.column("code_system"), batch.column("code"))
        status = np.full(len(person), USED, np.int8)
        inc = person >= 0
        p = np.where(inc, person, 0)
        if self.anchor is None:
            day, blank = self._days(batch.column("time"))
        else:  # days from the PSG / baseline -> day numbers
            rel, blank = self._relative_days(batch.column("time"))
            day = rel + self.anchor[p]
            day[rel == NO_DAY] = NO_DAY
        no_day = day == NO_DAY
        status[no_day & ~blank] = UNPARSEABLE
        status[no_day & blank] = MISSING_DATE
        status[~no_day & (day < self.birth[p])] = BEFORE_BIRTH
        status[~no_day & (day > self.end[p])] = AFTER_END
        status[~inc] = NOT_IN_COHORT
        n_sys = len(self.codes.systems)
        counts = np.bincount(sid * 6 + status, minlength=n_sys * 6)
        for flat in np.flatnonzero(counts):
            key = (int(flat) // 6, int(flat) % 6)
            self.records[key] = self.records.get(key, 0) + int(counts[flat])
        used = status == USED
        cid, person, day = cid[used], person[used], day[used]
        if len(self.n_used) < self.codes.n:
            self.n_used = np.concatenate([self.n_used, np.zeros(self.codes.n - len(self.n_used))])
            self.n_used = self.n_used.astype(np.int64)
        self.n_used += np.bincount(cid, minlength=self.codes.n)
        n_phe = np.diff(self.codes.offsets)[cid]
        unmapped = n_phe == 0
        if unmapped.any():
            self.unmapped_pairs.append(np.stack([cid[unmapped], person[unmapped]]))
        # expand each used, mapped record to its phecodes
        total = int(n_phe.sum())
        if total == 0:
            return
        rows = np.repeat(np.arange(len(cid)), n_phe)
        starts = np.repeat(self.codes.offsets[cid] - (np.cumsum(n_phe) - n_phe), n_phe)
        phe = self.codes.values[starts + np.arange(total)]
        pers = person[rows]
        d = (day[rows] - self.origin).astype(self.day_dtype)
        self.observed |= np.bincount(phe, minlength=self.K) > 0
        if self.spill:
            self._spill(pers, phe, d)
        else:
            key = pers * self.K + phe
            np.minimum.at(self.grids[0], key, d)
            np.maximum.at(self.grids[1], key, d)

    def _spill(self, pers: np.ndarray, phe: np.ndarray, d: np.ndarray) -> None:
        part = np.searchsorted(self.bounds, pers, side="right") - 1
        for i in np.unique(part):
            sel = part == i
            for name, arr, dt in (("p", pers, np.int32), ("k", phe, np.int32), ("d", d, None)):
                with open(os.path.join(self._tmp.name, f"{i}.{name}"), "ab") as fh:
                    arr[sel].astype(dt or self.day_dtype).tofile(fh)

    # -- after the pass -------------------------------------------------------------------------

    def partition_grids(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(first day, last day, number of distinct days or None) of partition ``i``, each
        (persons of the partition x K), days relative to ``origin``."""
        lo, hi = self.partitions[i]
        if not self.spill:
            first, last = self.grids
            return first.reshape(-1, self.K), last.reshape(-1, self.K), None
        first, last = self._empty_grids(hi - lo)
        base = os.path.join(self._tmp.name, str(i))
        if not os.path.exists(base + ".p"):
            return first.reshape(-1, self.K), last.reshape(-1, self.K), None
        pers = np.fromfile(base + ".p", np.int32) - lo
        phe = np.fromfile(base + ".k", np.int32)
        d = np.fromfile(base + ".d", self.day_dtype)
        key = pers.astype(np.int64) * self.K + phe
        np.minimum.at(first, key, d)
        np.maximum.at(last, key, d)
        n_days = None
        if self.min_records > 2:
            span = int(np.iinfo(self.day_dtype).max) + 1
            pairs = np.unique(key * span + d.astype(np.int64))
            keys, counts = np.unique(pairs // span, return_counts=True)
            n_days = np.zeros((hi - lo) * self.K, np.int32)
            n_days[keys] = counts
            n_days = n_days.reshape(-1, self.K)
        return first.reshape(-1, self.K), last.reshape(-1, self.K), n_days

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def record_counts(self) -> pl.DataFrame:
        """(record_status, code_system, n_records) for every status seen."""
        names = {i: s for s, i in self.codes.systems.items()}
        rows = [(RECORD_STATUSES[st], names[sid], n) for (sid, st), n in self.records.items()]
        return pl.DataFrame(
            rows,
            schema={"record_status": pl.String, "code_system": pl.String, "n_records": pl.Int64},
            orient="row",
        )

    def code_counts(self) -> pl.DataFrame:
        """(code_system, code_key, code_example, n_records, n_persons) of every code with used
        records; n_persons only for unmapped codes (0 for mapped ones, which never need it)."""
        n = self.codes.n
        n_used = np.zeros(n, np.int64)
        n_used[: len(self.n_used)] = self.n_used
        n_persons = np.zeros(n, np.int64)
        if self.unmapped_pairs:
            pairs = np.unique(np.concatenate(self.unmapped_pairs, axis=1), axis=1)
            n_persons += np.bincount(pairs[0], minlength=n)
        keep = np.flatnonzero(n_used > 0)
        system_of = {i: sy for sy, i in self.codes.systems.items()}
        return pl.DataFrame(
            {
                "code_system": [system_of[int(self.codes.cid_sid[i])] for i in keep],
                "code_key": [self.codes.keys[int(self.codes.cid_kid[i])] for i in keep],
                "code_example": [self.codes.cid_example[i] for i in keep],
                "n_records": n_used[keep],
                "n_persons": n_persons[keep],
                "mapped": np.diff(self.codes.offsets)[keep] > 0,
            },
            schema={
                "code_system": pl.String,
                "code_key": pl.String,
                "code_example": pl.String,
                "n_records": pl.Int64,
                "n_persons": pl.Int64,
                "mapped": pl.Boolean,
            },
        )


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelBlock:
    """Labels of a block of persons x the output phecodes (all (n, K_out) arrays)."""

    person_id: list[str]
    death: np.ndarray  # (n,)
    category: np.ndarray  # int8: index into CATEGORIES
    event: np.ndarray  # int8 (valid where status is case/control)
    time_days: np.ndarray  # int32
    end_day: np.ndarray  # int32, days since 1970
    valid: np.ndarray  # bool: case or control

    @property
    def status(self) -> np.ndarray:
        return np.minimum(self.category, 2)  # 0 case, 1 control, 2 excluded


@dataclass
class Exclusions:
    """Exclusion ranges as (output phecode position, phecode) pairs sorted by position:
    a record of the phecode disqualifies the controls of the output phecode."""

    rows: np.ndarray  # output positions that have at least one pair
    starts: np.ndarray  # start of each of those rows in ``cols``
    cols: np.ndarray  # phecode indices
    n_out: int

    def of(self, has: np.ndarray) -> np.ndarray:
        """(persons x output phecodes) bool: a record of a phecode of the exclude_range.
        ``has`` is (persons x all phecodes). Works on bits: 8 persons a byte."""
        n = has.shape[0]
        out = np.zeros((n, self.n_out), bool)
        if not len(self.cols) or n == 0:
            return out
        bits = np.packbits(has.T, axis=1)  # (phecodes, ceil(n / 8))
        hit = np.bitwise_or.reduceat(bits[self.cols], self.starts, axis=0)
        out[:, self.rows] = np.unpackbits(hit, axis=1, count=n).T.astype(bool)
        return out


def exclusions(pairs: pl.DataFrame, out_idx: np.ndarray, n_phecodes: int) -> Exclusions:
    pos = np.full(n_phecodes, -1, np.int64)
    pos[out_idx] = np.arange(len(out_idx))
    rows = pos[pairs["phecode_idx"].to_numpy().astype(np.int64)]
    cols = pairs["excluded_by_idx"].to_numpy().astype(np.int64)
    keep = rows >= 0
    rows, cols = rows[keep], cols[keep]
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    uniq, starts = np.unique(rows, return_index=True)
    return Exclusions(uniq, starts, cols, len(out_idx))


def label_blocks(
    rp: RecordPass,
    cohort: pl.DataFrame,
    out_idx: np.ndarray,
    phe_sex: np.ndarray,
    excl: Exclusions,
    washout_days: int,
    block_persons: int | None = None,
    mortality: int | None = None,
) -> Iterator[LabelBlock]:
    """Label blocks in person order (partition by partition), by the rules of the module.

    ``mortality``: the output position of all-cause mortality, labelled from the persons
    table (case = death at the end of follow-up, control otherwise; never excluded)."""
    K_out = len(out_idx)
    if block_persons is None:
        block_persons = max(1, DEFAULT_BLOCK_CELLS // max(K_out, 1))
    psg = cohort["psg_date"].cast(pl.Int32).to_numpy()
    end = cohort["end_of_followup"].cast(pl.Int32).to_numpy()
    male = (cohort["sex"] == "M").to_numpy()
    death = cohort["death"].to_numpy()
    pids = cohort["person_id"].to_list()
    female_only = phe_sex == "Female"
    male_only = phe_sex == "Male"
    min_records = rp.min_records
    every = K_out == rp.K and np.array_equal(out_idx, np.arange(rp.K))

    def cols(grid: np.ndarray) -> np.ndarray:
        return grid if every else grid[:, out_idx]

    for part, (lo, hi) in enumerate(rp.partitions):
        first_all, last_all, ndays_all = rp.partition_grids(part)
        for a in range(lo, hi, block_persons):
            b = min(hi, a + block_persons)
            rows = slice(a - lo, b - lo)
            first_b = first_all[rows]
            has_b = first_b != rp.no_day
            has = cols(has_b)
            first = cols(first_b).astype(np.int32) + rp.origin
            if ndays_all is None:
                n_days = np.where(cols(last_all[rows]) != cols(first_b), 2, 1)
            else:
                n_days = cols(ndays_all[rows])
            m = male[a:b, None]
            p = psg[a:b, None]
            # precedence: sex, prevalent, single_record, too_few_records, case,
            # exclusion_range, control (CATEGORIES: case, control, prevalent, single,
            # too_few, exclusion_range, sex)
            with_record = np.where(n_days < min_records, np.int8(4), np.int8(0))
            if min_records > 1:
                with_record[n_days == 1] = 3
            with_record[first <= p + washout_days] = 2
            without = np.where(excl.of(has_b), np.int8(5), np.int8(1))
            cat = np.where(has, with_record, without)
            sex = np.where(m, female_only[None, :], male_only[None, :])
            cat[sex] = 6
            end_day = np.where(cat == 0, first, end[a:b, None])
            if mortality is not None:
                cat[:, mortality] = np.where(death[a:b], np.int8(0), np.int8(1))
                end_day[:, mortality] = end[a:b]
            valid = cat <= 1
            yield LabelBlock(
                person_id=pids[a:b],
                death=death[a:b],
                category=cat,
                event=(cat == 0).astype(np.int8),
                time_days=(end_day - p).astype(np.int32),
                end_day=end_day.astype(np.int32),
                valid=valid,
            )
        del first_all, last_all, ndays_all


def _column(values: np.ndarray, valid: np.ndarray | None, type_: pa.DataType) -> pa.Array:
    values = np.ascontiguousarray(values)
    n = len(values)
    if valid is None or valid.all():
        return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(values)])
    bits = np.packbits(np.ascontiguousarray(valid), bitorder="little")
    return pa.Array.from_buffers(type_, n, [pa.py_buffer(bits), pa.py_buffer(values)])


CATEGORY_STATUS = np.array([0, 1, 2, 2, 2, 2, 2], np.int8)
CATEGORY_REASON = np.array([-1, -1, 0, 1, 2, 3, 4], np.int8)


@functools.lru_cache(maxsize=4)
def _grid_indices(n: int, k: int) -> tuple[pa.Array, pa.Array]:
    """Row -> person and row -> phecode positions of an (n x k) person-major block."""
    person = pa.array(np.repeat(np.arange(n, dtype=np.int32), k))
    phecode = pa.array(np.tile(np.arange(k, dtype=np.int32), n))
    return person, phecode


def block_table(block: LabelBlock, phecodes: pa.Array) -> pa.Table:
    """Long labels of a block: one row per (person, phecode), person-major."""
    n, k = block.category.shape
    cat = block.category.ravel()
    valid = block.valid.ravel()
    reason = CATEGORY_REASON[cat]
    person_idx, phecode_idx = _grid_indices(n, k)
    person = pa.DictionaryArray.from_arrays(person_idx, pa.array(block.person_id, pa.string()))
    phe = pa.DictionaryArray.from_arrays(phecode_idx, phecodes)
    status = pa.DictionaryArray.from_arrays(
        pa.array(CATEGORY_STATUS[cat]), pa.array(STATUSES, pa.string())
    )
    reason_arr = pa.DictionaryArray.from_arrays(
        _column(np.maximum(reason, 0), reason >= 0, pa.int8()), pa.array(REASONS, pa.string())
    )
    return pa.table(
        {
            "person_id": person,
            "phecode": phe,
            "status": status,
            "reason": reason_arr,
            "event": _column(block.event.ravel(), valid, pa.int8()),
            "time_days": _column(block.time_days.ravel(), valid, pa.int32()),
            "end_date": _column(block.end_day.ravel(), valid, pa.date32()),
            "death": pa.array(np.repeat(block.death, k)),
        },
        schema=block_table_schema(),
    )


def block_table_schema() -> pa.Schema:
    text = pa.dictionary(pa.int32(), pa.string())
    small = pa.dictionary(pa.int8(), pa.string())
    return pa.schema(
        [
            ("person_id", text),
            ("phecode", text),
            ("status", small),
            ("reason", small),
            ("event", pa.int8()),
            ("time_days", pa.int32()),
            ("end_date", pa.date32()),
            ("death", pa.bool_()),
        ]
    )


def wide_table(block: LabelBlock, names: list[str], value: str) -> pa.Table:
    """One row per person, person_id then one column per phecode (null where excluded)."""
    data = np.asfortranarray(block.event if value == "event" else block.time_days)
    valid_bits = np.asfortranarray(np.packbits(block.valid, axis=0, bitorder="little"))
    type_ = pa.int8() if value == "event" else pa.int32()
    n = data.shape[0]
    cols = [
        pa.Array.from_buffers(type_, n, [pa.py_buffer(valid_bits[:, j]), pa.py_buffer(data[:, j])])
        for j in range(data.shape[1])
    ]
    return pa.Table.from_arrays(
        [pa.array(block.person_id, pa.string()), *cols], names=["person_id", *names]
    )


class Summary:
    """Per-phecode counts by category and the exact median follow-up of cases and controls
    (a per-phecode histogram of time_days)."""

    def __init__(self, k_out: int, max_days: int):
        self.counts = np.zeros((k_out, len(CATEGORIES)), np.int64)
        self.T = max(int(max_days), 0) + 1
        self.hist = np.zeros(k_out * self.T, np.int64)

    def add(self, block: LabelBlock) -> None:
        k = block.category.shape[1]
        for c in range(len(CATEGORIES)):
            self.counts[:, c] += np.count_nonzero(block.category == c, axis=0)
        flat = np.flatnonzero(block.valid)
        idx = (flat % k) * self.T + block.time_days.ravel()[flat]
        if len(self.hist) <= 32_000_000:
            self.hist += np.bincount(idx, minlength=len(self.hist))
        else:
            np.add.at(self.hist, idx, 1)

    def medians(self) -> np.ndarray:
        """Median time_days per phecode (NaN where no case or control)."""
        h = self.hist.reshape(-1, self.T)
        total = h.sum(axis=1)
        cum = np.cumsum(h, axis=1)
        lo_rank, hi_rank = (total + 1) // 2, total // 2 + 1
        lo = (cum < lo_rank[:, None]).sum(axis=1)
        hi = (cum < hi_rank[:, None]).sum(axis=1)
        med = (lo + hi) / 2.0
        med[total == 0] = np.nan
        return med
