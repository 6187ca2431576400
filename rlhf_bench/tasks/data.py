"""Reading user data: JSONL files and Hugging Face data sets, row by row, with errors that name
the file and line (or the data set, split and row) and the fix.

Every row is checked against the fields its kind of data needs:

    prompts      {"prompt": str}
    sft          {"prompt": str, "completion": str}
    preferences  {"prompt": str, "chosen": str, "rejected": str} + optional "margin" (number)
                 or "strength" (int 0..3, the annotator's stated preference strength)

A data set whose records are not in these fields (token ids, nested fields, a prompt template to
fill in, one record holding several pairs) is read through a formatter: a function
``formatter(record, kind) -> row | list of rows | None`` (None skips the record), called on every
raw record instead of the column mapping (``task.formatter``; ``rlhf_bench/tasks/formats.py`` has
the ones of the published setups).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIELDS: dict[str, tuple[str, ...]] = {
    "prompts": ("prompt",),
    "sft": ("prompt", "completion"),
    "preferences": ("prompt", "chosen", "rejected"),
}
OPTIONAL_NUMBERS = ("margin", "strength")


class DataError(ValueError):
    """User data that cannot be used; the message names the file and line (or row) and the fix."""


def read_jsonl(path: Path | str, key: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped). ``key`` is the config key that named the file."""
    path = Path(path)
    where = f" (set by {key})" if key else ""
    if not path.is_file():
        raise DataError(f"{path}: no such file{where}")
    raw = path.read_bytes()
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not UTF-8 (byte {exc.start} of the line is {line[exc.start : exc.start + 1]!r}); "
                "save the file as UTF-8"
            ) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def check_rows(rows: list[dict[str, Any]], kind: str, source: str, line_of=None) -> list[dict[str, Any]]:
    """Check that ``rows`` hold the fields of ``kind``; ``source`` names the file or data set in errors.

    ``line_of(i)`` gives the line (or row) number of row i for messages (default i + 1)."""
    fields = FIELDS[kind]
    line_of = line_of or (lambda i: i + 1)
    if not rows:
        raise DataError(f"{source}: no rows (expected {kind} rows with fields {', '.join(fields)})")
    for i, row in enumerate(rows):
        for name in fields:
            if name not in row:
                raise DataError(
                    f"{source}:{line_of(i)}: missing field '{name}' ({kind} rows need {', '.join(fields)}; "
                    f"this row has {', '.join(row) or 'none'})"
                )
            if not isinstance(row[name], str):
                raise DataError(
                    f"{source}:{line_of(i)}: field '{name}' must be a string, got {type(row[name]).__name__}"
                )
        for name in OPTIONAL_NUMBERS:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{source}:{line_of(i)}: field '{name}' must be a number, got {type(value).__name__}")
            if value is not None and not math.isfinite(value):  # JSON's NaN and Infinity parse as floats
                raise DataError(f"{source}:{line_of(i)}: field '{name}' must be a finite number, got {value}")
        if kind == "preferences" and "strength" in row and row["strength"] not in (0, 1, 2, 3):
            raise DataError(f"{source}:{line_of(i)}: field 'strength' must be 0, 1, 2 or 3, got {row['strength']}")
        if kind == "preferences" and row["chosen"] == row["rejected"]:
            raise DataError(
                f"{source}:{line_of(i)}: 'chosen' and 'rejected' are the same text, which states no preference; "
                "remove the row (a formatter returns None for it)"
            )
    return rows


def load_jsonl(path: str, kind: str, key: str) -> list[dict[str, Any]]:
    """Read and check a JSONL file of ``kind`` rows; ``key`` is the config key that named it."""
    rows = read_jsonl(path, key)
    if not rows:
        raise DataError(
            f"{path}: empty file (set by {key}; expected {kind} rows with fields {', '.join(FIELDS[kind])})"
        )
    lines = jsonl_lines(path)
    return check_rows(rows, kind, str(path), lambda i: lines[i])


def jsonl_lines(path: Path | str) -> list[int]:
    """The line numbers of a JSONL file's rows (its non-blank lines), for messages."""
    return [n for n, line in enumerate(Path(path).read_bytes().split(b"\n"), start=1) if line.strip()]


# A data set given as one data file (a local path or an ``hf://datasets/<repo>/<file>`` URL) is
# read by the `datasets` builder for its format; its one split is "train".
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

Formatter = Callable[[dict[str, Any], str], "dict[str, Any] | list[dict[str, Any]] | None"]


def _open_split(dataset: str, split: str, config_name: str | None):
    """One split of a data set: a ``save_to_disk`` folder, a data file, or a hub name."""
    import datasets

    folder = Path(dataset)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(folder))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    builder = DATA_FILE_BUILDERS.get(Path(dataset).suffix.lower())
    if builder is not None:
        if "://" not in dataset and not folder.is_file():
            raise FileNotFoundError(f"no such data file {folder.resolve()}")
        return datasets.load_dataset(builder, data_files=dataset, split=split)
    return datasets.load_dataset(dataset, config_name, split=split)


def load_hf_split(
    dataset: str,
    split: str,
    kind: str,
    columns: dict[str, str],
    config_name: str | None = None,
    formatter: Formatter | None = None,
    formatter_name: str = "the formatter",
) -> list[dict[str, Any]]:
    """Rows of ``kind`` from a Hugging Face data set (a hub name, a local folder written by
    ``save_to_disk``, or one data file), with ``columns`` mapping our field names to the data set's
    columns; or, with ``formatter``, the rows it makes of each raw record."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError("task.format=datasets needs the `datasets` package: pip install datasets") from None
    try:
        data = _open_split(dataset, split, config_name)
    except (KeyError, ValueError, FileNotFoundError, ConnectionError) as exc:
        raise DataError(f"data set {dataset!r} split {split!r} could not be loaded: {exc}") from None
    source = f"data set {dataset!r} split {split!r} row"
    if formatter is not None:
        rows = _formatted(data, kind, formatter, formatter_name, source)
        return check_rows(rows, kind, f"data set {dataset!r} split {split!r}, {formatter_name}'s row")
    wanted = FIELDS[kind] + OPTIONAL_NUMBERS
    mapping = {ours: columns.get(ours, ours) for ours in wanted}
    missing = [col for ours, col in mapping.items() if ours in FIELDS[kind] and col not in data.column_names]
    if missing:
        raise DataError(
            f"data set {dataset!r} split {split!r} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(data.column_names)}); map it with task.columns.<field>=<column>"
        )
    rows = [
        {ours: record[col] for ours, col in mapping.items() if col in record and record[col] is not None}
        for record in data
    ]
    return check_rows(rows, kind, source)


def _formatted(data, kind: str, formatter: Formatter, name: str, source: str) -> list[dict[str, Any]]:
    """``formatter(record, kind)`` of every record, flattened; an error names the record."""
    rows: list[dict[str, Any]] = []
    for number, record in enumerate(data, start=1):
        try:
            out = formatter(record, kind)
        except DataError as exc:
            raise DataError(f"{source} {number}: {exc}") from None
        except Exception as exc:
            raise DataError(
                f"{source} {number}: {name} raised {type(exc).__name__}: {exc} "
                f"(columns of the record: {', '.join(record)})"
            ) from exc
        if out is None:
            continue
        for row in out if isinstance(out, list) else [out]:
            if not isinstance(row, dict):
                raise DataError(
                    f"{source} {number}: {name} must return a dict of fields, a list of them or None, "
                    f"got {type(row).__name__}"
                )
            rows.append(row)
    return rows
