"""The whole artifact store checked byte by byte (`alignloop verify`), and bad or missing copies replaced from
where a good one is kept: the store's S3 mirror, else the data repo's DVC cache or remote (which hold each
finished iteration's prompts, rollouts, preferences and evaluation report, as separate copies: they never share
an inode with the store, components/versioning.py).

Reads verify too (components/artifacts.py), through a stat cache; `verify_store` re-reads every byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.artifacts import ArtifactRef, ArtifactStore
from components.record import DATA_OUTPUTS
from components.workspace import Workspace


@dataclass
class Checked:
    ref: ArtifactRef
    path: Path
    state: str  # ok | remote-only | corrupt | missing | repaired
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.state in ("corrupt", "missing")


def verify_store(ws: Workspace, store: ArtifactStore, repair: bool = False) -> list[Checked]:
    """Every artifact with a sidecar in the local store, hashed in full; with `repair`, a bad one is replaced by
    a good copy when one is found (`Checked.detail` says from where, or why not)."""
    sources = _dvc_sources(ws)
    out = []
    for ref in store.refs():
        if "hub_id" in ref.meta:
            continue
        path = store.root / ref.uri
        if not path.exists() and store.remote is not None:
            out.append(Checked(ref, path, "remote-only", "fetched from the S3 mirror (and verified) on use"))
            continue
        sha = store.actual_sha(ref, full=True)
        if sha == ref.sha256:
            out.append(Checked(ref, path, "ok"))
            continue
        item = Checked(ref, path, "missing" if sha is None else "corrupt",
                       "file missing" if sha is None else f"content hash is {sha}")
        if repair:
            source = _repair(ws, store, ref, sources.get(ref.sha256))
            if source:
                item.state, item.detail = "repaired", f"good copy from {source}"
            else:
                item.detail += "; no good copy found (S3 mirror, DVC cache, DVC remote)"
        out.append(item)
    return out


def _dvc_sources(ws: Workspace) -> dict[str, tuple[int, str]]:
    """artifact sha -> (iteration, name in the data repo) for what finished iterations tracked."""
    out = {}
    for d in ws.ledgers():
        if d.get("status") != "finished" or not d.get("data_rev"):
            continue
        for k in DATA_OUTPUTS:
            ref = d.get("outputs", {}).get(k)
            if ref:
                out[ref["sha256"]] = (d["iteration"], f"{k}{Path(ref['uri']).suffix}")
    return out


def _repair(ws: Workspace, store: ArtifactStore, ref: ArtifactRef, source: tuple[int, str] | None) -> str | None:
    if store.remote is not None and store.replace_from(ref, lambda dest: store.remote.download(ref.uri, dest)):
        return f"the S3 mirror s3://{store.remote.bucket}/{store.remote._key(ref.uri)}"
    if source is None or not (ws.data_repo / ".git").exists():
        return None
    from components.versioning import DataRepo

    remote = ws.dvc_remote_url
    repo = DataRepo(ws.data_repo, remote, endpoint_url=ws.s3_endpoint if remote.startswith("s3://") else None)
    i, name = source

    def from_cache(dest: Path) -> None:  # the data repo's own copy (local cache, else the remote)
        try:
            with repo.open(i, name) as fh:
                dest.write_bytes(fh.read())
        except Exception as err:  # DVC's own error types: not a good copy, whatever the reason
            raise LookupError(str(err)) from err

    if store.replace_from(ref, from_cache):
        return f"the data repo ({ws.data_path(i, name)} @ {ws.data_tag(i)})"
    try:
        url = repo.url(i, name)
    except Exception:  # no tag, no remote: nothing to fetch from
        return None
    if store.replace_from(ref, lambda dest: _download(url, dest, ws.s3_endpoint)):
        return f"the DVC remote ({url})"
    return None


def _download(url: str, dest: Path, endpoint: str | None) -> None:
    if "://" not in url:
        dest.write_bytes(Path(url).read_bytes())
        return
    if not url.startswith("s3://"):
        raise LookupError(f"{url}: only local and s3:// DVC remotes are read here")
    import boto3

    bucket, _, key = url.removeprefix("s3://").partition("/")
    boto3.client("s3", endpoint_url=endpoint).download_file(bucket, key, str(dest))
