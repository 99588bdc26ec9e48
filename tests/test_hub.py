"""Loading by Hub repo id, with the Hub's network faked at its one boundary: snapshot_download."""

from __future__ import annotations

import fnmatch
import shutil

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors
from IPython.core.error import UsageError

from helpers import run

REPO = "someone/tiny-llama-ct2"
HUB_FILES = ["model.bin", "config.json", "vocabulary.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "generation_config.json", "README.md", "modeling_evil.py",
             "pytorch_model.bin.index.json", "optimizer.pt", "chat_template.jinja"]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, demo_model):
    """A Hub that serves the demo model's files (plus files a model never needs) under REPO."""
    remote = tmp_path / "remote"
    remote.mkdir()
    for name in HUB_FILES:
        src = demo_model / name
        if src.exists():
            shutil.copy(src, remote / name)
        else:
            (remote / name).write_text("not for us")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False, **kw):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns,
                      "local_files_only": local_files_only})
        if repo_id != REPO:
            import httpx

            url = f"https://huggingface.co/api/models/{repo_id}"
            response = httpx.Response(404, request=httpx.Request("GET", url))
            raise hf_errors.RepositoryNotFoundError(f"{repo_id} not found", response=response)
        local = tmp_path / "cache" / repo_id.replace("/", "--") / (revision or "main")
        local.mkdir(parents=True, exist_ok=True)
        for f in remote.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, local / f.name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_load_by_repo_id_downloads_only_model_files(shell, llama, fake_hub):
    assert run(shell, f"%llama load {REPO} --revision v1").success
    assert llama.engine.name == REPO and llama.generator.model_is_loaded
    call = fake_hub[-1]
    assert call["repo_id"] == REPO and call["revision"] == "v1"
    fetched = sorted(p.name for p in llama.engine.model_dir.iterdir())
    assert "modeling_evil.py" not in fetched and "optimizer.pt" not in fetched
    assert {"model.bin", "vocabulary.json", "tokenizer.json", "chat_template.jinja"} <= set(fetched)
    assert run(shell, "%%llama -n 3\nhi").success


def test_unknown_repo_is_one_line(shell, llama, fake_hub, capsys):
    result = run(shell, "%llama load someone/does-not-exist")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "someone/does-not-exist" in err and err.count("\n") == 1


def test_offline_and_not_cached_is_one_line(shell, llama, monkeypatch, capsys):
    def offline(repo_id, **kw):
        raise hf_errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    result = run(shell, f"%llama load {REPO}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "local cache" in err and err.count("\n") == 1
