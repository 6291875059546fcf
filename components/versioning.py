"""Data versioning: each iteration's artifacts tracked in a git+DVC data repository, pushed, and tagged.

Runs never commit into the code repository, yet anyone must be able to fetch iteration N's preferences
or rollouts later, e.g. `dvc get workspace/data iterations/iter-0003/preferences.parquet --rev iter-3` or
`dvc.api.open(..., repo="workspace/data", rev="iter-3")`. So the workspace holds its own repository
(`workspace/data`: one directory per iteration, one .dvc file per artifact) whose DVC remote is a local
directory by default and an S3 URL in production.

Steps of `track_iteration`: link files in, `dvc add`, git commit, `dvc push`, and only then the tag
`iter-N`. A tag therefore means "committed and on the remote"; a crash anywhere before it is repaired by
running the same call again, and a tagged iteration is never rewritten.

Files come in as copies of the artifact store's files (reflinks where the filesystem has them), never as
hardlinks: one corruption (a flipped byte, an edit in place) must not reach both the store and DVC's copy, so
each can repair the other (`alignloop verify --repair`). Inside the data repo the DVC cache hardlinks the
working copy (read-only), so the repository itself still holds each file once.

DVC is imported inside methods because `import dvc.api` takes ~1.8 s.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from components.workspace import Workspace

REMOTE_NAME = "storage"


class DataRepo:
    def __init__(self, path: Path, remote: str, endpoint_url: str | None = None):
        self.path = Path(path).absolute()
        # A local remote is stored absolute so clones of the data repo elsewhere on this machine find it.
        self.remote = remote if "://" in remote else str(Path(remote).absolute())
        self.endpoint_url = endpoint_url

    # -- setup -------------------------------------------------------------------------------------
    def init(self) -> None:
        """Create or update the repository and its remote; commits only when something changed."""
        from dvc.repo import Repo

        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / ".git").exists():
            self._git("init", "-q", "-b", "main")
        # Local identity: the machine running the loop may have no global git identity.
        for key, value in (("user.name", "alignloop"), ("user.email", "alignloop@localhost"),
                           ("commit.gpgsign", "false")):
            self._git("config", key, value)
        if not (self.path / ".dvc").exists():
            Repo.init(str(self.path))
        remote = {"url": self.remote}
        if self.endpoint_url:
            remote["endpointurl"] = self.endpoint_url
        with Repo(str(self.path)) as repo, repo.config.edit("repo") as conf:
            conf["remote"][REMOTE_NAME] = remote
            # autostage: DVC stages its own .dvc/.gitignore edits instead of printing git hints.
            conf["core"].update(remote=REMOTE_NAME, analytics=False, autostage=True)
            # The working copy (itself a copy of the store's file, see module docstring) linked into the
            # cache in place: DVC does so only when "hardlink" is listed first.
            conf["cache"]["type"] = "hardlink,copy"
        self._git("add", "--", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
        self._commit_staged("configure data repository")

    # -- tracking ----------------------------------------------------------------------------------
    def track_iteration(self, iteration: int, files: dict[str, Path], message: str = "") -> str:
        """Version `files` (name -> file or directory) as iteration `iteration`; returns the commit sha."""
        if not files:
            raise ValueError(f"{self.path}: nothing to track for iteration {iteration}")
        for name in files:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"{self.path}: artifact name {name!r} is not a plain file/directory name")
        if (sha := self.rev(iteration)) is not None:
            self._check_same(iteration, sha, files)
            return sha

        from dvc.repo import Repo

        folder = self.path / self.path_in_repo(iteration, "")
        folder.mkdir(parents=True, exist_ok=True)
        outs = [_copy_in(Path(src), folder / name) for name, src in files.items()]
        with Repo(str(self.path)) as repo:  # one open for add and push (an open costs ~0.2 s)
            repo.add([str(o) for o in outs])
            self._git("add", "--", str(folder))
            self._commit_staged(message or f"iteration {iteration}")
            # The last commit that touched this iteration: right even if a later iteration was committed
            # between a crash here and this re-run.
            sha = self._git("rev-list", "-1", "HEAD", "--", str(folder))
            repo.push(targets=[f"{o}.dvc" for o in outs], remote=REMOTE_NAME)
        self._git("tag", self._tag(iteration), sha)
        return sha

    def _check_same(self, iteration: int, sha: str, files: dict[str, Path]) -> None:
        """A tagged iteration is published history: refuse, naming what differs, rather than rewrite it."""
        from dvc.fs import localfs
        from dvc.repo import Repo
        from dvc_data.hashfile.build import build

        folder = self.path_in_repo(iteration, "")
        listed = self._git("ls-tree", "--name-only", sha, f"{folder}/").splitlines()
        tagged = {Path(p).name.removesuffix(".dvc"): p for p in listed if p.endswith(".dvc")}
        if set(tagged) != set(files):
            raise ValueError(f"{self.path}: {self._tag(iteration)} holds {sorted(tagged)}, "
                             f"asked to track {sorted(files)}")
        with Repo(str(self.path)) as repo:
            for name, src in files.items():
                committed = yaml.safe_load(self._git("show", f"{sha}:{tagged[name]}"))["outs"][0]["md5"]
                # Same hashing as `dvc add` (directories: md5 of the listing + ".dir"); the state db
                # makes it free for files that are already linked into the repository.
                _, _, obj = build(repo.cache.local, str(Path(src).absolute()), localfs, "md5", dry_run=True)
                if obj.hash_info.value != committed:
                    raise ValueError(f"{self.path}: {self._tag(iteration)} has different content for "
                                     f"{tagged[name].removesuffix('.dvc')} than {src}")

    # -- lookup ------------------------------------------------------------------------------------
    def rev(self, iteration: int) -> str | None:
        try:
            return self._git("rev-parse", "-q", "--verify", f"refs/tags/{self._tag(iteration)}^{{commit}}")
        except RuntimeError:
            return None

    def path_in_repo(self, iteration: int, name: str) -> str:
        return Workspace.data_path(iteration, name)

    def open(self, iteration: int, name: str, mode: str = "rb"):
        """Context manager over the file as tagged; reads the local cache, else the remote."""
        import dvc.api

        return dvc.api.open(self.path_in_repo(iteration, name), repo=str(self.path),
                            rev=self._require_tag(iteration), mode=mode)

    def url(self, iteration: int, name: str) -> str:
        """Where the remote stores it (a directory's URL is its `.dir` listing object)."""
        import dvc.api

        return dvc.api.get_url(self.path_in_repo(iteration, name), repo=str(self.path),
                               rev=self._require_tag(iteration))

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _tag(iteration: int) -> str:
        return Workspace.data_tag(iteration)

    def _require_tag(self, iteration: int) -> str:
        tag = self._tag(iteration)
        if self.rev(iteration) is None:
            raise LookupError(f"{self.path}: iteration {iteration} is not tracked (no tag {tag})")
        return tag

    def _commit_staged(self, message: str) -> None:
        # `diff --cached --quiet` exits 1 when something is staged: commit only then (idempotence).
        staged = subprocess.run(["git", "-C", str(self.path), "diff", "--cached", "--quiet"], check=False)
        if staged.returncode:
            self._git("commit", "-q", "-m", message)

    def _git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.path), *args],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{self.path}: git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()


def _copy_in(src: Path, dest: Path) -> Path:
    """Place a copy of `src` at `dest` (a reflink where possible: its own inode, shared extents copied on write);
    replaces a stale `dest` (e.g. left by an interrupted run, possibly DVC's read-only link)."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: artifact to track does not exist")
    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=_reflink_or_copy)
    else:
        _reflink_or_copy(src, dest)
    return dest


def _reflink_or_copy(src: str | Path, dest: str | Path) -> None:
    from dvc_objects.fs.system import reflink

    try:
        reflink(str(src), str(dest))
    except OSError:  # no reflink support here (ext4, another filesystem)
        shutil.copy2(src, dest)
