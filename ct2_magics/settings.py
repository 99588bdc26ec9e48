"""Kernel-wide settings as traitlets, so `%config LlamaSettings.x = ...` and ipython_config.py work."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from traitlets import Bool, CFloat, CInt, Enum, Unicode, default
from traitlets.config import Configurable

from .errors import LlamaError

REFERENCE_MODEL = "avans06/Meta-Llama-3.2-8B-Instruct-ct2-int8_float16"

# Used when neither the user nor the model's generation_config.json says otherwise.
BUILTIN = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "max_tokens": 512, "repetition_penalty": 1.0}


class LlamaSettings(Configurable):
    """Defaults for loading and generating; None means the model's own default."""

    model = Unicode(help="Model loaded when a prompt runs with none loaded (env CT2_MAGICS_MODEL).").tag(config=True)
    device = Enum(["auto", "cpu", "cuda"], "auto", help="Where the model runs.").tag(config=True)
    compute_type = Unicode("auto", help="CTranslate2 compute type, or auto.").tag(config=True)
    threads = CInt(0, help="CPU threads for decoding; 0 lets CTranslate2 choose.").tag(config=True)
    system = Unicode(None, allow_none=True, help="System prompt for new chats.").tag(config=True)
    temperature = CFloat(None, allow_none=True, help="0 means greedy.").tag(config=True)
    top_k = CInt(None, allow_none=True, help="0 means no top-k cut.").tag(config=True)
    top_p = CFloat(None, allow_none=True).tag(config=True)
    max_tokens = CInt(None, allow_none=True, help="Most tokens in one reply.").tag(config=True)
    repetition_penalty = CFloat(None, allow_none=True).tag(config=True)
    max_context = CInt(8192, help="Most prompt+reply tokens; older turns are left out to fit.").tag(config=True)
    batch_size = CInt(16, help="Prompts decoded together by llama.generate and llama.map.").tag(config=True)
    updates_per_second = CFloat(15.0, help="Most display updates per second while streaming.").tag(config=True)
    render = Enum(["auto", "markdown", "text"], "auto", help="How replies show in a cell.").tag(config=True)
    remote_images = Bool(False, help="Load images a reply links to from other sites. Off: they show as a link, since "
                         "an image address can carry what the model read to whoever runs that site.").tag(config=True)
    quiet = Bool(False, help="Hide one-line notices (compute type changes, trimmed context).").tag(config=True)
    autosave = Bool(True, help="Save each notebook's chats as they change and restore them when the extension "
                    "loads in that notebook again (in the user's data directory; env CT2_MAGICS_DATA).").tag(config=True)

    @default("model")
    def _default_model(self) -> str:
        return os.environ.get("CT2_MAGICS_MODEL") or REFERENCE_MODEL


@dataclass(frozen=True)
class Sampling:
    """Generation settings of one request, validated."""

    temperature: float = BUILTIN["temperature"]
    top_k: int = BUILTIN["top_k"]
    top_p: float = BUILTIN["top_p"]
    max_tokens: int = BUILTIN["max_tokens"]
    repetition_penalty: float = BUILTIN["repetition_penalty"]
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "temperature": (self.temperature >= 0, "a number >= 0 (0 means greedy)"),
            "top_k": (self.top_k >= 0, "a whole number >= 0 (0 means no cut)"),
            "top_p": (0 < self.top_p <= 1, "a number in (0, 1]"),
            "max_tokens": (self.max_tokens >= 1, "a whole number >= 1"),
            "repetition_penalty": (self.repetition_penalty > 0, "a number > 0 (1 means none)"),
            "seed": (self.seed is None or self.seed >= 0, "a whole number >= 0"),
        }
        for name, (ok, what) in checks.items():
            if not ok:
                raise LlamaError(f"{name} must be {what}; got {getattr(self, name)}.")

    def to_ct2(self) -> dict[str, Any]:
        """Keyword arguments for Generator.generate_tokens / generate_batch."""
        greedy = self.temperature == 0
        return {
            "max_length": self.max_tokens,
            "sampling_topk": 1 if greedy else self.top_k,
            "sampling_topp": 1.0 if greedy else self.top_p,
            "sampling_temperature": 1.0 if greedy else self.temperature,
            "repetition_penalty": self.repetition_penalty,
        }

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SAMPLING_NAMES = tuple(f.name for f in fields(Sampling))
_CASTS = {"temperature": float, "top_k": int, "top_p": float, "max_tokens": int, "repetition_penalty": float, "seed": int}


def resolve_sampling(explicit: dict[str, Any], settings: LlamaSettings, model_defaults: dict[str, Any]) -> Sampling:
    """Explicit options beat user settings, which beat the model's generation_config, which beats BUILTIN."""
    unknown = set(explicit) - set(SAMPLING_NAMES)
    if unknown:
        raise LlamaError(f"Unknown setting {sorted(unknown)[0]!r}; use one of: {', '.join(SAMPLING_NAMES)}.")
    values: dict[str, Any] = dict(BUILTIN)
    values.update({k: v for k, v in model_defaults.items() if k in _CASTS and v is not None})
    values.update({k: getattr(settings, k) for k in BUILTIN if getattr(settings, k) is not None})
    values.update({k: v for k, v in explicit.items() if v is not None})
    out = {}
    for name, value in values.items():
        try:
            out[name] = _CASTS[name](value)
        except (TypeError, ValueError):
            raise LlamaError(f"{name} must be a number; got {value!r}.") from None
        if isinstance(value, float) and _CASTS[name] is int and value != int(value):
            raise LlamaError(f"{name} must be a whole number; got {value!r}.")
    return replace(Sampling(), **out)
