"""The storage URL of intermediate values, checked before anything is written (no Dagster here).

A location is a directory (a plain path or ``file://``) or an object store prefix: ``s3://bucket/prefix``,
``gs://bucket/prefix`` or ``az://container/prefix``. Credentials never appear in it: each object store's
driver reads its own from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) or
from the machine's identity (an IAM role, workload identity).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from salespred_assets.errors import SalespredError
from salespred_assets.settings import mask_url

# scheme -> (the module fsspec imports for it, the pip package that provides it)
DRIVERS: dict[str, tuple[str, str] | None] = {
    "file": None,
    "s3": ("s3fs", "s3fs"),
    "gs": ("gcsfs", "gcsfs"),
    "gcs": ("gcsfs", "gcsfs"),
    "az": ("adlfs", "adlfs"),
    "abfs": ("adlfs", "adlfs"),
    "abfss": ("adlfs", "adlfs"),
}
EXTRA = {"gcsfs": "cloud", "adlfs": "cloud"}  # drivers left out of the default install


class StorageError(SalespredError):
    """The storage URL is unusable: the message names it (masked) and what to change."""


@dataclass(frozen=True)
class Location:
    """A checked storage location: ``url`` is absolute (``file:///...`` for a directory)."""

    url: str
    scheme: str
    origin: str  # the variable (or default) it came from, for messages

    @property
    def local(self) -> bool:
        return self.scheme == "file"

    @property
    def path(self) -> Path:
        """The directory of a ``file://`` location."""
        return Path(unquote(urlsplit(self.url).path))

    @property
    def bucket(self) -> str:
        """The bucket (S3, GCS) or container (Azure: ``az://container``, ``abfs://container@account...``)."""
        return urlsplit(self.url).netloc.partition("@")[0]

    @property
    def masked(self) -> str:
        return mask_url(self.url)


def parse(raw: str, origin: str = "the storage URL") -> Location:
    """``raw`` as a location: a plain path (relative to the working directory) or a URL with a supported scheme.
    Raises :class:`StorageError` naming what to fix: an unknown scheme, a URL without a bucket, a driver that
    is not installed."""
    text = raw.strip()
    if not text:
        raise StorageError(f"{origin} is empty: set a directory or a URL (file://, s3://, gs://, az://)")
    if "://" not in text:
        return Location(Path(text).expanduser().resolve().as_uri(), "file", origin)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DRIVERS:
        raise StorageError(f"{origin} {mask_url(text)}: the scheme {scheme}:// is not supported; use a directory, "
                           f"file://, s3://, gs:// or az://")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{origin} {mask_url(text)}: a file:// URL takes an absolute path, "
                               f"file:///dir (three slashes), not a host {parts.netloc!r}")
        return Location(Path(unquote(parts.path) or "/").resolve().as_uri(), "file", origin)
    if parts.password is not None or (scheme not in ("az", "abfs", "abfss") and "@" in parts.netloc):
        raise StorageError(f"{origin} {mask_url(text)}: credentials do not belong in the URL; the driver reads "
                           "them from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) or the machine's identity")
    if not parts.netloc or parts.netloc.endswith("@"):
        raise StorageError(f"{origin} {mask_url(text)}: name a bucket, as in {scheme}://bucket/prefix")
    driver = DRIVERS[scheme]
    assert driver is not None
    module, package = driver
    if importlib.util.find_spec(module) is None:
        how = f"pip install {package}" + (f" (or salespred[{EXTRA[package]}])" if package in EXTRA else "")
        raise StorageError(f"{origin} {mask_url(text)}: the {scheme}:// driver is not installed: {how}")
    return Location(text.rstrip("/"), scheme, origin)


def choose(url: str | None, directory: str | None, default: Path, *, url_name: str, directory_name: str) -> Location:
    """The location the settings name: the URL when set (it wins), else the directory, else ``default``."""
    if url:
        return parse(url, url_name)
    if directory:
        if "://" in directory:
            raise StorageError(f"{directory_name} takes a directory, not a URL ({mask_url(directory)}): "
                               f"set {url_name} for an object store")
        return parse(directory, directory_name)
    return parse(str(default), f"the default storage directory ({directory_name} unset)")


def storage_options(location: Location, endpoint_url: str | None) -> dict[str, Any]:
    """fsspec options for ``location``: only an S3-compatible endpoint (MinIO, a test server); credentials are
    the driver's to find."""
    if location.scheme == "s3" and endpoint_url:
        return {"endpoint_url": endpoint_url}
    return {}


def unreachable(location: Location, cause: BaseException, endpoint_url: str | None = None,
                doing: str = "") -> StorageError:
    """An error for a location that could not be reached (or an object in it, ``doing``: "write <path>"),
    saying what to check."""
    detail = (str(cause).splitlines() or [""])[0][:200] or type(cause).__name__
    where = f" through {mask_url(endpoint_url)}" if endpoint_url else ""
    if location.local:
        fix = "check that the directory can be created and written by this user"
    elif isinstance(cause, FileNotFoundError):
        fix = f"make the bucket {location.bucket!r} (it does not exist) or correct {location.origin}"
    elif isinstance(cause, PermissionError):
        fix = "check the credentials in the environment and that they may read and write the bucket"
    else:
        fix = ("check the network, the endpoint (SALESPRED_STORAGE_ENDPOINT_URL for an S3-compatible server) and "
               "the credentials in the environment")
    what = f": could not {doing}" if doing else " is unreachable"
    return StorageError(f"intermediate storage {location.masked} ({location.origin}){where}{what}: "
                        f"{type(cause).__name__}: {detail} ({fix})")
