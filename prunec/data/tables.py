"""Parquet and CSV files, folders of data files and hub datasets, through Hugging Face `datasets`.

`datasets` converts the data once into Arrow files in its cache and memory-maps them, so
reading a large Parquet file costs neither its size in memory nor a pass per build. Rows are
read in two passes: a validating pass over every row that leaves image bytes in the Arrow
buffers (an image column only says which rows have an image), then the chosen rows only,
images included. Image features arrive as `{bytes, path}` and are decoded from memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.data.images import DataUnavailable
from prunec.data.layouts import PENDING
from prunec.errors import Diagnostic, SpecError
from prunec.plan.model import DataSource, HubDataset

#: File extensions read as tables (everything else is read as JSON Lines / a JSON array).
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
_BATCH = 1024


def is_table(source: DataSource) -> bool:
    """True when `source` is read through `datasets`: a hub dataset, a folder, Parquet, CSV."""
    if isinstance(source, HubDataset):
        return True
    return source.is_dir() or source.suffix.lower() in TABLE_SUFFIXES


@dataclass(frozen=True)
class Table:
    """A loaded dataset split.

    label: how records name it (the file, or the folder / hub id with its split).
    base: directory for relative image paths; None for hub datasets (no local files).
    """

    dataset: Any
    label: Path | str
    base: Path | None

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return int(self.dataset.num_rows)

    def light_rows(self) -> Iterator[dict[str, Any]]:
        """Every row as a dict, image columns replaced by PENDING markers (bytes not read)."""
        import pyarrow.compute as pc

        arrow = self.dataset.with_format("arrow")
        images = [n for n, t in zip(arrow.column_names, _types(arrow), strict=True) if _image(t)]
        for batch in arrow.iter(batch_size=_BATCH):
            rows = batch.drop_columns(images).to_pylist()
            for name in images:
                column = batch.column(name)
                markers: list[Any]
                if _is_list(column.type):
                    lengths = pc.list_value_length(column).to_pylist()
                    markers = [None if n is None else [PENDING] * n for n in lengths]
                else:
                    valid = pc.is_valid(column).to_pylist()
                    markers = [PENDING if ok else None for ok in valid]
                for row, marker in zip(rows, markers, strict=True):
                    row[name] = marker
            yield from rows

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The rows at `indices` (in that order), images included."""
        if not indices:
            return []
        rows: list[dict[str, Any]] = self.dataset.with_format("arrow")[list(indices)].to_pylist()
        return rows


def _types(arrow: Any) -> list[Any]:
    return [arrow.features.arrow_schema.field(n).type for n in arrow.column_names]


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _image(kind: Any) -> bool:
    """An Arrow type that holds images: binary, datasets' Image struct, or a list of those."""
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        names = {kind.field(i).name for i in range(kind.num_fields)}
        return "bytes" in names and names <= {"bytes", "path"}
    return _is_list(kind) and _image(kind.value_type)


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or logs from `datasets`: prunec reports its own progress, and turns
    the exception of a failed load into its own message (the log would repeat it)."""
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            ds_logging.enable_progress_bar()


@contextmanager
def _offline() -> Iterator[None]:
    """Hub offline mode for one call.

    `datasets` and `huggingface_hub` read HF_HUB_OFFLINE once, at import; when prunec finds
    the hub unreachable it switches both to offline mode for this load, so a cached dataset
    loads at once and an uncached one fails at once instead of after ~30 s of retries.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def split_label(source: DataSource, split: str, config: str | None) -> str:
    where = f"config {config}, split {split}" if config else f"split {split}"
    return f"{source} ({where})"


def load_table(source: DataSource, split: str | None, config: str | None) -> Table:
    """Load `source` as one dataset split (`split` defaults to "train").

    A Parquet/CSV/TSV file is the whole table (split and config do not apply); a folder is
    loaded as `datasets` loads a dataset repository (file names decide the splits, a README
    may declare configurations), and so is a hub dataset. SpecError (E336) when the data
    cannot be loaded, BuildError when the hub cannot be reached and nothing is cached.
    """
    split = split or "train"
    if not isinstance(source, HubDataset):
        source = source.resolve()
    if isinstance(source, HubDataset):
        return Table(_load_hub(source, split, config), split_label(source, split, config), None)
    if source.is_dir():
        label = split_label(source, split, config)
        return Table(_load(str(source), label, config, split=split), label, source)
    builder = TABLE_SUFFIXES[source.suffix.lower()]
    if not source.is_file():
        message = f"cannot read data file {source}: no such file"
        raise SpecError([Diagnostic("E320", message)])
    kwargs: dict[str, Any] = {"data_files": str(source), "split": "train"}
    if builder == "csv":
        kwargs.update(_csv_options(source))
    return Table(_load(builder, str(source), None, **kwargs), source, source.parent)


def _csv_options(path: Path) -> dict[str, Any]:
    """Read every CSV column as text (pandas would make `03` the number 3); an empty cell
    is a missing value. The header names the columns."""
    from datasets import Features, Value

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=sep), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpecError([Diagnostic("E320", f"cannot read data file {path}: {err}")]) from None
    if not header:
        raise SpecError([Diagnostic("E321", f"data file {path} has no header and no records")])
    features = Features({name: Value("string") for name in header})
    return {
        "sep": sep,
        "features": features,
        # Only an empty cell is missing: "NA" or "null" in a text column is text.
        "keep_default_na": False,
        "na_values": [""],
        "encoding": "utf-8-sig",
    }


def _load(path: str, label: str, config: str | None, hub: bool = False, **kwargs: Any) -> Any:
    from datasets import load_dataset

    try:
        with _quiet():
            return load_dataset(path, config, **kwargs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except ConnectionError as err:
        if hub:
            raise _Unreachable(_one_line(err)) from err
        message = f"cannot load {label}: {_one_line(err)}"
        raise SpecError([Diagnostic("E336", message)]) from None
    except Exception as err:  # datasets and pyarrow raise many kinds for bad input
        message = f"cannot load {label}: {_one_line(err)}"
        raise SpecError([Diagnostic("E336", message, help=_load_hint(kwargs))]) from None


class _Unreachable(Exception):
    """The hub did not answer (or offline mode is on and the data is not cached)."""


def _load_hint(kwargs: dict[str, Any]) -> str | None:
    data_file = kwargs.get("data_files")
    if not isinstance(data_file, str):
        return None
    try:
        with open(data_file, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    if head.lstrip().startswith((b"{", b"[")):
        return "the file holds JSON: give it the `.jsonl` or `.json` extension"
    return None


def _load_hub(source: HubDataset, split: str, config: str | None) -> Any:
    from prunec.arch.loading import hub_reachable

    label = split_label(source, split, config)
    try:
        kwargs = {"split": split, "revision": source.revision}
        if hub_reachable():
            return _load(source.repo, label, config, hub=True, **kwargs)
        with _offline():
            return _load(source.repo, label, config, hub=True, **kwargs)
    except _Unreachable as err:
        raise DataUnavailable(
            "E336",
            f"cannot load hub dataset `{source}`: the hub cannot be reached and the dataset is "
            f"not in the local cache ({err}); load it once while online, or point `data` at "
            "local files",
        ) from None
