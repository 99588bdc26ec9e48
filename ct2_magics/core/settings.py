"""Kernel-wide settings as traitlets, so `%config LlamaSettings.x = ...` and ipython_config.py work; values are checked."""

from __future__ import annotations

import math
import os
from typing import Any

from traitlets import Bool, CFloat, CInt, Enum, TraitError, TraitType, Unicode, default, validate
from traitlets.config import Configurable

from ct2_magics.core.options import OPTIONS, Option
from ct2_magics.errors import LlamaError, check_text

REFERENCE_MODEL = "avans06/Meta-Llama-3.2-8B-Instruct-ct2-int8_float16"


class SettingError(LlamaError, TraitError):
    """A setting refused: one line from %config (traitlets' own error) and from Python (a LlamaError)."""


class OptionTrait(TraitType):
    """A sampling option as a setting: None (the model's default) or a value the option's own check accepts."""

    def __init__(self, option: Option) -> None:
        super().__init__(None, allow_none=True, help=f"{option.help[:1].upper()}{option.help[1:]}.")
        self.option = option
        self.info_text = f"{option.allowed}, or None for the model's default"
        self.tag(config=True)

    def validate(self, obj: Any, value: Any) -> Any:
        try:
            return self.option.check(value)
        except LlamaError as e:
            raise SettingError(f"LlamaSettings.{e}") from None

    def from_string(self, s: str) -> Any:  # `--LlamaSettings.top_k=40` on a command line: the check reads text
        return None if s.strip() == "None" else s


# Whole numbers the settings take: (smallest, largest).
_COUNTS = {"threads": (0, 1024), "max_context": (16, 2**31 - 1), "batch_size": (1, 2**31 - 1),
           "prefix_cache_mb": (0, 2**31 - 1)}


class LlamaSettings(Configurable):
    """Defaults for loading and generating; None means the model's own default."""

    model = Unicode(help="Model loaded when a prompt runs with none loaded (env CT2_MAGICS_MODEL); the reference "
                    "model by default, smollm2 when that is neither cached nor reachable.").tag(config=True)
    device = Enum(["auto", "cpu", "cuda"], "auto", help="Where the model runs.").tag(config=True)
    compute_type = Unicode("auto", help="CTranslate2 compute type, or auto.").tag(config=True)
    threads = CInt(0, help="CPU threads for decoding; 0 lets ct2-magics choose.").tag(config=True)
    system = Unicode(None, allow_none=True, help="System prompt for new chats.").tag(config=True)
    # The sampling options, one trait each, from the one table in options.py.
    vars().update({o.name: OptionTrait(o) for o in OPTIONS})
    max_context = CInt(8192, help="Most prompt+reply tokens; older turns are left out to fit.").tag(config=True)
    batch_size = CInt(16, help="Prompts decoded together (by each batch worker) in llama.generate and llama.map.").tag(config=True)
    prefill = Bool(True, help="After a reply, while you read, prefill the chat so far into CTranslate2's cache, so the "
                   "next turn costs only its new tokens.").tag(config=True)
    prefix_cache_mb = CInt(1024, help="Memory (MB) CTranslate2 may keep for cached prompt prefixes (prefilled chats, "
                           "system prompts, what a batch's prompts share); emptied in idle time when full; 0: cache none.").tag(config=True)
    updates_per_second = CFloat(15.0, help="Most display updates per second while streaming.").tag(config=True)
    render = Enum(["auto", "markdown", "text"], "auto", help="How replies show in a cell.").tag(config=True)
    remote_images = Bool(False, help="Load images a reply links to from other sites. Off: they show as a link, since "
                         "an image address can carry what the model read to whoever runs that site.").tag(config=True)
    stop_loops = Bool(True, help="Stop a reply that has fallen into a loop (one short span written over and over, as "
                      "small models do) and mark it; off for replies that should repeat.").tag(config=True)
    quiet = Bool(False, help="Hide one-line notices (compute type changes, trimmed context).").tag(config=True)
    autosave = Bool(True, help="Save each notebook's chats as they change and restore them when the extension "
                    "loads in that notebook again (in the user's data directory; env CT2_MAGICS_DATA).").tag(config=True)

    @default("model")
    def _default_model(self) -> str:
        return os.environ.get("CT2_MAGICS_MODEL") or REFERENCE_MODEL

    @validate(*_COUNTS)
    def _check_count(self, proposal: Any) -> int:
        name, value = proposal["trait"].name, proposal["value"]
        low, high = _COUNTS[name]
        if not low <= value <= high:
            raise SettingError(f"LlamaSettings.{name} must be a whole number from {low} to {high}; got {value!r}.")
        return value

    @validate("updates_per_second")
    def _check_rate(self, proposal: Any) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and value > 0):
            raise SettingError(f"LlamaSettings.updates_per_second must be a number > 0; got {value!r}.")
        return value

    @validate("system")
    def _check_system(self, proposal: Any) -> str | None:
        value = proposal["value"]
        if value is not None:
            try:
                check_text(value, "system prompt")
            except LlamaError as e:
                raise SettingError(f"LlamaSettings.system: {e}") from None
        return value
