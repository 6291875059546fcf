"""Content-addressed artifacts: tables (Parquet), model directories and JSON documents.

An `ArtifactRef` is what travels between stages and tasks; payloads stay in the store. The id is the
sha256 of the content, so the same bytes always get the same id, and a ref names its parents (the inputs
that produced it) for lineage. Writes go to a staging directory inside the store and are moved into place
with one rename, so a crash never leaves a half-written artifact visible.

With a remote (`s3://bucket/prefix`, or $ALIGNLOOP_ARTIFACT_REMOTE), the local directory is a write-through
cache of an S3 store: every artifact is uploaded when published and fetched on first use elsewhere. On S3
the sidecar (<sha>.ref.json) is uploaded last and is what readers go by, so there too an interrupted upload
is invisible, and a re-publish completes it.

Every read is verified: `path` and `read_table` check the content hash against the ref before anything uses the
bytes (a flipped byte in a checkpoint is a `CorruptArtifact` naming kind, sha and path, never a silently wrong
model). Hashes already verified are remembered per file by (size, mtime, inode) under <root>/.verified, the check
DVC's state database makes, so an unchanged 15 GB checkpoint is not re-read every stage; `alignloop verify`
re-reads everything. A corrupt local copy is replaced from the S3 mirror when the mirror holds a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from components.faults import fault_point
from components.schemas import conform, schema_of


class ArtifactRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str                      # a table kind of schemas.SCHEMAS, or policy | reward_model | eval_report
    sha256: str                    # content hash (file bytes, or the sorted (path, file hash) list of a directory)
    uri: str                       # path relative to the store root
    schema_version: int = 0        # tables: schemas.SCHEMAS version; others 0
    parents: tuple[str, ...] = ()  # sha256 of the inputs
    meta: dict[str, Any] = {}      # small facts worth seeing without loading (rows, member index, ...)

    @property
    def short(self) -> str:
        return self.sha256[:12]


class CorruptArtifact(ValueError):
    """An artifact whose bytes do not match its content hash (or that cannot be parsed)."""

    def __init__(self, ref: ArtifactRef, path: Path, detail: str):
        self.ref, self.path = ref, path
        super().__init__(f"corrupt {ref.kind} artifact {ref.sha256} at {path}: {detail}. Repair it with "
                         "`alignloop verify --repair` (re-fetches a good copy from the S3 mirror or the DVC remote), "
                         "or delete it and re-run the iteration that made it")


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_sha(path: Path) -> str:
    return digest(path)[0]


def digest(path: Path, known: dict | None = None) -> tuple[str, dict[str, list]]:
    """(content hash, {relative file: [size, mtime_ns, inode, file sha]}) of a file ("" is its key) or a
    directory; a file whose (size, mtime_ns, inode) equal its entry in `known` is not read again."""
    known = known or {}
    files = [(path, "")] if path.is_file() else [(f, f.relative_to(path).as_posix())
                                                 for f in sorted(p for p in path.rglob("*") if p.is_file())]
    entries = {}
    for f, rel in files:
        st = f.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        old = known.get(rel)
        entries[rel] = [*key, old[3] if old and list(old[:3]) == key else _file_sha(f)]
    if path.is_file():
        return entries[""][3], entries
    h = hashlib.sha256()
    for rel, e in entries.items():
        h.update(rel.encode() + b"\0" + e[3].encode() + b"\n")
    return h.hexdigest(), entries


class ArtifactStore:
    """A local directory store: <root>/<kind>/<sha>{.parquet,.json,/} plus <sha>.ref.json sidecars, optionally
    mirrored to S3 (see module docstring)."""

    def __init__(self, root: str | Path, remote: str | None = None):
        self.root = Path(root)
        (self.root / ".staging").mkdir(parents=True, exist_ok=True)
        remote = remote if remote is not None else os.environ.get("ALIGNLOOP_ARTIFACT_REMOTE")
        self.remote = S3Mirror(remote) if remote else None

    def path(self, ref: ArtifactRef, verify: bool = True) -> Path:
        """The artifact on local disk (fetched from the remote first if this machine has not got it), its content
        hash verified (see module docstring); a missing artifact's path is returned as is."""
        local = self.root / ref.uri
        if "hub_id" in ref.meta:  # a checkpoint named by hub id: not in the store
            return local
        if self.remote is not None and not local.exists():
            self._fetch(ref.uri)
        if verify and local.exists():
            self.verify(ref)
        return local

    # -- verification ------------------------------------------------------------------------------------
    def _verified_file(self, ref: ArtifactRef) -> Path:
        return self.root / ".verified" / ref.kind / f"{ref.sha256}.json"

    def _remember(self, ref: ArtifactRef, entries: dict) -> None:
        p = self._verified_file(ref)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")  # one per writer: processes and threads race here
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(entries))
        os.replace(tmp, p)

    def actual_sha(self, ref: ArtifactRef, full: bool = False) -> str | None:
        """The content hash of the local copy (None if absent); `full` re-reads every byte (no stat cache)."""
        local = self.root / ref.uri
        if not local.exists():
            return None
        cache = self._verified_file(ref)
        known = {} if full or not cache.exists() else _load_json(cache)
        sha, entries = digest(local, known)
        if sha == ref.sha256 and entries != known:
            self._remember(ref, entries)
        return sha

    def verify(self, ref: ArtifactRef, full: bool = False) -> None:
        """Raise `CorruptArtifact` unless the local copy has the ref's content hash (a bad copy is first replaced
        from the S3 mirror when that holds a good one)."""
        sha = self.actual_sha(ref, full)
        if sha is None or sha == ref.sha256:
            return
        if self.remote is not None and self.replace_from(ref, lambda dest: self.remote.download(ref.uri, dest)):
            return
        raise CorruptArtifact(ref, self.root / ref.uri, f"content hash is {sha}")

    def replace_from(self, ref: ArtifactRef, fetch) -> bool:
        """Put a good copy in place: `fetch(dest)` writes one at `dest` (a staging path); it replaces the local
        copy only if its hash is the ref's. False when it fails or fetches other bytes."""
        with self.staging_dir() as d:
            try:
                fetch(d / "x")
            except (OSError, LookupError):
                return False
            sha, entries = digest(d / "x")
            if sha != ref.sha256:
                return False
            local = self.root / ref.uri
            local.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                os.rename(local, d / "bad")  # rmtree'd with the staging dir
            os.replace(d / "x", local)  # a new inode: a hard link elsewhere to the bad bytes keeps them
            self._remember(ref, entries)  # a rename keeps size, mtime and inode
        return True

    def uri(self, ref: ArtifactRef) -> str:
        """Where others find the artifact (what the model registry records): the S3 object prefix when the store
        is mirrored (a tracking server only accepts local sources inside a run's artifact directory), else the
        local file URI."""
        if self.remote is None:
            return (self.root / ref.uri).as_uri()
        return f"s3://{self.remote.bucket}/{self.remote._key(ref.uri)}"

    def _fetch(self, rel: str) -> None:
        with self.staging_dir() as d:
            self.remote.download(rel, d / "x")
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # a concurrent fetch placed it first: same bytes
                os.rename(d / "x", self.root / rel)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A scratch directory on the store's filesystem (so publishing is a rename); removed afterwards."""
        d = Path(tempfile.mkdtemp(dir=self.root / ".staging"))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _publish(self, staged: Path, kind: str, sha: str, suffix: str, parents, schema_version, meta,
                 entries: dict | None = None) -> ArtifactRef:
        rel = f"{kind}/{sha}{suffix}"
        dest, published = self.root / rel, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            fault_point(f"publish:{kind}")  # crash tests die here: written in full to staging, not yet visible
            try:
                os.rename(staged, dest)  # atomic on one filesystem: the artifact appears whole or not at all
            except OSError:
                if not dest.exists():  # another writer published the same content first: fine, same bytes
                    raise
            else:
                published = True
        ref = ArtifactRef(kind=kind, sha256=sha, uri=rel, schema_version=schema_version,
                          parents=tuple(p.sha256 if isinstance(p, ArtifactRef) else p for p in parents), meta=meta)
        sidecar = self.root / f"{kind}/{sha}.ref.json"
        tmp = sidecar.with_suffix(".tmp")
        tmp.write_text(ref.model_dump_json(indent=1))
        os.replace(tmp, sidecar)
        if published and entries:  # a rename keeps size, mtime and inode: the hashes just computed hold
            self._remember(ref, entries)
        if self.remote is not None and not self.remote.has(f"{kind}/{sha}.ref.json"):
            self.remote.upload(dest, rel)
            self.remote.upload(sidecar, f"{kind}/{sha}.ref.json")  # last: marks the upload complete
        return ref

    def put_table(self, kind: str, table: pa.Table, parents=(), meta: dict | None = None) -> ArtifactRef:
        version, _ = schema_of(kind)
        table = conform(table, kind, source=f"{kind} table being written")
        with self.staging_dir() as d:
            staged = d / "t.parquet"
            pq.write_table(table, staged, compression="zstd")
            sha, entries = digest(staged)
            return self._publish(staged, kind, sha, ".parquet", parents, version,
                                 {"rows": table.num_rows, **(meta or {})}, entries)

    def read_table(self, ref: ArtifactRef) -> pa.Table:
        path = self.path(ref)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:  # e.g. "Unexpected end of stream": name what is broken
            if not path.exists():
                raise FileNotFoundError(f"{ref.kind} artifact {ref.sha256}: {path} does not exist") from None
            raise CorruptArtifact(ref, path, f"not readable as Parquet ({err})") from None
        return conform(table, ref.kind, source=str(path))

    def put_dir(self, kind: str, staged_dir: Path, parents=(), meta: dict | None = None) -> ArtifactRef:
        """Publish a directory written under `staging_dir()` (e.g. a save_pretrained model)."""
        if any(p.suffix in {".bin", ".pt", ".pth", ".pkl"} for p in staged_dir.rglob("*")):
            raise ValueError(f"{staged_dir}: only safetensors weights are stored (found pickle-based files)")
        sha, entries = digest(staged_dir)
        return self._publish(staged_dir, kind, sha, "", parents, 0, meta or {}, entries)

    def put_json(self, kind: str, doc: dict, parents=(), meta: dict | None = None) -> ArtifactRef:
        with self.staging_dir() as d:
            staged = d / "doc.json"
            staged.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))
            sha, entries = digest(staged)
            return self._publish(staged, kind, sha, ".json", parents, 0, meta or {}, entries)

    def read_json(self, ref: ArtifactRef) -> dict:
        return json.loads(self.path(ref).read_text())

    def refs(self) -> Iterator[ArtifactRef]:
        """Every artifact this local store has a sidecar for."""
        for sidecar in sorted(self.root.glob("[!.]*/*.ref.json")):
            yield ArtifactRef.model_validate_json(sidecar.read_text())

    def ref(self, kind: str, sha: str) -> ArtifactRef:
        sidecar = self.root / f"{kind}/{sha}.ref.json"
        if self.remote is not None and not sidecar.exists():
            self._fetch(f"{kind}/{sha}.ref.json")
        return ArtifactRef.model_validate_json(sidecar.read_text())


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # a torn or unreadable cache entry: hash again
        return {}


class S3Mirror:
    """Objects under s3://bucket/prefix/<uri> (a directory artifact: one object per file). boto3 takes the
    endpoint from AWS_ENDPOINT_URL and the keys from the environment, never from here."""

    def __init__(self, url: str):
        if not url.startswith("s3://"):
            raise ValueError(f"artifact remote {url!r}: expected s3://bucket/prefix")
        import boto3

        self.bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/")
        self.s3 = boto3.client("s3")

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def has(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(rel))
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def upload(self, local: Path, rel: str) -> None:
        files = [(local, rel)] if local.is_file() else [
            (f, f"{rel}/{f.relative_to(local).as_posix()}") for f in sorted(local.rglob("*")) if f.is_file()]
        for f, r in files:
            self.s3.upload_file(str(f), self.bucket, self._key(r))

    def download(self, rel: str, dest: Path) -> None:
        key = self._key(rel)
        keys = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key)
                for o in page.get("Contents", []) if o["Key"] == key or o["Key"].startswith(key + "/")]
        if not keys:
            raise FileNotFoundError(f"s3://{self.bucket}/{key}: no such artifact on the remote")
        for k in keys:
            target = dest if k == key else dest / k[len(key) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, k, str(target))
