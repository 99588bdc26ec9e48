"""Private names of other packages that ct2_magics relies on: each fails here, by package, version and name, when
a release drops it (pyproject.toml bounds these packages; the comment at each use says why the name is needed)."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import pytest


def private(owner: Any, name: str, distribution: str, used_in: str) -> Any:
    """owner.name; a failure naming the package, its version and the missing name when it is gone."""
    if not hasattr(owner, name):
        where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) or type(owner).__name__
        pytest.fail(f"{distribution} {version(distribution)} has no {where}.{name}, which {used_in} uses: adapt "
                    f"{used_in}, then the upper bound on {distribution} in pyproject.toml", pytrace=False)
    return getattr(owner, name)


def test_gguf_type_traits_lists_what_dequantize_reads():
    import gguf
    import gguf.quants

    traits = private(gguf.quants, "_type_traits", "gguf", "ct2_magics/models/gguf_model.py (_check_types)")
    assert gguf.GGMLQuantizationType.Q8_0 in traits and gguf.GGMLQuantizationType.Q4_K in traits


def test_ctranslate2_quantizes_one_layer_at_a_time():
    from ctranslate2.specs.model_spec import LayerSpec

    used_in = "ct2_magics/models/spec.py (quantize_layer, finish)"
    quantize = private(LayerSpec, "_quantize", "ctranslate2", used_in)
    private(LayerSpec, "_alias_variables", "ctranslate2", used_in)
    assert "variable_filter" in inspect.signature(quantize).parameters, (
        f"ctranslate2 {version('ctranslate2')}: LayerSpec._quantize takes no variable_filter any more; adapt {used_in}")


def test_ctranslate2_lists_its_transformers_loaders():
    import ctranslate2.converters.transformers as transformers_converter

    loaders = private(transformers_converter, "_MODEL_LOADERS", "ctranslate2",
                      "ct2_magics/models/convert_torch.py (_check_supported)")
    assert "LlamaConfig" in loaders and "Qwen2Config" in loaders


def test_ipython_maps_cell_file_names_to_execution_counts():
    from IPython.core.compilerop import CachingCompiler

    compiler = CachingCompiler()
    cells = private(compiler, "_filename_map", "ipython",
                    "ct2_magics/notebook/magics.py (%llama explain, through interpolate.error_report)")
    assert cells[compiler.cache("x = 1", number=7)] == 7
