"""Conversion to CTranslate2 keeps Llama 3.1/3.2 RoPE scaling (issue 7)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ct2_magics.cli import main
from ct2_magics.models.convert import convert
from ct2_magics.models.hub import SAFETENSORS_FILES, SAFETENSORS_IGNORE
from ct2_magics.models.modelfile import check_llama3_rope, read_rope_attributes
from ct2_magics.errors import LlamaError

SPECIALS = ["<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
VOCAB = SPECIALS + [f"w{i}" for i in range(296)]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so the scaling changes logits within a few hundred positions.
    "original_max_position_embeddings": 64,
}
CHAT_TEMPLATE = "{% for m in messages %}<|begin_of_text|>{{ m['content'] }}<|eot_id|>{% endfor %}"
POSITIONS = 300


def quiet(_: str) -> None:
    """Swallow progress lines."""


def make_llama(
    path: Path, *, rope_scaling: dict[str, Any] | None, model_max_length: int = 131072
) -> Path:
    """Save a tiny random Llama with a Llama 3 style tokenizer, config.json as on the Hub."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(VOCAB),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        # Larger than the default 0.02 so attention is sharp enough for RoPE to matter.
        initializer_range=0.2,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,
        rope_theta=500000.0,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 3], temperature=0.6, do_sample=True)
    model.generation_config.save_pretrained(path)

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # Hub Llama 3.1 repos keep rope_theta at the top and rope_scaling without it.
    raw = json.loads((path / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw["rope_theta"] = 500000.0
    raw["rope_scaling"] = dict(rope_scaling) if rope_scaling else None
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    return path


def plain_convert(source: Path, output: Path) -> Path:
    """Convert with CTranslate2's own TransformersConverter, as users did before issue 7."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(source)).convert(str(output), quantization="float32")
    return output


def ct2_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Full float32 logits of a CTranslate2 model for one sequence, on one thread.

    One thread, because CTranslate2 splits its work for the threads it asks for and is wrong when OpenMP
    gives it fewer: with OMP_DYNAMIC on, OpenMP sizes teams by the load average, so on a busy machine a
    2-thread request got 1 and the logits were off by 10 or NaN (device.openmp_safe_threads). A team of
    one is never cut; with it the result is the same under any load.
    """
    import ctranslate2

    vocabulary = json.loads((model_dir / "vocabulary.json").read_text())
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="float32", intra_threads=1)
    return np.asarray(generator.forward_batch([[vocabulary[i] for i in ids]]))[0]


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Full logits of the transformers model for one sequence, in float64: the exact reference."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Llama 3.1-like source, our conversion and the stock conversion."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("convert")
    source = make_llama(root / "hf", rope_scaling=LLAMA3_ROPE)
    ours = root / "ours"
    convert(str(source), ours, quantization="float32", progress=quiet)
    return {"source": source, "ours": ours, "plain": plain_convert(source, root / "plain")}


@pytest.fixture(scope="module")
def token_ids() -> list[int]:
    """A fixed sequence of POSITIONS token ids starting with BOS."""
    ids = np.random.RandomState(0).randint(len(SPECIALS), len(VOCAB), size=POSITIONS).tolist()
    return [1] + ids[1:]


@pytest.mark.torch
def test_logits_match_transformers_and_stock_converter_does_not(
    models: dict[str, Path], token_ids: list[int]
) -> None:
    reference = hf_logits(models["source"], token_ids)
    assert reference.shape == (POSITIONS, len(VOCAB))
    ours = np.abs(ct2_logits(models["ours"], token_ids) - reference).max()
    plain = np.abs(ct2_logits(models["plain"], token_ids) - reference).max()
    print(f"max abs logit difference from float64: ours {ours:.3g}, stock converter {plain:.3g}")
    assert ours < 1e-3  # 6.5e-5 here: float32 arithmetic
    assert plain > 1.0


@pytest.mark.torch
def test_spec_carries_llama3_scaling_on_every_layer(models: dict[str, Path]) -> None:
    layers = read_rope_attributes(models["ours"] / "model.bin")
    assert layers is not None and len(layers) == 2
    for attrs in layers.values():
        assert attrs == {
            "rotary_scaling_type": 2,
            "rotary_scaling_factor": 8.0,
            "original_max_position_embeddings": 64,
        }


@pytest.mark.torch
def test_tokenizer_template_and_generation_config_are_copied(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    ours = models["ours"]
    tokenizer = AutoTokenizer.from_pretrained(str(ours))
    original = AutoTokenizer.from_pretrained(str(models["source"]))
    assert tokenizer("w1 w2 w3")["input_ids"] == original("w1 w2 w3")["input_ids"]
    assert (ours / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert GenerationConfig.from_pretrained(str(ours)).eos_token_id == [2, 3]
    assert json.loads((ours / "config.json").read_text())["bos_token"] == "<|begin_of_text|>"


@pytest.mark.torch
def test_check_llama3_rope_flags_stock_conversion_only(models: dict[str, Path]) -> None:
    warning = check_llama3_rope(models["plain"])
    assert warning is not None and "\n" not in warning
    assert "%llama convert <original-repo-or-dir> <out> --quantization int8_float16" in warning
    assert check_llama3_rope(models["ours"]) is None


@pytest.mark.torch
def test_check_llama3_rope_names_base_model_from_readme(models: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(models["plain"], tmp_path / "hub-copy"))
    (copy / "README.md").write_text("---\nbase_model: meta-llama/Llama-3.2-1B-Instruct\n---\n# ct2\n")
    warning = check_llama3_rope(copy)
    assert warning is not None
    assert "%llama convert meta-llama/Llama-3.2-1B-Instruct <out>" in warning


@pytest.mark.torch
def test_check_llama3_rope_heuristic_without_any_scaling(tmp_path: Path) -> None:
    # A conversion that lost rope_scaling entirely: only the tokenizer says "Llama 3.1".
    long_ctx = make_llama(tmp_path / "long", rope_scaling=None)
    convert(str(long_ctx), tmp_path / "long-ct2", quantization="int8", progress=quiet)
    assert "looks like Llama 3.1/3.2" in (check_llama3_rope(tmp_path / "long-ct2") or "")

    # Llama 3.0 has the same tokens but an 8K context and plain RoPE: no warning.
    short_ctx = make_llama(tmp_path / "short", rope_scaling=None, model_max_length=8192)
    convert(str(short_ctx), tmp_path / "short-ct2", quantization="int8", progress=quiet)
    assert check_llama3_rope(tmp_path / "short-ct2") is None


def test_check_llama3_rope_unknown_inputs(tmp_path: Path) -> None:
    assert check_llama3_rope(tmp_path / "missing") is None
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00garbage")
    assert check_llama3_rope(tmp_path) is None
    assert read_rope_attributes(tmp_path / "model.bin") is None


@pytest.mark.torch
def test_cli_converts_end_to_end(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
    assert main(["convert", str(models["source"]), str(out), "--quantization", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and str(out) in printed and "Llama 3 RoPE" in printed
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    assert check_llama3_rope(out) is None

    # Same output again: refused without --force, replaced with it.
    assert main(["convert", str(models["source"]), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(models["source"]), str(out), "--force", "--quantization", "float32"]) == 0


def test_cli_bad_source_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ct2-magics: error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_without_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_user_mistakes_raise_llama_error(tmp_path: Path) -> None:
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hi")
    with pytest.raises(LlamaError, match="no config.json"):
        convert(str(not_a_model), tmp_path / "o", progress=quiet)
    with pytest.raises(LlamaError, match="does not exist"):
        convert("./missing-dir", tmp_path / "o", progress=quiet)
    with pytest.raises(LlamaError, match="int8_float16.*float32|float32.*int8_float16"):
        convert(str(not_a_model), tmp_path / "o", quantization="int4", progress=quiet)

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.bin").write_bytes(b"x")
    with pytest.raises(LlamaError, match="not empty"):
        convert(str(model_dir), taken, progress=quiet)
    with pytest.raises(LlamaError, match="replace the source"):
        convert(str(model_dir), model_dir, force=True, progress=quiet)
    with pytest.raises(LlamaError, match="revision"):
        convert(str(model_dir), tmp_path / "o", revision="main", progress=quiet)


def test_missing_torch_is_one_line_with_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(LlamaError) as info:
        convert(str(model_dir), tmp_path / "o", progress=quiet)
    message = str(info.value)
    assert "\n" not in message
    assert "pip install torch" in message and 'pip install "ct2-magics[convert]"' in message


def test_download_patterns_exclude_pickles_and_code() -> None:
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in SAFETENSORS_FILES)

    for name in ("pytorch_model.bin", "model.pt", "original/consolidated.00.pth", "x.pkl", "modeling_llama.py", "tokenizer.py"):
        assert not wanted(name), name
    for name in ("model-00001-of-00004.safetensors", "model.safetensors.index.json", "config.json",
                 "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                 "chat_template.jinja", "special_tokens_map.json"):
        assert wanted(name), name


@pytest.mark.torch
def test_repo_id_is_downloaded_without_pickles_or_code(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    remote = Path(shutil.copytree(models["source"], tmp_path / "remote"))
    (remote / "pytorch_model.bin").write_bytes(b"pickle")
    (remote / "modeling_evil.py").write_text("raise SystemExit")
    (remote / "original").mkdir()
    (remote / "original" / "consolidated.00.pth").write_bytes(b"pickle")
    (remote / "original" / "params.json").write_text("{}")
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        snapshot = tmp_path / "cache" / repo_id.replace("/", "--")
        for path in remote.rglob("*"):
            name = path.relative_to(remote).as_posix()
            keep = any(fnmatch.fnmatch(name, p) for p in kwargs.get("allow_patterns") or ["*"])
            drop = any(fnmatch.fnmatch(name, p) for p in kwargs.get("ignore_patterns") or [])
            if path.is_file() and keep and not drop:
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    lines: list[str] = []
    summary = convert("someone/tiny-llama-3.1", tmp_path / "out", revision="v1", progress=lines.append)

    assert [c["repo_id"] for c in calls] == ["someone/tiny-llama-3.1"] and calls[0]["revision"] == "v1"
    downloaded = sorted(p.name for p in (tmp_path / "cache" / "someone--tiny-llama-3.1").rglob("*"))
    assert "pytorch_model.bin" not in downloaded and "modeling_evil.py" not in downloaded
    assert "consolidated.00.pth" not in downloaded
    assert lines[0].startswith("Downloading someone/tiny-llama-3.1 @ v1")
    assert summary.llama3_rope and summary.model_type == "llama" and summary.quantization == "int8_float16"
    assert summary.size_bytes == sum(p.stat().st_size for p in summary.output.iterdir())
    assert check_llama3_rope(summary.output) is None


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import huggingface_hub

    def offline(repo_id: str, **kwargs: Any) -> str:
        raise OSError("Cannot reach https://huggingface.co\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(LlamaError) as info:
        convert("someone/model", tmp_path / "o", progress=quiet)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Cannot download someone/model: the Hub is unreachable")
    assert SAFETENSORS_IGNORE == ["original/*"]


@pytest.mark.torch
def test_loading_a_stock_conversion_says_how_to_fix_it(models: dict[str, Path], tmp_path: Path) -> None:
    from ct2_magics.core.session import Session

    plain = tmp_path / "plain"
    shutil.copytree(models["plain"], plain)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models["ours"] / name, plain / name)
    lines: list[str] = []
    session = Session()
    session.notify = lines.append
    session.load(str(plain), device="cpu", compute_type="float32")
    assert len(lines) == 1 and "%llama convert" in lines[0] and "RoPE" in lines[0]
    session.unload()
    lines.clear()
    session.load(str(models["ours"]), device="cpu", compute_type="float32")
    assert lines == []
    session.unload()
