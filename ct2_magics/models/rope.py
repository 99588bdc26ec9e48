"""Llama 3.1/3.2 RoPE scaling: read from a transformers config or a GGUF's rope_freqs, written into a CTranslate2 spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    import numpy as np
    from ctranslate2.specs.model_spec import ModelSpec

# What llama.cpp's converter assumes when a config leaves them out (and what every Llama 3.x uses).
LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class Llama3Rope:
    """The llama3 `rope_scaling` parameters of a transformers config."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_theta: float

    def factors(self, head_dim: int) -> np.ndarray:
        """The per-frequency divisors llama.cpp stores as rope_freqs (its converter's formula)."""
        import numpy as np

        freqs = 1.0 / self.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        wavelen = 2 * np.pi / freqs
        old = self.original_max_position_embeddings
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        mid = 1 / ((1 - smooth) / self.factor + smooth)
        return np.where(wavelen < old / self.high_freq_factor, 1.0,
                        np.where(wavelen > old / self.low_freq_factor, self.factor, mid))


def llama3_rope_from_config(config: Any) -> Llama3Rope | None:
    """The llama3 RoPE parameters of a transformers config (object or dict), or None for other RoPE types."""
    get = config.get if isinstance(config, dict) else (lambda name, default=None: getattr(config, name, default))
    # transformers 5 names the dict rope_parameters; 4.x keeps rope_scaling plus top-level rope_theta.
    rope = get("rope_parameters", None) or get("rope_scaling", None)
    if not isinstance(rope, dict):
        return None
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return None
    try:
        return Llama3Rope(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            rope_theta=float(rope.get("rope_theta") or get("rope_theta", None) or 10000.0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LlamaError(f"config.json has llama3 rope_scaling without a usable {exc} entry") from None


def llama3_rope_from_factors(factors: np.ndarray, rope_theta: float, head_dim: int) -> Llama3Rope | None:
    """Recover llama3 scaling from a GGUF's rope_freqs tensor; None when every factor is 1 (plain RoPE).

    llama.cpp stores the per-frequency divisors, not the parameters. Only the ratios of the parameters
    shape the divisors, so low_freq_factor is fixed at 1 and the others fitted; the result is checked
    by recomputing every divisor.
    """
    import numpy as np

    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    if factors.size != head_dim // 2:
        raise LlamaError(f"rope_freqs has {factors.size} values but the head size {head_dim} needs {head_dim // 2}.")
    if np.allclose(factors, 1.0):
        return None
    top = float(factors.max())
    candidates = [Llama3Rope(top, rope_theta=rope_theta, **LLAMA3_DEFAULTS)]  # type: ignore[arg-type]
    fitted = _fit_llama3(factors, rope_theta, head_dim)
    if fitted is not None:
        candidates.append(fitted)
    for rope in candidates:
        if np.allclose(rope.factors(head_dim), factors, rtol=1e-4, atol=1e-5):
            return rope
    raise LlamaError("This GGUF's rope_freqs do not follow Llama 3's RoPE scaling, which is the only kind this loader reads.")


def _fit_llama3(factors: np.ndarray, theta: float, head_dim: int) -> Llama3Rope | None:
    import numpy as np

    top = float(factors.max())
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    ones, tops = np.isclose(factors, 1.0, rtol=1e-5), np.isclose(factors, top, rtol=1e-5)
    band = ~ones & ~tops
    shortest_top = wavelen[tops].min() if tops.any() else wavelen.max() * 2
    longest_one = wavelen[ones].max() if ones.any() else wavelen.min() / 2
    s = (1 / factors[band] - 1 / top) / (1 - 1 / top)  # the smooth weight: (old / wavelen - low) / (high - low)
    if band.sum() >= 2:
        slope, offset = np.polyfit(1 / wavelen[band], s, 1)
        if offset >= 0 or slope <= 0:
            return None
        old = round(-slope / offset)
    else:
        old = round(float(np.sqrt((wavelen[band][0] if band.any() else longest_one) * shortest_top)))
    # The context length is a whole number; high_freq_factor then follows from the smooth band.
    if band.any():
        high = 1 + float(np.mean((old / wavelen[band] - 1) / s))
    else:
        high = float(np.sqrt(old / longest_one))
    if not (high > 1 and old > 0):
        return None
    return Llama3Rope(top, 1.0, high, int(old), theta)


def apply_llama3_rope(spec: ModelSpec, rope: Llama3Rope) -> bool:
    """Write llama3 RoPE scaling into every decoder self-attention of a spec; False if none."""
    import numpy as np
    from ctranslate2.specs.attention_spec import RotaryScalingType

    layers = getattr(getattr(spec, "decoder", None), "layer", None) or []
    values = {
        "rotary_scaling_type": np.int8(RotaryScalingType.Llama3),
        "rotary_scaling_factor": np.float32(rope.factor),
        "rotary_low_freq_factor": np.float32(rope.low_freq_factor),
        "rotary_high_freq_factor": np.float32(rope.high_freq_factor),
        "original_max_position_embeddings": np.int32(rope.original_max_position_embeddings),
        # The stock loader reads rope_theta from rope_scaling only, which transformers 4.x leaves out.
        "rotary_base": np.float32(rope.rope_theta),
    }
    patched = 0
    for layer in layers:
        attention = getattr(layer, "self_attention", None)
        if attention is None:
            continue
        for name, value in values.items():
            # Specs refuse new attributes after __init__; these are ones the C++ side reads.
            object.__setattr__(attention, name, value)
        patched += 1
    return patched > 0
