"""Files in object storage: `input.path`, the `suppress` lists, `output.results` (and every file named after it),
`--summary-json` and `validate --output` may be `s3://`, `gs://` or `az://` URLs (a `file://` URL is just a local
path). A library caller (not the CLI) wraps its calls in `synced()` so that what they write is uploaded.

The tool works on local files as it always has; this module maps each object URL to a place in a *mirror* folder
of this process (`TMP/sentdm-batch-objects-PID/SCHEME/BUCKET/KEY`) and moves the bytes:

- an object read (the input, the shard results `merge` reads) is streamed to its mirror file in blocks before it is
  read, so memory stays flat whatever its size, and the copy is made read-only;
- a file a command writes into the mirror (written there whole, by a rename, as every output is) is uploaded when
  the command ends - one PUT, or a multipart upload that the store completes only at its end, so the object
  appears whole or not at all: a killed run leaves the previous object or none, never a truncated one. A shard's
  manifest goes up after its results, so a manifest never announces results that are not there;
- the mirror is deleted when the command ends.

Because an object has one mirror path, the checks of pipeline/outputs.py (an output must not be an input; an
existing file is replaced only when the tool wrote it) work on URLs unchanged; `existing_copy` lets them look at an
object that already exists.

The library is obstore (the Rust `object_store` crate that polars itself uses for cloud files): one wheel with no
dependencies that speaks S3, Google Cloud Storage and Azure, streams downloads in chunks, does multipart uploads,
retries, and reads credentials and endpoints from the environment the way each cloud's tools do (AWS_*,
GOOGLE_*, AZURE_STORAGE_*). fsspec with s3fs/gcsfs/adlfs would need three packages and botocore for the same.
polars' own cloud reading would be a second reading path beside pipeline/source.py's block reader (which cuts a
local file into blocks of whole records, with line numbers for errors), and writing through it would not give the
whole-or-nothing object by itself; a streamed local copy keeps the one reading path, and its memory is measured flat
(README, "Files in object storage").
Credentials are never part of a URL the tool accepts, and never printed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pipeline.errors import InputError, OutputError

if TYPE_CHECKING:
    from obstore.store import ObjectStore

OBJECT_SCHEMES = ("s3", "gs", "az")
# a shard's manifest says its results are complete: it is uploaded after everything else
_LAST = (".manifest.json",)
_BLOCK_BYTES = 8 << 20
# environment variables whose values must never appear in a message, whatever a library put in its error text
_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
_CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role), AWS_REGION, and AWS_ENDPOINT_URL for an "
    "S3-compatible server",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN)",
}


@dataclass(frozen=True)
class ObjectUrl:
    """`s3://bucket/key`: a scheme, a bucket (a container on Azure) and a key."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> ObjectUrl:
        """Raise ValueError, saying what is wrong, for anything but `SCHEME://BUCKET/KEY`."""
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in OBJECT_SCHEMES:
            raise ValueError(f"{text!r} is not an s3://, gs:// or az:// URL")
        if "@" in parts.netloc:
            raise ValueError(
                "the URL holds credentials; they belong in the environment (" + _CREDENTIALS_HINT[scheme] + ")"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{mask(text)}: a ? or # has no meaning in an object URL")
        key = unquote(parts.path).lstrip("/")
        if not parts.netloc or not key or key.endswith("/"):
            raise ValueError(f"{text!r} must name a bucket and an object: {scheme}://BUCKET/FOLDER/FILE")
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"{text!r}: an object key has no empty, `.` or `..` parts")
        return cls(scheme, parts.netloc, key)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def is_object_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def local_path(text: str, base: Path | None = None) -> Path:
    """A location as written in the spec or on the command line, as the local path the tool works with: a path
    (relative to `base`, or to the current folder), the path of a `file://` URL, or an object's mirror path.
    Raises ValueError for a malformed URL."""
    if is_object_url(text):
        return mirror_path(ObjectUrl.parse(text))
    if text[:7].lower() == "file://":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: a file:// URL names a path on this machine: file:///FOLDER/FILE")
        return Path(unquote(parts.path)).resolve()
    if "://" in text:
        raise ValueError(f"{mask(text)}: only s3://, gs://, az:// and file:// URLs (or a path) are supported")
    return ((base or Path.cwd()) / text).resolve()


def mirror_root() -> Path:
    """This process's mirror folder (not created here)."""
    return Path(tempfile.gettempdir()).resolve() / f"sentdm-batch-objects-{os.getpid()}"


def mirror_path(url: ObjectUrl) -> Path:
    return mirror_root().joinpath(url.scheme, url.bucket, *url.key.split("/"))


def url_of(path: Path) -> ObjectUrl | None:
    """The object a mirror path stands for, or None for an ordinary local path."""
    try:
        parts = path.relative_to(mirror_root()).parts
    except ValueError:
        return None
    if len(parts) < 3 or parts[0] not in OBJECT_SCHEMES:
        return None
    return ObjectUrl(parts[0], parts[1], "/".join(parts[2:]))


def display(path: Path) -> str:
    """How a location is shown: the URL for an object, the path otherwise."""
    url = url_of(path)
    return str(url) if url is not None else str(path)


def show(text: str) -> str:
    """`text` with every mirror path written as its URL, and no secret from the environment: what a message about
    objects shows."""
    root = str(mirror_root())
    for scheme in OBJECT_SCHEMES:
        text = text.replace(f"{root}{os.sep}{scheme}{os.sep}", f"{scheme}://")
    return _without_secrets(text)


def mask(text: str) -> str:
    """A URL without any user or password in it."""
    parts = urlsplit(text)
    if "@" not in parts.netloc:
        return text
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _without_secrets(text: str) -> str:
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def open_store(url: ObjectUrl) -> ObjectStore:
    """The store of `url`'s bucket, configured from the environment as the cloud's own tools are."""
    # imported here: only a campaign with an object URL pays for loading the library
    from obstore.store import AzureStore, GCSStore, S3Store

    options: dict[str, Any] = {}
    if url.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        # an S3-compatible server named by an http:// endpoint (MinIO, a test server) is what the user asked for
        if endpoint.lower().startswith("http://"):
            options["allow_http"] = True
        return S3Store(url.bucket, client_options=options or None)  # type: ignore[arg-type]
    if url.scheme == "gs":
        return GCSStore(url.bucket)
    endpoint = os.environ.get("AZURE_STORAGE_ENDPOINT") or os.environ.get("AZURE_ENDPOINT") or ""
    if endpoint.lower().startswith("http://"):  # Azurite, the local emulator
        options["allow_http"] = True
    return AzureStore(url.bucket, client_options=options or None)  # type: ignore[arg-type]


def describe_failure(url: ObjectUrl, exc: Exception) -> str:
    """What went wrong with `url`, and what to do, from an error of the storage library."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    detail = _first_line(exc)
    metadata = urlsplit(os.environ.get("AWS_METADATA_ENDPOINT") or "http://169.254.169.254").netloc
    if url.scheme == "s3" and not os.environ.get("AWS_ACCESS_KEY_ID") and metadata in str(exc):
        # no key in the environment, so the library asked the instance's metadata service for a role, and got none
        return (
            f"{url}: no credentials: AWS_ACCESS_KEY_ID is not set, and no instance or pod role answered. "
            f"Hint: {_CREDENTIALS_HINT['s3']}"
        )
    what = "container" if url.scheme == "az" else "bucket"
    if _MISSING_BUCKET.search(str(exc)):
        return f"{url}: the {what} {url.bucket!r} does not exist. Hint: create it, or fix the {what}'s name"
    if isinstance(exc, FileNotFoundError):
        return f"{url}: not found. Hint: check the {what} and the object's name, and that the {what} exists"
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError) or _looks_like_refusal(detail):
        return f"{url}: access refused ({detail}). Hint: {_CREDENTIALS_HINT[url.scheme]}, with access to this {what}"
    return (
        f"{url}: cannot reach the storage ({detail}). Hint: check the network and the endpoint; "
        f"{_CREDENTIALS_HINT[url.scheme]}"
    )


_MISSING_BUCKET = re.compile("NoSuchBucket|ContainerNotFound")
_REFUSALS = ("403", "401", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")


def _looks_like_refusal(detail: str) -> bool:
    return any(word in detail for word in _REFUSALS)


def _first_line(exc: Exception) -> str:
    text = str(exc).split("\n\nDebug source", 1)[0]
    # the library's text names the request; keep the reason (the status and the server's code), not the XML body
    line = " ".join(text.split()).split("<?xml", 1)[0].strip()
    # a request's query may be a signature or a SAS token: never shown
    line = _QUERY.sub(r"\1?***", line)
    code = _xml_code(str(exc))
    if code and code not in line:
        line = f"{line} {code}"
    return _without_secrets(line[:300])


_QUERY = re.compile(r"(\bhttps?://[^\s?]+)\?\S*")


def _xml_code(text: str) -> str:
    start = text.find("<Code>")
    end = text.find("</Code>", start)
    return text[start + 6 : end] if start >= 0 and end > start else ""


def _storage_errors() -> tuple[type[Exception], ...]:
    from obstore.exceptions import BaseError

    return (BaseError, OSError)


def fetch(path: Path, *, label: str = "input.path", missing_ok: bool = False) -> None:
    """If `path` is an object's mirror path, stream the object there (once per command), in blocks. `missing_ok`:
    an object that is not there (in a bucket that is) leaves no file, for the caller to say what that means."""
    url = url_of(path)
    if url is None or path.exists():
        return
    import obstore

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.download")
    try:
        result = obstore.get(open_store(url), url.key)
        with open(temp, "wb") as file:
            for block in result.stream(min_chunk_size=_BLOCK_BYTES):
                file.write(block)
        temp.chmod(stat.S_IRUSR | stat.S_IRGRP)  # a copy, not an output: never uploaded back
        os.replace(temp, path)
    except _storage_errors() as exc:
        temp.unlink(missing_ok=True)
        if missing_ok and isinstance(exc, FileNotFoundError) and not _MISSING_BUCKET.search(str(exc)):
            return
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno is not None:
            raise InputError(f"{label}: {url}: cannot copy it to {temp.parent}: {exc.strerror}") from None
        raise InputError(f"{label}: {describe_failure(url, exc)}") from None


def fetch_matching(folder: Path, pattern: str, *, label: str) -> None:
    """If `folder` is a mirror folder, fetch every object directly in it whose name matches the glob `pattern`."""
    url = url_of(folder / "x")
    if url is None:
        return
    import obstore

    prefix = url.key.removesuffix("x")
    try:
        for chunk in obstore.list(open_store(url), prefix=prefix or None):
            for meta in chunk:
                name = meta["path"].removeprefix(prefix)
                if "/" not in name and fnmatch.fnmatchcase(name, pattern):
                    fetch(folder / name, label=label)
    except _storage_errors() as exc:
        raise InputError(f"{label}: {describe_failure(url, exc).replace('/x:', '/:', 1)}") from None


@contextlib.contextmanager
def existing_copy(
    path: Path, *, label: str, part: Literal["whole", "head", "parquet-footer"], head_bytes: int
) -> Iterator[tuple[Path, int] | None]:
    """For an output: the existing file at `path` and its size, or None if there is none. For an object, a local
    copy of what is needed to tell what it is - all of it, its first `head_bytes`, or a Parquet file's footer (its
    schema) with the magic bytes around it - after checking that its bucket can be reached: a results object that
    cannot be written is found before anything is sent."""
    url = url_of(path)
    if url is None:
        yield (path, path.stat().st_size) if path.exists() else None
        return
    import obstore

    store = open_store(url)
    with tempfile.TemporaryDirectory(prefix="sentdm-batch-peek-") as folder:
        copy = Path(folder) / path.name
        try:
            try:
                meta = obstore.head(store, url.key)
            except FileNotFoundError:
                # a missing object, or a missing bucket: only a listing tells them apart
                next(iter(obstore.list(store, prefix=url.key, chunk_size=1)), None)
                meta = None
            if meta is not None:
                size = int(meta["size"])
                if part == "whole" or size <= head_bytes:
                    data = bytes(obstore.get(store, url.key).bytes())
                else:
                    data = _parquet_footer(store, url.key, size) if part == "parquet-footer" else b""
                    data = data or bytes(obstore.get_range(store, url.key, start=0, end=head_bytes))
                copy.write_bytes(data)
        except _storage_errors() as exc:
            raise OutputError(f"{label}: {describe_failure(url, exc)}") from None
        yield None if meta is None else (copy, size)


def _parquet_footer(store: ObjectStore, key: str, size: int) -> bytes:
    """`PAR1`, the footer and its length, `PAR1`: a file Parquet readers take the schema of, without the data; empty
    when the object does not end like a Parquet file."""
    import obstore

    tail = bytes(obstore.get_range(store, key, start=size - 8, end=size))
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 12 > size:
        return b""
    return b"PAR1" + bytes(obstore.get_range(store, key, start=size - 8 - length, end=size))


@contextlib.contextmanager
def synced() -> Iterator[None]:
    """Around one command: a fresh mirror at the start; at the end, every file the command wrote into it uploaded
    to its object, then the mirror deleted. Uploads happen even when the command failed after writing a file:
    whatever is in the mirror was written whole."""
    root = mirror_root()
    _remove_stale_mirrors(root.parent)
    shutil.rmtree(root, ignore_errors=True)  # a folder left by a killed process that had this PID
    failed = True
    try:
        yield
        failed = False
    finally:
        try:
            if root.exists():
                _upload_written(root, quiet=failed)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _remove_stale_mirrors(folder: Path) -> None:
    """Delete the mirrors of processes that no longer run (killed before they could): they hold copies of inputs."""
    for stale in folder.glob("sentdm-batch-objects-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    if os.name == "nt":  # signal 0 would end the process there; leave the folder to the system's temp cleaning
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _upload_written(root: Path, *, quiet: bool) -> None:
    written = [
        path
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".") and path.stat().st_mode & stat.S_IWUSR
    ]
    written.sort(key=lambda path: (path.name.endswith(_LAST), str(path)))
    for path in written:
        url = url_of(path)
        if url is None:
            continue
        try:
            upload(path, url)
        except OutputError:
            if not quiet:  # the command's own error is the one to report
                raise


def upload(path: Path, url: ObjectUrl) -> None:
    """Put the file at `path` as the object `url`: it appears whole when the upload completes, or not at all."""
    import obstore

    try:
        obstore.put(open_store(url), url.key, path, chunk_size=_BLOCK_BYTES)
    except _storage_errors() as exc:
        raise OutputError(
            f"{describe_failure(url, exc)}. The object was not written (any earlier version is unchanged); the "
            "campaign state has every outcome, so running the same command again writes it without sending again",
            after_sending=True,
        ) from None
