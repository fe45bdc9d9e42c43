"""
Moving generated media into object storage: streamed, checked, never half-written at its final path.

Each file is downloaded in chunks (memory stays bounded whatever its size) to a temporary name next
to its destination while its sha256 and size are computed, and moved to the final name only when
complete. Transient failures and 429s are retried by the protocol's one
:class:`~airflow_provider_cerebraform.core.RetryPolicy` (backoff with jitter, ``Retry-After``, the
same limits as API calls); a URL that has expired (403/404/410) is replaced once by fetching the
result again (``api-open-questions.md`` #14). Media URLs get no API key: they may point
anywhere, and the key is only ever sent to the API's own host.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from airflow_provider_cerebraform.core import HttpResponse
from airflow_provider_cerebraform.exceptions import CerebraformMediaError, CerebraformValidationError

if TYPE_CHECKING:
    from collections.abc import Callable
    from logging import Logger

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cerebraform.core import RetryPolicy
    from airflow_provider_cerebraform.models import MediaItem, TaskResult

CHUNK_SIZE = 1024 * 1024
UPLOAD_BLOCK_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_FILE_NAME = "{request_id}_{index}{ext}"
EXPIRED_STATUSES = (403, 404, 410)
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ManifestEntry:
    """One stored file, as the result operator returns it and writes it to the manifest."""

    request_id: str
    kind: str
    index: int
    source_url: str
    path: str
    bytes: int
    sha256: str
    content_type: str | None
    #: The stored file this one was copied from when the generation ledger already had it (nothing
    #: was paid); None when it was downloaded from the service.
    copied_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Expired(Exception):
    pass


class _Transient(Exception):
    pass


class _RateLimited(Exception):
    def __init__(self, response: HttpResponse) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def as_storage_path(output: Any, param: str = "output") -> ObjectStoragePath:
    """
    An ``ObjectStoragePath`` from one, from a URL (``s3://conn@bucket/prefix``) or from a local path.

    :param output: the location.
    :param param: the parameter's name, for the error message.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(output, ObjectStoragePath):
        return output
    if not isinstance(output, str) or not output.strip():
        raise CerebraformValidationError(
            f"Invalid {param}={output!r}: expected an ObjectStoragePath, a URL such as "
            "'s3://aws_default@bucket/prefix' or 'file:///data/media', or an absolute local path."
        )
    text = output.strip()
    if "://" not in text:
        if not text.startswith("/"):
            raise CerebraformValidationError(
                f"Invalid {param}={output!r}: a local path must be absolute (or use a file:// URL)."
            )
        text = "file://" + text
    return ObjectStoragePath(text)


def validate_destination(output: Any, file_name: Any) -> None:
    """
    Check ``output`` and the ``file_name`` pattern without touching storage, so that a bad value fails
    at parse time (literals) or before anything is requested or paid for (rendered templates).
    """
    if output is not None and isinstance(output, str):
        if not output.strip():
            as_storage_path(output)  # raises the message that lists what is accepted
        elif "://" not in output and not output.strip().startswith("/"):
            raise CerebraformValidationError(
                f"Invalid output={output!r}: a local path must be absolute (or use a file:// URL)."
            )
    elif output is not None:
        as_storage_path(output)  # an ObjectStoragePath passes; anything else raises
    if not isinstance(file_name, str):
        raise CerebraformValidationError(
            f"Invalid file_name={file_name!r}: expected a pattern such as {DEFAULT_FILE_NAME!r}."
        )
    file_name_for(file_name, request_id="request_id", kind="image", index=0, ext=".png")


def validate_location(param: str, value: Any) -> None:
    """
    Parse-time check of an optional location parameter such as ``ledger``: None, ``False``, ``""``, a
    template or an object (an ``ObjectStoragePath``, an ``XComArg``) pass; a literal string must be
    a URL or an absolute local path.
    """
    if value is None or value is False:
        return
    if isinstance(value, str):
        if value.strip() and "{{" not in value and "{%" not in value:
            as_storage_path(value, param=param)
    elif isinstance(value, (bool, int, float)):
        raise CerebraformValidationError(
            f"Invalid {param}={value!r}: expected an ObjectStoragePath, a URL or an absolute local path."
        )


def safe_component(text: str, fallback: str = "media") -> str:
    """A file-name part built from server-supplied text: no separators, no leading dots, bounded."""
    cleaned = _UNSAFE.sub("_", text).strip("._")[:100]
    return cleaned or fallback


def extension_for(content_type: str | None, url: str) -> str:
    if content_type:
        base = content_type.split(";")[0].strip().lower()
        if base in _EXTENSIONS:
            return _EXTENSIONS[base]
        guessed = mimetypes.guess_extension(base)
        if guessed:
            return guessed
    suffix = urlsplit(url).path.rsplit(".", 1)
    if len(suffix) == 2 and re.fullmatch(r"[A-Za-z0-9]{1,5}", suffix[1]):
        return "." + suffix[1].lower()
    return ".bin"


def file_name_for(pattern: str, *, request_id: str, kind: str, index: int, ext: str) -> str:
    """Fill the user's file-name pattern with sanitised values; the result stays inside the output."""
    try:
        name = pattern.format(request_id=safe_component(request_id), kind=kind, index=index, ext=ext)
    except (KeyError, IndexError, ValueError) as error:
        raise CerebraformValidationError(
            f"Invalid file_name={pattern!r}: {error}; "
            "placeholders are {request_id}, {kind}, {index}, {ext}."
        ) from None
    parts = name.split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise CerebraformValidationError(
            f"Invalid file_name={pattern!r}: it gives {name!r}; a relative name without '..' is required."
        )
    return name


def check_media_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CerebraformMediaError(
            f"Refusing to download media from {url[:100]!r}: only http(s) URLs are allowed."
        )


class MediaDownloader:
    """
    Streams the media of one finished task into a folder of object storage.

    :param open_media: starts streaming a URL (the client's ``open_media``: no API key on it).
    :param refetch_result: returns the task's result again, for fresh URLs when one has expired.
    :param policy: the retry policy (backoff, ``Retry-After``, limits) of the connection.
    :param max_bytes: the largest file accepted; a larger one fails and leaves nothing behind.
    :param log: where progress is reported.
    :param sleep: waits between tries.
    """

    def __init__(
        self,
        open_media: Callable[[str], requests.Response],
        refetch_result: Callable[[], TaskResult],
        *,
        policy: RetryPolicy,
        max_bytes: int = DEFAULT_MAX_BYTES,
        log: Logger,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.open_media = open_media
        self.refetch_result = refetch_result
        self.policy = policy
        self.max_bytes = max_bytes
        self.log = log
        self.sleep = sleep
        self._refetched = False

    def store_all(self, result: TaskResult, folder: ObjectStoragePath, file_name: str) -> list[ManifestEntry]:
        """Store every media file of ``result`` under ``folder`` and write ``<request_id>.manifest.json``."""
        for item in result.items:
            check_media_url(item.url)
        folder.mkdir(parents=True, exist_ok=True)
        entries = [self._store(result, index, folder, file_name) for index in range(len(result.items))]
        write_manifest(folder, result.request_id, entries)
        return entries

    def _store(
        self, result: TaskResult, index: int, folder: ObjectStoragePath, pattern: str
    ) -> ManifestEntry:
        item = result.items[index]
        failures = rate_limited = 0
        waited = 0.0
        while True:
            try:
                return self._download(result, index, item, folder, pattern)
            except _Expired as expired:
                if self._refetched:
                    raise CerebraformMediaError(
                        f"Media {index} of {result.request_id} is no longer available ({expired}) "
                        "even after fetching the result again."
                    ) from None
                self.log.warning(
                    "Media URL %d of %s has expired (%s); fetching the result again",
                    index,
                    result.request_id,
                    expired,
                )
                self._refetched = True
                result = self.refetch_result()
                if index >= len(result.items):
                    raise CerebraformMediaError(
                        f"The fresh result of {result.request_id} lists no media {index}."
                    ) from None
                item = result.items[index]
                check_media_url(item.url)
            except _RateLimited as limited:
                rate_limited += 1
                delay = self.policy.retry_after(limited.response, rate_limited)
                if self.policy.rate_limit_exceeded(delay, rate_limited, waited):
                    raise CerebraformMediaError(
                        f"Downloading media {index} of {result.request_id}: rate-limited {rate_limited} "
                        f"times; the next try would be in {delay:.0f} s, past the in-process wait limit."
                    ) from None
                waited += delay
                self.log.warning("Download of media %d rate-limited; retrying in %.1f s", index, delay)
                self.sleep(delay)
            except _Transient as error:
                failures += 1
                if failures > self.policy.max_retries:
                    raise CerebraformMediaError(
                        f"Downloading media {index} of {result.request_id} failed {failures} times: {error}"
                    ) from None
                delay = self.policy.backoff(failures)
                self.log.warning("Download of media %d failed (%s); retrying in %.1f s", index, error, delay)
                self.sleep(delay)

    def _download(
        self, result: TaskResult, index: int, item: MediaItem, folder: ObjectStoragePath, pattern: str
    ) -> ManifestEntry:
        try:
            response = self.open_media(item.url)
        except requests.RequestException as error:
            raise _Transient(type(error).__name__) from None
        with response:
            if response.status_code in EXPIRED_STATUSES:
                raise _Expired(f"HTTP {response.status_code}")
            if response.status_code == 429:
                headers = {key.lower(): value for key, value in response.headers.items()}
                try:
                    body = next(response.iter_content(4096), b"")  # bounded: the body may be anything
                except requests.RequestException:
                    body = b""
                raise _RateLimited(HttpResponse(429, headers, body))
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise CerebraformMediaError(
                    f"Media {index} of {result.request_id}: HTTP {response.status_code}"
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise CerebraformMediaError(
                    f"Media {index} of {result.request_id} is {int(declared)} bytes, "
                    f"over max_bytes={self.max_bytes}."
                )
            content_type = response.headers.get("content-type") or item.content_type
            name = file_name_for(
                pattern,
                request_id=result.request_id,
                kind=result.kind.value,
                index=index,
                ext=extension_for(content_type, item.url),
            )
            target = folder / name
            digest, size = _stream_atomically(response, target, self.max_bytes, declared)
        self.log.info("Stored media %d of %s: %s (%d bytes)", index, result.request_id, target, size)
        return ManifestEntry(
            request_id=result.request_id,
            kind=result.kind.value,
            index=index,
            source_url=item.url,
            path=str(target),
            bytes=size,
            sha256=digest,
            content_type=content_type,
        )


def temporary_name(target: ObjectStoragePath) -> ObjectStoragePath:
    """A hidden sibling of ``target`` to write into before moving it into place."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"


def _upload_block_size(max_bytes: int) -> int:
    """
    The write buffer of object stores that upload in parts (s3fs keeps two or three of them in
    memory; its default of 50 MiB put a worker 160 MB over its baseline): small, yet large enough
    that ``max_bytes`` fits in S3's 10,000 parts.
    """
    return max(UPLOAD_BLOCK_SIZE, -(-max_bytes // 9000 // CHUNK_SIZE) * CHUNK_SIZE)


def _stream_atomically(
    response: requests.Response, target: ObjectStoragePath, max_bytes: int, declared: str | None
) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        with temporary.open("wb", block_size=_upload_block_size(max_bytes)) as sink:
            for chunk in response.iter_content(CHUNK_SIZE):
                size += len(chunk)
                if size > max_bytes:
                    raise CerebraformMediaError(
                        f"{target.name}: over max_bytes={max_bytes}; download stopped."
                    )
                digest.update(chunk)
                sink.write(chunk)
        if declared and declared.isdigit() and size != int(declared):
            raise _Transient(f"truncated body: {size} of {declared} bytes")
        temporary.move(target)
    except requests.RequestException as error:
        remove_quietly(temporary)
        raise _Transient(f"{type(error).__name__} after {size} bytes") from None
    except BaseException:
        remove_quietly(temporary)
        raise
    return digest.hexdigest(), size


def write_manifest(folder: ObjectStoragePath, request_id: str, entries: list[ManifestEntry]) -> None:
    """Write ``<request_id>.manifest.json`` in ``folder``: the stored files of one generation."""
    manifest = folder / f"{safe_component(request_id)}.manifest.json"
    write_atomically(manifest, json.dumps([entry.to_dict() for entry in entries], indent=2).encode())


def file_digest(path: ObjectStoragePath) -> tuple[str, int]:
    """The sha256 (hex) and size in bytes of a stored file, read in chunks (memory stays bounded)."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def same_store(one: ObjectStoragePath, other: ObjectStoragePath) -> bool:
    """Both paths on one filesystem with the same credentials: a copy between them can stay server-side."""
    return one.protocol == other.protocol and getattr(one, "conn_id", None) == getattr(other, "conn_id", None)


class ChecksumMismatchError(CerebraformMediaError):
    """A copied file is not the one expected: its source changed (nothing was moved into place)."""


def copy_atomically(
    source: ObjectStoragePath, target: ObjectStoragePath, *, sha256: str | None = None
) -> tuple[str, int]:
    """
    Copy ``source`` to ``target`` under a temporary name and move it into place once complete and
    checked; return the sha256 and size of what was written.

    On the same store (same protocol and connection) the copy is the filesystem's own (S3:
    ``CopyObject``, the bytes never leave the service), then read back once for the checksum;
    between stores it is streamed and hashed on the way.

    :param source: the stored file.
    :param target: where the copy goes; an existing file there is replaced only by a complete copy.
    :param sha256: the checksum the copy must have; on a difference nothing is moved into place and
        :class:`ChecksumMismatchError` is raised.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        if same_store(source, target):
            source.fs.copy(source.path, temporary.path)
            digest, size = file_digest(temporary)
        else:
            hasher, size = hashlib.sha256(), 0
            with source.open("rb") as reader, temporary.open("wb", block_size=UPLOAD_BLOCK_SIZE) as sink:
                while chunk := reader.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
            digest = hasher.hexdigest()
        if sha256 is not None and digest != sha256:
            raise ChecksumMismatchError(
                f"Copy of {source} has sha256 {digest[:12]}..., not the expected {sha256[:12]}...: "
                "the source changed; nothing was written to " + str(target)
            )
        temporary.move(target)
    except BaseException:
        remove_quietly(temporary)
        raise
    return digest, size


def write_atomically(target: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``target`` so that ``target`` is either absent, as it was, or whole."""
    temporary = temporary_name(target)
    try:
        with temporary.open("wb") as sink:
            sink.write(data)
        temporary.move(target)
    except BaseException:
        remove_quietly(temporary)
        raise


def remove_quietly(path: ObjectStoragePath) -> None:
    """Remove ``path`` if it exists: clean-up on the way out of an error, which must not mask it."""
    try:
        if path.exists():
            path.unlink()
    except Exception:
        pass


def manifest_for_xcom(entries: list[ManifestEntry]) -> list[dict[str, Any]]:
    return [entry.to_dict() for entry in entries]
