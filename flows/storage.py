"""Where pipeline artifacts live: a local folder or an S3 bucket, chosen by the environment.

Settings (environment only: never params.yaml, never logged):

    AEGPO_STORAGE_URI         unset: the project folder; a path or file:///path: that folder;
                              s3://bucket/prefix: S3 (boto3)
    AEGPO_S3_ENDPOINT_URL     S3-compatible endpoint, e.g. http://127.0.0.1:9000 (falls back to
                              AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL; unset: AWS)
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
    AWS_DEFAULT_REGION / AWS_REGION
                              boto3's usual credential and region chain
    AEGPO_S3_MAX_ATTEMPTS     attempts per request before giving up (default 4)
    AEGPO_S3_CONNECT_TIMEOUT  seconds per connection attempt (default 5)
    AEGPO_S3_READ_TIMEOUT     seconds without a byte from the endpoint before an attempt fails (default 20)
    AEGPO_S3_DEADLINE         seconds one operation may take, every attempt included (default 60); an
                              object's transfer gets 1 s more per AEGPO_S3_MIN_MBPS megabytes
    AEGPO_S3_MIN_MBPS         slowest transfer rate still accepted, MB/s (default 2)

An endpoint that accepts connections and never answers fails each operation after at most
AEGPO_S3_DEADLINE seconds (a transient StorageError naming the endpoint); `aegpo pipeline doctor`
caps it at 10 s. A credential written inside an endpoint URL (http://user:secret@host) is
replaced by *** wherever the URL is printed, logged or stored (`redact_url`).

Keys are '/'-separated paths relative to the storage root ("runs/train/x/rounds/...").

Atomicity: a reader never sees half an object. Local writes go through a temporary file and a
rename; an S3 PUT (single or multipart) makes the object visible only once it is complete. A
folder (a checkpoint, a training state) is stored as a *tree*: its files under
`<key>/<version>/...`, then `<key>/MANIFEST.json` naming that version, written last. Readers
start from the manifest, so they see the previous complete tree or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aegpo.io_utils import atomic_directory, atomic_write_bytes

TREE_MANIFEST = "MANIFEST.json"
TREE_FORMAT = "aegpo-tree"


class StorageError(RuntimeError):
    """A storage operation failed; `transient` errors (unreachable endpoint, throttling) may be retried."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredObject:
    """What a task hands to the next one instead of the data: where it is and what it holds."""

    key: str
    uri: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StorageSettings:
    """Storage settings read from the environment (see the module docstring)."""

    uri: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    deadline: float = 60.0
    min_mbps: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageSettings:
        env = os.environ if env is None else env
        endpoint = env.get("AEGPO_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        numbers: dict[str, float] = {}
        for name, default in (("MAX_ATTEMPTS", "4"), ("CONNECT_TIMEOUT", "5"), ("READ_TIMEOUT", "20"),
                              ("DEADLINE", "60"), ("MIN_MBPS", "2")):
            text = env.get(f"AEGPO_S3_{name}", default)
            try:
                numbers[name] = float(text)
            except ValueError:
                raise StorageError(f"AEGPO_S3_{name}={text[:40]!r}: the AEGPO_S3_* settings must be numbers "
                                   f"(default {default})") from None
            if not numbers[name] > 0 or numbers[name] == float("inf"):
                raise StorageError(f"AEGPO_S3_{name} must be a positive finite number, got {text[:40]!r}")
        return cls(uri=env.get("AEGPO_STORAGE_URI") or None, endpoint_url=endpoint or None,
                   region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
                   max_attempts=max(1, int(numbers["MAX_ATTEMPTS"])), connect_timeout=numbers["CONNECT_TIMEOUT"],
                   read_timeout=numbers["READ_TIMEOUT"], deadline=numbers["DEADLINE"], min_mbps=numbers["MIN_MBPS"])

    def describe(self) -> str:
        """The settings that are safe to print: URI and endpoint, never credentials."""
        where = self.uri or "(project folder)"
        if self.endpoint_url and where.startswith("s3://"):
            return f"{where} via {redact_url(self.endpoint_url)}"
        return where

    def transfer_deadline(self, size: int) -> float:
        """Seconds an operation moving `size` bytes may take."""
        return self.deadline + size / (self.min_mbps * 1e6)


def redact_url(url: str | None) -> str:
    """`url` with the password (or a lone user token) of its user-info part replaced by ***."""
    if not url or "@" not in url:
        return url or ""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(an endpoint URL that cannot be parsed)"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    user = parts.username or ""
    userinfo = f"{user}:***" if parts.password is not None else "***"
    netloc = f"{userinfo}@{host}" + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*)(?P<password>:[^/\s@]*)?@")


def redact_text(text: str) -> str:
    """Every URL credential inside `text` (an error message of botocore, MLflow, ...) replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] else f"{m['scheme']}***@",
                         str(text))


class _DeadlinePassed(Exception):
    """Raised inside botocore (before a retry is sent) once the caller has given up on the operation."""


_CALL_STATE = threading.local()


def _stop_after_deadline(**_: Any) -> None:
    """botocore `before-send` hook: no further attempt once this operation's deadline has passed."""
    deadline = getattr(_CALL_STATE, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _DeadlinePassed()


def run_with_deadline(fn, seconds: float, on_timeout: Exception):
    """`fn()` in a daemon thread; raise `on_timeout` when it has not returned after `seconds`.

    A hung socket cannot block the caller past the deadline; the abandoned attempt ends at its
    own read timeout and starts no retry (`_stop_after_deadline`).
    """
    outcome: dict[str, Any] = {}
    until = time.monotonic() + seconds

    def target() -> None:
        _CALL_STATE.deadline = until
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    worker = threading.Thread(target=target, name="aegpo-s3-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise on_timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Storage(ABC):
    """A flat key → bytes store with atomic writes, plus tree (folder) helpers built on it."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """The URI of `key` (for manifests and messages)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Write `data` at `key` atomically (replacing any previous object)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The bytes at `key`; FileNotFoundError if there is no such object."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursive, sorted)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """Fail now, with a message naming the endpoint, if the store cannot be reached or written."""

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the store is a local folder, else None."""
        return None

    # ----- derived helpers --------------------------------------------------------------------
    def put_json(self, key: str, obj: Any) -> StoredObject:
        return self.put_bytes(key, (json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n").encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_file(self, key: str, path: str | Path) -> StoredObject:
        return self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: str | Path) -> Path:
        atomic_write_bytes(path, self.get_bytes(key))
        return Path(path)

    def describe_object(self, key: str, data: bytes) -> StoredObject:
        return StoredObject(key=key, uri=self.uri(key), sha256=sha256_bytes(data), size=len(data))

    def put_tree(self, key: str, local_dir: str | Path) -> dict[str, Any]:
        """Store every file of `local_dir` under `key`: files first, then the manifest, then old versions go."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"{local_dir} is not a folder")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        entries: dict[str, dict[str, Any]] = {}
        version = f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{time.monotonic_ns() % 10**9:09d}"
        for path in files:
            rel = path.relative_to(local_dir).as_posix()
            data = path.read_bytes()
            obj = self.put_bytes(f"{key}/{version}/{rel}", data)
            entries[rel] = {"sha256": obj.sha256, "size": obj.size}
            digest.update(f"{rel}:{obj.sha256}\n".encode())
        manifest = {"format": TREE_FORMAT, "version": version, "files": entries, "digest": digest.hexdigest()}
        self.put_json(f"{key}/{TREE_MANIFEST}", manifest)
        stale = [k for k in self.list(key + "/")
                 if not k.startswith(f"{key}/{version}/") and k != f"{key}/{TREE_MANIFEST}"]
        if stale:
            self.delete(stale)
        return manifest

    def tree_manifest(self, key: str) -> dict[str, Any] | None:
        """The manifest of the tree at `key`, or None when no complete tree is there."""
        try:
            manifest = self.get_json(f"{key}/{TREE_MANIFEST}")
        except FileNotFoundError:
            return None
        if manifest.get("format") != TREE_FORMAT:
            raise StorageError(f"{self.uri(key)}/{TREE_MANIFEST} is not an aegpo tree manifest")
        return manifest

    def get_tree(self, key: str, local_dir: str | Path) -> dict[str, Any]:
        """Download the tree at `key` into `local_dir` (replaced atomically); checks every file's SHA-256."""
        for attempt in range(3):  # a writer may replace the tree while we read it: start again from its manifest
            manifest = self.tree_manifest(key)
            if manifest is None:
                raise FileNotFoundError(f"{self.uri(key)} holds no stored folder ({TREE_MANIFEST} is missing)")
            try:
                with atomic_directory(local_dir) as tmp:
                    for rel, meta in manifest["files"].items():
                        data = self.get_bytes(f"{key}/{manifest['version']}/{rel}")
                        if sha256_bytes(data) != meta["sha256"]:
                            raise StorageError(f"{self.uri(key)}/{rel}: content does not match its manifest")
                        atomic_write_bytes(tmp / rel, data)
                return manifest
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class LocalStorage(Storage):
    """A folder on this machine."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} points outside the storage folder {self.root}")
        return path

    def uri(self, key: str = "") -> str:
        return self._path(key).as_uri() if key else self.root.as_uri()

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        try:
            atomic_write_bytes(self._path(key), data)
        except OSError as err:
            raise StorageError(f"cannot write {self._path(key)}: {err}", transient=False) from err
        return self.describe_object(key, data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = []
        for p in base.rglob("*"):
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")):
                keys.append(p.relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            if path.is_file():
                path.unlink()
        for key in keys:  # prune folders left empty
            parent = self._path(key).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".aegpo-check.", suffix=".tmp"):
                pass
        except OSError as err:
            raise StorageError(f"storage folder {self.root} is not writable: {err}") from err


class S3Storage(Storage):
    """A prefix in an S3 (or S3-compatible) bucket, through boto3."""

    def __init__(self, bucket: str, prefix: str, settings: StorageSettings, client: Any | None = None) -> None:
        self.bucket, self.prefix, self.settings = bucket, prefix.strip("/"), settings
        self.client = client if client is not None else make_s3_client(settings)

    @property
    def endpoint(self) -> str:
        return redact_url(self.settings.endpoint_url) or "AWS S3 (default endpoint)"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key.strip("/")

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}".rstrip("/")

    def _call(self, what: str, key: str, fn, *, size: int = 0, **kwargs):
        """Run one boto3 call within the operation deadline (`size`: bytes it moves), turning botocore's
        errors into StorageError / FileNotFoundError."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        where = f"{self.uri(key)} at {self.endpoint}"
        seconds = self.settings.transfer_deadline(size)
        timeout = StorageError(f"S3 endpoint {self.endpoint} did not answer: {what} {self.uri(key)} gave no result "
                               f"within {seconds:.0f} s (AEGPO_S3_DEADLINE); check the endpoint, or raise the "
                               "deadline for a slow one", transient=True)
        try:
            return run_with_deadline(lambda: fn(**kwargs), seconds, timeout)
        except _DeadlinePassed:
            raise timeout from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as err:
            raise StorageError(f"S3 endpoint {self.endpoint} is unreachable: {what} {self.uri(key)} failed after "
                               f"{self.settings.max_attempts} attempts ({redact_text(str(err))})",
                               transient=True) from None
        except NoCredentialsError:
            raise StorageError(f"{what} {where}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
            if code == "NoSuchBucket":
                raise StorageError(f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None
            transient = status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout")
            raise StorageError(f"{what} {where} failed: {code or status} {redact_text(str(err))}",
                               transient=transient) from None
        except BotoCoreError as err:
            raise StorageError(f"{what} {where} failed: {redact_text(str(err))}", transient=True) from None

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        self._call("writing", key, self.client.put_object, size=len(data), Bucket=self.bucket, Key=self._key(key),
                   Body=data)
        return self.describe_object(key, data)

    def get_bytes(self, key: str) -> bytes:
        resp = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = resp["Body"]
        return self._call("reading", key, lambda: body.read(), size=int(resp.get("ContentLength") or 0))

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) + ("/" if prefix.endswith("/") else "")
        keys: list[str] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full, **({"ContinuationToken": token} if token else {})}
            resp = self._call("listing", prefix, self.client.list_objects_v2, **kwargs)
            strip = len(self.prefix) + 1 if self.prefix else 0
            keys += [obj["Key"][strip:] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return sorted(keys)
            token = resp["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            self._call("deleting", keys[start], self.client.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})

    def check(self) -> None:
        self._call("opening", "", self.client.head_bucket, Bucket=self.bucket)


class _OncePerProcess(logging.Filter):
    """Let each distinct message through once: botocore says where it found credentials at every client
    (ours per store, MLflow's per artifact call), six times and more per run; once is information enough."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_credential_notices() -> None:
    """Install the once-per-process filter on botocore's credential logger (idempotent)."""
    logger = logging.getLogger("botocore.credentials")
    if not any(isinstance(f, _OncePerProcess) for f in logger.filters):
        logger.addFilter(_OncePerProcess())


def make_s3_client(settings: StorageSettings):
    """A boto3 S3 client for `settings` (bounded retries and timeouts, path-style for custom endpoints)."""
    import boto3
    from botocore.config import Config

    quiet_credential_notices()

    config = Config(retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                    connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                    s3={"addressing_style": "path"} if settings.endpoint_url else None)
    client = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
                                            config=config)
    client.meta.events.register("before-send.s3", _stop_after_deadline)
    return client


def open_storage(uri: str | None = None, project_dir: str | Path = ".",
                 settings: StorageSettings | None = None) -> Storage:
    """The store named by `uri` (default: AEGPO_STORAGE_URI, else the project folder)."""
    settings = settings or StorageSettings.from_env()
    uri = uri if uri is not None else settings.uri
    if not uri:
        return LocalStorage(project_dir)
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"storage URI {uri!r}: expected s3://bucket[/prefix]")
        return S3Storage(bucket, prefix, settings)
    if uri.startswith("file://"):
        return LocalStorage(uri[len("file://"):])
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r}: expected a folder, file:///folder or s3://bucket[/prefix]")
    path = Path(uri)
    return LocalStorage(path if path.is_absolute() else Path(project_dir) / path)
