"""The sampling options, declared once: the magic's flags, `%llama help`, the panel's fields, LlamaSettings and
validation are all built from OPTIONS, so every front end accepts and refuses the same values with the same line."""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ct2_magics.errors import LlamaError

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Option:
    """One sampling option: its names, type, range, defaults and what CTranslate2 calls it."""

    name: str  # the API's and LlamaSettings' name
    kind: type  # int or float
    default: Any  # used when neither the user nor the model says otherwise
    flags: tuple[str, ...]  # the %%llama flags
    metavar: str
    help: str
    label: str  # the panel's field
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    ct2: str | None = None  # the keyword of Generator.generate_tokens / generate_batch
    hub: str | None = None  # the key of generation_config.json

    @property
    def allowed(self) -> str:
        """The values it takes, in words."""
        what = "a whole number" if self.kind is int else "a number"
        if self.low is not None and self.high is not None and not self.low_open:
            return f"{what} from {_num(self.low)} to {_num(self.high)}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            bounds.append(f"<= {_num(self.high)}")
        return f"{what} {' and '.join(bounds)}" if bounds else what

    def check(self, value: Any) -> Any:
        """`value` (a number, or text as typed) as this option's type; LlamaError saying what it takes otherwise."""
        number = _parse(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            self._refuse(value)
        if self.kind is int:
            if isinstance(number, float) and not number.is_integer():
                self._refuse(number)
            number = int(number)
        else:
            number = float(number)
            if not _finite_in_float32(number) or (self.low_open and self.low == 0 and _float32(number) == 0.0):
                self._refuse(number)  # CTranslate2 takes float32: 1e-320 would reach it as 0, 1e39 as inf
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            self._refuse(number)
        if self.high is not None and number > self.high:
            self._refuse(number)
        return number

    def _refuse(self, shown: Any) -> None:
        note = f" ({self.help.split(';')[-1].strip()})" if ";" in self.help else ""
        raise LlamaError(f"{self.name} must be {self.allowed}{note}; got {shown!r}.")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _parse(text: str) -> Any:
    """Text as a number where it is one (so that '1e-320' and 1e-320 get the same answer), else the text."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _finite_in_float32(x: float) -> bool:
    if not math.isfinite(x):
        return False
    try:
        return math.isfinite(_float32(x))
    except OverflowError:
        return False


OPTIONS: tuple[Option, ...] = (
    Option("temperature", float, 0.7, ("-t", "--temperature"), "T", "randomness; 0 means greedy", "temperature",
           low=0, ct2="sampling_temperature", hub="temperature"),
    Option("top_k", int, 0, ("--top-k",), "K", "sample from the K likeliest tokens; 0 means no cut", "top-k",
           low=0, high=INT32_MAX, ct2="sampling_topk", hub="top_k"),
    Option("top_p", float, 1.0, ("--top-p",), "P", "sample from the likeliest tokens that hold P of the probability",
           "top-p", low=0, high=1, low_open=True, ct2="sampling_topp", hub="top_p"),
    Option("max_tokens", int, 512, ("-n", "--max-tokens"), "N", "most tokens in the reply", "max tokens",
           low=1, high=INT32_MAX, ct2="max_length", hub="max_new_tokens"),
    Option("repetition_penalty", float, 1.0, ("--repetition-penalty",), "R",
           "above 1 discourages repeating; 1 means none", "repetition penalty", low=0, low_open=True,
           ct2="repetition_penalty", hub="repetition_penalty"),
    Option("seed", int, None, ("--seed",), "N",
           "CTranslate2's random seed (repeats sampling only on a freshly loaded model)", "seed",
           low=0, high=2**32 - 1),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def spell(name: str, origin: str) -> str:
    """An option as the front end `origin` writes it: -n in the magic, the max tokens field in the panel, else its name."""
    option = BY_NAME[name]
    if origin == "magic":
        return option.flags[0]
    return f"the {option.label} field" if origin == "panel" else name


def check_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validated options (None means 'not given' and is dropped); LlamaError for an unknown name or a bad value."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise LlamaError(f"Unknown setting {unknown[0]!r}; use one of: {', '.join(NAMES)}.")
    return {name: BY_NAME[name].check(v) for name, v in values.items() if v is not None}


def model_defaults(gen_config: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling defaults from a model's generation_config.json; values this table refuses are left out."""
    out: dict[str, Any] = {}
    if gen_config.get("do_sample") is False:
        out["temperature"] = 0.0
    for option in OPTIONS:
        raw = gen_config.get(option.hub) if option.hub else None
        if raw is None or option.name in out:
            continue
        try:
            out[option.name] = option.check(raw)
        except LlamaError:
            pass  # a model's odd default must not make every request fail
    return out


class Sampling:
    """The settings of one request: every option resolved (explicit > settings > model > built-in) and checked."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = {o.name: values.get(o.name, o.default) for o in OPTIONS}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def to_ct2(self, vocabulary_size: int | None = None) -> dict[str, Any]:
        """Keyword arguments for Generator.generate_tokens / generate_batch."""
        out = {o.ct2: self._values[o.name] for o in OPTIONS if o.ct2}
        if self.temperature == 0:  # greedy
            out.update(sampling_topk=1, sampling_topp=1.0, sampling_temperature=1.0)
        elif vocabulary_size and out["sampling_topk"] >= vocabulary_size:
            out["sampling_topk"] = 0  # a cut above the vocabulary is no cut (CTranslate2 refuses it)
        return out

    def __repr__(self) -> str:
        return f"Sampling({self._values})"


def resolve(explicit: Mapping[str, Any], settings: Any, model: Mapping[str, Any]) -> Sampling:
    """Explicit options beat user settings, which beat the model's generation_config, which beats the defaults."""
    values = dict(model)
    values.update({n: getattr(settings, n) for n in NAMES if getattr(settings, n, None) is not None})
    values.update(check_options(explicit))
    return Sampling(values)


def add_arguments(parser: Any) -> None:
    """Add every option's flags to an argparse parser, as text: check_options reads them, as for every front end."""
    for o in OPTIONS:
        parser.add_argument(*o.flags, dest=o.name, metavar=o.metavar)


def help_lines(names: Iterable[str] = NAMES, indent: str = "  ", width: int = 25) -> list[str]:
    """`%llama help` lines for some options."""
    lines = []
    for name in names:
        o = BY_NAME[name]
        flags = "/".join(o.flags) + f" {o.metavar}"
        lines.append(f"{indent}{flags:<{width - len(indent)}}{o.help}")
    return lines
