"""Where texts come from: CSV, TSV or JSON-lines files with a text and a label column, or folders of ``.txt`` files.

``data.root`` is a folder holding ``train``, ``val`` and optionally ``test`` files (``train.csv``, ``val.tsv``,
``test.jsonl``, ...), or one file, split by data.val_fraction and data.test_fraction; or a folder of class folders
of ``.txt`` files (``<class>/*.txt``, or ``{train,test}/<class>/*.txt`` as aclImdb and 20 Newsgroups come, val
carved out of train). Rows that cannot be used
(empty text, no label, bytes that are not UTF-8, a val or test label that train lacks) are skipped and listed in
the run folder's ``bad_rows.txt``, or are one line with ``data.bad_rows=error``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from transferlab.batches import Batch
from transferlab.data.sources import SPLITS, Split
from transferlab.errors import ConfigError

TEXT_FORMATS = (".csv", ".tsv", ".jsonl")
BAD_ROWS = "bad_rows.txt"


class LabeledTexts(Dataset):
    """:class:`~transferlab.batches.Batch` items (token ids, label) of a :class:`Split` of texts, each tokenized
    once (``transform``: a text -> its ids; one with ``many`` encodes them all in one call)."""

    def __init__(self, split: Split, transform: Callable):
        self.items, self.labels, self.transform = split.items, split.labels, transform
        many = getattr(transform, "many", None)
        self.ids = many(self.items) if many else [transform(text) for text in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Batch:
        return Batch(self.ids[index], int(self.labels[index]))

    def lengths(self) -> list[int]:
        """Each text's length in tokens (what its batch is padded to), for length-grouped batches."""
        return [len(ids) for ids in self.ids]

    def fingerprint(self) -> str:
        """Hash of the texts, labels and tokenization (the feature cache's key)."""
        h = hashlib.blake2b(np.ascontiguousarray(self.labels).data, digest_size=16)
        for text in self.items:
            h.update(text.encode("utf-8", "surrogateescape") + b"\0")
        h.update(repr(self.transform).encode())
        return h.hexdigest()


def scan_texts(
    root: str,
    text_column: str,
    label_column: str,
    bad_rows: str,
    listing_dir: Path | None,
    option: str = "data.root",
    group_column: str | None = None,
) -> tuple[dict[str, Split], list[str]]:
    """The splits of ``root`` (``option``: data.root, or data.target.root; see the module) with their labels as
    indices into the sorted class names of train (or of the one file), and those class names."""
    path = Path(root).expanduser()
    rows: dict[str, list[tuple[int, str, str, str]]] = {}
    bad: list[str] = []
    if path.is_dir() and not any(p.suffix.lower() in TEXT_FORMATS for p in path.iterdir() if p.is_file()):
        if group_column is not None:
            raise ConfigError(f"data.group_column={group_column}: needs a table file (.csv, .tsv, .jsonl); remove it")
        files = _class_folders(path)  # <class>/*.txt, or {train,val,test}/<class>/*.txt
        for split, folder in files.items():
            rows[split] = _read_txt_files(folder, bad, option)
    else:
        files = _split_files(path, root, option)
        for split, file in files.items():
            rows[split] = _read_rows(file, text_column, label_column, bad, group_column)
    first = "train" if "train" in rows else "all"
    class_names = sorted({label for _, _, label, _ in rows[first]})
    if len(class_names) < 2:
        raise ConfigError(
            f"{option}={root}: {len(class_names)} label(s) {class_names} in data.label_column={label_column} of "
            f"{files[first].name}; a classifier needs at least 2"
        )
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split, found in rows.items():
        for line, _, label, _ in found:
            if label not in index:
                bad.append(f"{files[split]}: row {line}: label {label!r} is not among train's labels")
        kept = [(text, index[label], group) for _, text, label, group in found if label in index]
        if not kept:
            raise ConfigError(f"{option}={root}: no usable row in {files[split].name}; check data.text_column")
        groups = np.array([g for _, _, g in kept]) if group_column is not None else None
        splits[split] = Split([t for t, _, _ in kept], np.array([y for _, y, _ in kept], dtype=np.int64), groups)
    if bad:
        _report(bad, bad_rows, root, listing_dir, option)
    return splits, class_names


def _split_files(path: Path, root: str, option: str) -> dict[str, Path]:
    if path.is_file():
        if path.suffix.lower() not in TEXT_FORMATS:
            raise ConfigError(f"{option}={root}: not a {', '.join(TEXT_FORMATS)} file; give one, or a folder of them")
        return {"all": path}
    if not path.is_dir():
        raise ConfigError(f"{option}={root}: no such file or folder; give a text file or a folder of train/val files")
    files = {}
    for split in SPLITS:
        found = sorted(p for p in path.iterdir() if p.stem == split and p.suffix.lower() in TEXT_FORMATS)
        if len(found) > 1:
            raise ConfigError(
                f"{option}={root}: {len(found)} {split} files ({found[0].name}, {found[1].name}); keep one"
            )
        if found:
            files[split] = found[0]
    if "train" not in files or "val" not in files:
        raise ConfigError(
            f"{option}={root}: needs train and val files (train.csv, val.csv; or .tsv, .jsonl), found "
            f"{', '.join(p.name for p in files.values()) or 'none'}; or give one file, split by data.val_fraction"
        )
    return files


def _class_folders(path: Path) -> dict[str, Path]:
    """The folders whose sub-folders are the classes: ``train``/``val``/``test`` where ``train`` exists (val may
    be missing: carved out of train), else ``root`` itself (one split, ``all``)."""
    if not (path / "train").is_dir():
        return {"all": path}
    return {split: path / split for split in SPLITS if (path / split).is_dir()}


def _read_txt_files(folder: Path, bad: list[str], option: str) -> list[tuple[int, str, str, str]]:
    """(number, text, label, no group) of each ``<class>/*.txt`` under ``folder``, the label its class folder's name."""
    files = sorted(p for p in folder.glob("*/*.txt") if not p.parent.name.startswith("."))
    if not files:
        raise ConfigError(
            f"{option}={folder}: no class folders of .txt files (<class>/*.txt) and no train/val "
            f"{', '.join(TEXT_FORMATS)} files; give one of those layouts"
        )
    rows = []
    for number, file in enumerate(files, start=1):
        text = file.read_bytes().decode("utf-8", "surrogateescape")
        problem = _problem(text, file.parent.name)
        if problem:
            bad.append(f"{file}: {problem}")
        else:
            rows.append((number, text.strip(), file.parent.name, ""))
    return rows


def _read_rows(
    file: Path, text_column: str, label_column: str, bad: list[str], group_column: str | None = None
) -> list[tuple[int, str, str, str]]:
    """(row number, text, label, group) of each usable row; what is wrong with the others goes to ``bad``."""
    # surrogateescape: a byte that is not UTF-8 marks its row as bad instead of stopping the read
    with open(file, encoding="utf-8", errors="surrogateescape", newline="") as f:
        if file.suffix.lower() == ".jsonl":
            records = []
            for text in f:
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except ValueError:
                    record = None
                records.append(record if isinstance(record, dict) else {"\0bad": "not a JSON object"})
            columns = set().union(*(r for r in records if "\0bad" not in r)) if records else set()
        else:
            reader = csv.DictReader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ",")
            records = list(reader)
            columns = set(reader.fieldnames or ())
    named = [("text_column", text_column), ("label_column", label_column), ("group_column", group_column)]
    for option, column in named:
        if column is not None and column not in columns:
            raise ConfigError(
                f"data.{option}={column}: {file.name} has no such column; choose one of {', '.join(sorted(columns))}"
            )
    rows = []
    for line, record in enumerate(records, start=1):
        text, label = record.get(text_column), record.get(label_column)
        problem = record.get("\0bad") or _problem(text, label)
        if problem:
            bad.append(f"{file}: row {line}: {problem}")
        else:
            group = str(record.get(group_column) or "") if group_column is not None else ""
            rows.append((line, str(text).strip(), str(label).strip(), group))
    return rows


def _problem(text, label) -> str | None:
    if text is None or not str(text).strip():
        return "empty text"
    if label is None or not str(label).strip():
        return "no label"
    if any("\udc80" <= c <= "\udcff" for c in str(text) + str(label)):
        return "bytes that are not UTF-8"
    return None


def _report(bad: list[str], policy: str, root: str, listing_dir: Path | None, option: str) -> None:
    if policy == "error":
        raise ConfigError(f"data.bad_rows=error: {bad[0]}; fix the row or set data.bad_rows=skip")
    where = ""
    if listing_dir is not None:
        from transferlab.run_folder import write_atomic

        write_atomic(Path(listing_dir) / BAD_ROWS, "".join(f"{line}\n" for line in bad))
        where = f", listed in {Path(listing_dir) / BAD_ROWS}"
    warnings.warn(
        f"data.bad_rows=skip: skipped {len(bad)} row(s) of {option}={root}{where} (set data.bad_rows=error to "
        "stop instead)",
        stacklevel=3,
    )


def scan_target(
    root: str, text_column: str, label_column: str, bad_rows: str
) -> tuple[dict[str, Split], list[str] | None]:
    """``data.target.root`` of texts: data.root's layouts (labelled: the labels only score), or unlabelled texts: a
    table without data.label_column, a ``.txt`` file (a text a line) or ``.txt`` files directly in a folder (one
    split ``all``, labels -1, and ``None`` for the class names)."""
    path = Path(root).expanduser()
    if path.is_file():
        unlabelled = path.suffix.lower() == ".txt" or label_column not in _columns(path)
    else:
        unlabelled = path.is_dir() and any(p.suffix.lower() == ".txt" for p in path.iterdir() if p.is_file())
    if not unlabelled:
        return scan_texts(root, text_column, label_column, bad_rows, None, "data.target.root")
    _, found = read_inputs(root, text_column, "data.target.root", "data.text_column")
    return {"all": Split(found, np.full(len(found), -1, dtype=np.int64))}, None


def _columns(file: Path) -> set[str]:
    """The column names of a table file (a JSON-lines file's first object's keys)."""
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        if file.suffix.lower() != ".jsonl":
            return set(next(csv.reader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ","), []))
        try:
            first = json.loads(next((line for line in f if line.strip()), "{}"))
        except ValueError:
            return set()  # read_inputs says which line is not JSON
        return set(first) if isinstance(first, dict) else set()


def read_inputs(
    path: str, text_column: str, option: str = "input", column_option: str = "text_column"
) -> tuple[list[str], list[str]]:
    """What predict labels (or a target of unlabelled texts), in the input's order, with a name for each: a table's
    rows (``text_column``), a ``.txt`` file's non-empty lines, or a folder's ``.txt`` files (sorted, a text each).
    Undecodable bytes are replaced, an empty text kept: every input gets its row. ``option``, ``column_option``:
    the options' names in messages."""
    source = Path(path).expanduser()
    option = f"{option}={path}"
    if source.is_dir():
        files = sorted(source.rglob("*.txt"))
        if not files:
            raise ConfigError(f"{option}: no .txt files in the folder; give a folder of .txt files or a text file")
        return [str(f) for f in files], [f.read_text(encoding="utf-8", errors="replace").strip() for f in files]
    if not source.is_file():
        raise ConfigError(f"{option}: no such file or folder; give a .csv, .tsv, .jsonl or .txt file, or a folder")
    suffix = source.suffix.lower()
    if suffix == ".txt":
        lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = [(str(i), line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]
        return [r for r, _ in kept], [t for _, t in kept]
    if suffix not in TEXT_FORMATS:
        raise ConfigError(f"{option}: not a .csv, .tsv, .jsonl or .txt file; give one, or a folder of .txt files")
    with open(source, encoding="utf-8", errors="replace", newline="") as f:
        if suffix == ".jsonl":
            try:
                records = [json.loads(line) for line in f if line.strip()]
            except ValueError as e:
                raise ConfigError(f"{option}: a line is not JSON ({e}); fix it, one JSON object a line") from None
        else:
            records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if not records or not all(isinstance(r, dict) and text_column in r for r in records):
        raise ConfigError(
            f"{column_option}={text_column}: not a column of every row of {source.name}; name its text column"
        )
    return [str(i) for i in range(1, len(records) + 1)], [str(r[text_column] or "").strip() for r in records]
