"""The default IO manager: intermediate values between steps under one storage URL (a directory, ``s3://``,
``gs://`` or ``az://``), so that runs on different machines share them without a shared volume.

A pandas DataFrame is stored as Parquet (``<asset>.parquet``); anything else, and a frame Parquet cannot hold
as it is (columns of mixed types, lists, non-text column names), is pickled (``<asset>.pkl``) and the step's
log says why. A partitioned asset stores one object per partition (``<asset>/<partition>.parquet``): a
partition's write replaces that object only.

Nothing is ever half-written: in a directory a value is written to a temporary file beside its name and
renamed over it; an object store shows an object only once its upload is complete (one PUT, or a multipart
upload that is completed last), so the value is serialised whole before it is sent.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from upath import UPath

from salespred_assets import settings
from salespred_assets.errors import SalespredError
from salespred_assets.storage.location import Location, StorageError, parse, storage_options, unreachable

PARQUET, PICKLE = ".parquet", ".pkl"


class Undecodable(Exception):
    """The stored bytes were read but cannot be decoded: damaged, another format, a column the frame lacks, or
    a pickled class since renamed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
FORMATS = {PARQUET: "parquet", PICKLE: "pickle"}


@dataclass(frozen=True)
class Encoded:
    """How a value is stored: its suffix, why it is pickled ("" for Parquet), and what writes it to a file."""

    suffix: str
    why: str
    write: Callable[[BinaryIO], None]


def encode(obj: Any) -> Encoded:
    """``obj`` ready to be written: a DataFrame as Parquet when Parquet gives it back as it is, else pickled."""
    why = "not a DataFrame"
    if isinstance(obj, pd.DataFrame):
        why = _parquet_refusal(obj)
        if not why:
            try:
                table = _arrow_table(obj)
                if obj.attrs:  # as pandas' own to_parquet stores them, so read_parquet gives them back
                    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                           b"PANDAS_ATTRS": json.dumps(obj.attrs).encode()})
                nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
                widened = _widened_integers(obj, table)
                if widened:
                    why = (f"columns {widened[:5]} hold whole numbers and None, which Parquet gives back as "
                           "floats")
                elif not nested:
                    # zstd: smaller than the default snappy and, measured on a 1M-row frame, no slower to write
                    return Encoded(PARQUET, "", lambda file: pq.write_table(table, file, compression="zstd"))
                else:
                    why = f"columns {nested[:5]} hold lists or mappings, which Parquet gives back as arrays"
            except (pa.ArrowException, TypeError, ValueError) as exc:
                why = f"Parquet cannot hold it: {str(exc).splitlines()[0][:200]}"

    def write_pickle(file: BinaryIO) -> None:
        try:
            pickle.dump(obj, file, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise SalespredError(f"a {type(obj).__name__} cannot be stored between steps (neither Parquet nor "
                                 f"pickle: {type(exc).__name__}); return a DataFrame or a picklable value") from exc

    return Encoded(PICKLE, why, write_pickle)


def decode(file: BinaryIO | str, suffix: str, columns: Sequence[str] | None = None) -> Any:
    """The value stored in ``file`` (a file object, or a local path that Arrow maps into memory); of a frame,
    only ``columns`` when given (Parquet reads no other column)."""
    if suffix == PARQUET:
        return pd.read_parquet(file, engine="pyarrow", columns=list(columns) if columns is not None else None)
    if isinstance(file, str):
        with open(file, "rb") as opened:
            value = pickle.load(opened)  # our own storage, written by our own steps
    else:
        value = pickle.load(file)
    return value[list(columns)] if columns is not None and isinstance(value, pd.DataFrame) else value


def _arrow_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as an Arrow table. Time-zone-aware columns go in as UTC wall times and get their zone back as
    an Arrow type (a cast of the type only): pyarrow converts them through ``Series.values``, which pandas 3.1
    deprecates for them."""
    zoned = {c: frame[c].dtype for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)}
    if not zoned:
        return pa.Table.from_pandas(frame)
    plain = frame.copy(deep=False)
    for column in zoned:
        plain[column] = frame[column].dt.tz_convert(None)
    table = pa.Table.from_pandas(plain)
    for column, dtype in zoned.items():
        index = table.schema.get_field_index(column)
        kind = pa.timestamp(dtype.unit, tz=str(dtype.tz))
        table = table.set_column(index, pa.field(column, kind), table.column(index).cast(kind))
    return table


def _widened_integers(frame: pd.DataFrame, table: pa.Table) -> list[str]:
    """Object columns of whole numbers with a None among them: Arrow stores them as integers with nulls, and
    pandas reads those back as float64, so 3 would come back as 3.0 (a nullable Int64 column is kept as it is)."""
    out = []
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        stored = table.column(str(column))
        if pa.types.is_integer(stored.type) and stored.null_count:
            out.append(str(column))
    return out


def _parquet_refusal(frame: pd.DataFrame) -> str:
    """Why Parquet would not give ``frame`` back as it is ("" when it would)."""
    if not all(isinstance(c, str) for c in frame.columns):
        return "its column names are not all text"
    if frame.columns.has_duplicates:
        return "its column names repeat"
    return ""


class FrameStore(dg.UPathIOManager):
    """Values under ``location``; the suffix says the format (see the module's docstring)."""

    extension = None  # chosen per value: .parquet or .pkl

    def __init__(self, location: Location, endpoint_url: str | None = None) -> None:
        self.location = location
        self.endpoint_url = endpoint_url
        super().__init__(base_path=UPath(location.url, **storage_options(location, endpoint_url)))
        self._written: tuple[str, str, int] | None = None

    # ---- where -----------------------------------------------------------------------------------------
    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        # A partition key is a name, never a way out of the asset's folder: a leading '/' would replace the base,
        # and a directory resolves '..' (escaped as Dagster's own filesystem IO manager does).
        key = "%2F" + partition[1:] if partition.startswith("/") else partition
        return base_path / "/".join("%2E%2E" if part == ".." else part for part in key.split("/"))

    def check(self) -> None:
        """Fail now, saying what to fix, if the location cannot be reached (or, for a directory, created)."""
        try:
            if self.location.local:
                self.location.path.mkdir(parents=True, exist_ok=True)
            else:
                self.fs.info(self.location.bucket)
        except Exception as exc:  # each driver raises its own kinds; the message names it
            raise unreachable(self.location, exc, self.endpoint_url) from exc

    # ---- reading and writing bytes -----------------------------------------------------------------------
    def _write(self, path: UPath, encoded: Encoded) -> int:
        """Write the value whole, or nothing; its size in bytes."""
        if self.location.local:
            final = Path(path.path)
            final.parent.mkdir(parents=True, exist_ok=True)
            temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
            try:
                with temporary.open("wb") as file:
                    encoded.write(file)
                os.replace(temporary, final)  # atomic on one filesystem: readers see the old value or the new
            finally:
                temporary.unlink(missing_ok=True)
            return final.stat().st_size
        buffer = io.BytesIO()
        encoded.write(buffer)  # serialised whole first: a failure uploads nothing
        data = buffer.getvalue()  # bytes: what botocore takes as a body
        del buffer
        self.fs.pipe_file(path.path, data)  # the object appears only once the upload is complete
        return len(data)

    def _load(self, path: UPath, suffix: str, columns: Sequence[str] | None = None) -> Any:
        """The stored value; :class:`Undecodable` when its bytes were read but are not what its name says."""
        source: BinaryIO | str
        if self.location.local:
            with open(path.path, "rb"):  # missing or unreadable: the store's error, not the value's
                source = path.path
        else:
            source = io.BytesIO(self.fs.cat_file(path.path))
        try:
            return decode(source, suffix, columns)
        except Exception as exc:
            raise Undecodable(exc) from exc

    def _exists(self, path: UPath) -> bool:
        return Path(path.path).exists() if self.location.local else bool(self.fs.exists(path.path))

    def _remove(self, path: UPath) -> None:
        if self.location.local:
            Path(path.path).unlink(missing_ok=True)
        elif self.fs.exists(path.path):
            self.fs.rm_file(path.path)

    @staticmethod
    def _with(path: UPath, suffix: str) -> UPath:
        return path.with_name(path.name + suffix)

    # ---- UPathIOManager ----------------------------------------------------------------------------------
    def make_directory(self, path: UPath) -> None:
        return None  # _write makes a directory's folders; an object store has none

    def path_exists(self, path: UPath) -> bool:
        return any(self._exists(self._with(path, suffix)) for suffix in FORMATS)

    def unlink(self, path: UPath) -> None:
        for suffix in FORMATS:
            self._remove(self._with(path, suffix))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        encoded = encode(obj)
        target = self._with(path, encoded.suffix)
        try:
            if encoded.suffix == PICKLE:
                # A Parquet file left by an earlier write would be read first: remove it before writing.
                self._remove(self._with(path, PARQUET))
            size = self._write(target, encoded)
        except SalespredError:
            raise  # the value itself cannot be stored; its message says so
        except Exception as exc:  # the message names the object, masked, and what to check
            raise self._failed("write", target, exc) from exc
        if encoded.why and isinstance(obj, pd.DataFrame):
            context.log.warning(f"{target}: stored as a pickle, not Parquet, because {encoded.why}")
        self._written = (str(target), FORMATS[encoded.suffix], size)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        # An input may ask for some columns of a frame (AssetIn(metadata={"columns": [...]})): a check that
        # reads two columns of a million rows then reads only those.
        columns = (context.definition_metadata or {}).get("columns")
        for suffix in FORMATS:
            target = self._with(path, suffix)
            try:
                return self._load(target, suffix, columns)
            except FileNotFoundError:
                continue
            except Undecodable as exc:  # the bytes came back; they are not what the name says
                raise self._unreadable(target, suffix, columns, exc.cause) from exc.cause
            except Exception as exc:
                raise self._failed("read", target, exc) from exc
        # FileNotFoundError, so that an input with allow_missing_partitions skips it.
        raise FileNotFoundError(f"{self.location.masked}: nothing stored for {path.path} (.parquet or .pkl): "
                                "materialise the upstream asset first")

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, dg.MetadataValue]:
        if self._written is None:
            return {}
        path, fmt, size = self._written
        self._written = None
        return {"path": dg.MetadataValue.path(path), "storage_format": dg.MetadataValue.text(fmt),
                "stored_bytes": dg.MetadataValue.int(size)}

    def _unreadable(self, path: UPath, suffix: str, columns: Sequence[str] | None,
                    exc: BaseException) -> StorageError:
        detail = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        lacking = self._lacking(path, suffix, columns) if columns else []
        if lacking:
            fix = (f"the stored frame has no column {', '.join(map(repr, lacking))} that the input asks for: "
                   "correct the input's columns, or materialise the upstream asset again with them")
        else:
            fix = ("it is damaged or was written by something else: materialise the upstream asset again to "
                   "replace it")
        return StorageError(f"intermediate storage {self.location.masked} ({self.location.origin}): "
                            f"{settings.mask_url(str(path))} cannot be read as {FORMATS[suffix]}: "
                            f"{type(exc).__name__}: {detail} ({fix})")

    def _lacking(self, path: UPath, suffix: str, columns: Sequence[str]) -> list[str]:
        """The asked-for columns the stored frame lacks ([] when that cannot be told)."""
        try:
            value = self._load(path, suffix) if suffix == PICKLE else None
            if value is not None:
                names = list(value.columns) if isinstance(value, pd.DataFrame) else []
            elif self.location.local:
                names = pq.read_schema(path.path).names
            else:
                with self.fs.open(path.path, "rb") as remote:  # the footer only, not the whole object again
                    names = pq.read_schema(remote).names
        except Exception:  # noqa: BLE001 - only a better message is lost; the caller reports the first error
            return []
        return [c for c in columns if c not in names] if names else []

    def _failed(self, action: str, path: UPath, exc: BaseException) -> StorageError:
        return unreachable(self.location, exc, self.endpoint_url, doing=f"{action} {settings.mask_url(str(path))}")


class FrameIOManager(dg.ConfigurableIOManagerFactory):
    """Intermediate values between steps under a storage URL: a directory, ``file://``, ``s3://``, ``gs://`` or
    ``az://``. DataFrames as Parquet, other values pickled. An S3-compatible endpoint and every credential come
    from the run's environment (SALESPRED_STORAGE_ENDPOINT_URL or AWS_ENDPOINT_URL, AWS_*, ...)."""

    url: str = Field(description="a directory or a URL: file://, s3://bucket/prefix, gs://bucket/prefix, "
                                 "az://container/prefix")
    origin: str = Field(default="the storage URL", description="the setting the URL comes from, for messages")

    def create_io_manager(self, context: dg.InitResourceContext) -> FrameStore:
        store = FrameStore(parse(self.url, self.origin), settings.get(settings.ENV_STORAGE_ENDPOINT))
        store.check()
        return store
