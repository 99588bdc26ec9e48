"""A fake Hugging Face Hub at huggingface_hub's boundary: model_info, list_repo_files, hf_hub_download, snapshot_download.

It serves folders of files as repos and keeps a cache laid out like huggingface_hub's (blobs named by
their sha256, snapshots of symlinks), so what the code under test sees on disk is what it would see
for real. Every call and every file transferred is recorded. `online = False` is a network that is down.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import errors as hf_errors


class FakeHub:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.repos: dict[str, Path] = {}
        self.online = True
        self.calls: list[dict[str, Any]] = []
        self.transferred: list[tuple[str, str]] = []  # (repo_id, file) actually "downloaded"

    def add(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = folder

    def install(self, monkeypatch: Any) -> FakeHub:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        for name in ("model_info", "list_repo_files", "hf_hub_download", "snapshot_download"):
            monkeypatch.setattr(huggingface_hub, name, getattr(self, name))
        return self

    # -- the boundary ----------------------------------------------------------------------------
    def model_info(self, repo_id: str, revision: str | None = None, **kwargs: Any) -> Any:
        self.calls.append({"fn": "model_info", "repo_id": repo_id, "revision": revision})
        self._reach()
        self._files(repo_id)  # the Hub's 404 for a repo it does not have
        return huggingface_hub.ModelInfo(id=repo_id, sha="0" * 40)

    def list_repo_files(self, repo_id: str, revision: str | None = None, **kwargs: Any) -> list[str]:
        self.calls.append({"fn": "list_repo_files", "repo_id": repo_id, "revision": revision})
        self._reach()
        return sorted(self._files(repo_id))

    def hf_hub_download(self, repo_id: str, filename: str, revision: str | None = None, local_files_only: bool = False,
                        **kwargs: Any) -> str:
        self.calls.append({"fn": "hf_hub_download", "repo_id": repo_id, "filename": filename, "revision": revision,
                           "local_files_only": local_files_only})
        snapshot = self._snapshot(repo_id, revision)
        if local_files_only:
            if not (snapshot / filename).exists():
                raise hf_errors.LocalEntryNotFoundError(f"{filename} of {repo_id} is not in the cache")
            return str(snapshot / filename)
        self._reach()
        files = self._files(repo_id)
        if filename not in files:
            raise hf_errors.EntryNotFoundError(f"404: {filename} not found in {repo_id}")
        self._fetch(repo_id, snapshot, filename)
        return str(snapshot / filename)

    def snapshot_download(self, repo_id: str, revision: str | None = None, allow_patterns: Any = None,
                          ignore_patterns: Any = None, local_files_only: bool = False, **kwargs: Any) -> str:
        self.calls.append({"fn": "snapshot_download", "repo_id": repo_id, "revision": revision,
                           "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns,
                           "local_files_only": local_files_only})
        snapshot = self._snapshot(repo_id, revision)
        if local_files_only:
            if not snapshot.is_dir():
                raise hf_errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
            return str(snapshot)
        self._reach()
        for name in self._files(repo_id):
            keep = allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns)
            drop = any(fnmatch.fnmatch(name, p) for p in ignore_patterns or [])
            if keep and not drop:
                self._fetch(repo_id, snapshot, name)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    # -- helpers ---------------------------------------------------------------------------------
    def _reach(self) -> None:
        if not self.online:
            raise OSError("[Errno 101] Network is unreachable (fake Hub offline)")

    def _files(self, repo_id: str) -> list[str]:
        folder = self.repos.get(repo_id)
        if folder is None:
            import httpx

            url = f"https://huggingface.co/api/models/{repo_id}"
            raise hf_errors.RepositoryNotFoundError(f"{repo_id} not found",
                                                    response=httpx.Response(404, request=httpx.Request("GET", url)))
        return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]

    def _snapshot(self, repo_id: str, revision: str | None) -> Path:
        return self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / (revision or "main")

    def _fetch(self, repo_id: str, snapshot: Path, name: str) -> None:
        source = self.repos[repo_id] / name
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = snapshot.parents[1] / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / name
        if link.exists() and link.resolve() == blob.resolve():
            return  # the real client checks the etag and keeps its copy
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
        self.transferred.append((repo_id, name))
