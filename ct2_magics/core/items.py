"""The rows of one `llama.generate` / `llama.map` call, local or on a cluster: reading the items (a list or a
pandas Series), filling the template, what cannot be asked and why, the replies by position, and the result in
the input's shape. The core reports progress through a Progress; the front ends draw it."""

from __future__ import annotations

import cmath
import decimal
import numbers
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ct2_magics.errors import LlamaError, check_text

ERROR_MODES = ("warn", "raise", "ignore")


@dataclass(frozen=True)
class ItemError:
    """Why one item got no result (or, in last_loops, why its reply was stopped early): its position, its label (the
    Series index, else the position) and the reason."""

    position: int
    label: Any
    reason: str


class Progress(Protocol):
    """What a batch tells its front end as it goes (the front end draws a bar, or nothing)."""

    def start(self, total: int, unit: str, *, long: bool) -> None: ...  # long: worth a bar when nobody said

    def advance(self, n: int) -> None: ...

    def note(self, text: str) -> None: ...  # e.g. "waiting for the model"; "" clears it

    def close(self) -> None: ...


class Silent:
    """A Progress that shows nothing."""

    def start(self, total: int, unit: str, *, long: bool) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def whole_number(value: Any, name: str) -> int:
    """A count of at least 1 (batch_size, partition_size); LlamaError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LlamaError(f"{name} must be a whole number >= 1; got {value!r}.")
    return value


def check_errors_mode(errors: Any) -> str:
    if errors not in ERROR_MODES:
        raise LlamaError(f"errors must be one of {', '.join(ERROR_MODES)}; got {errors!r}.")
    return errors


def as_series(items: Any) -> Any:
    """`items` if it is a pandas Series, else None; LlamaError for a whole DataFrame."""
    pd = sys.modules.get("pandas")  # only a Series needs pandas, and a Series means pandas is imported
    if pd is None:
        return None
    if isinstance(items, pd.DataFrame):
        raise LlamaError("map takes one column (df['text']) or a list, not a whole DataFrame.")
    return items if isinstance(items, pd.Series) else None


def list_items(items: Any, what: str, noun: str) -> list[Any]:
    """The items of a list-like argument; LlamaError for text, a mapping or something that is not a collection."""
    if isinstance(items, (str, bytes)):
        raise LlamaError(f"{what} takes a list of {noun}; a single string would be asked letter by letter.")
    if isinstance(items, Mapping) or isinstance(items, type):
        hint = " (for a dict, pass list(d.values()) or pd.Series(d))" if isinstance(items, Mapping) or items is dict else ""
        raise LlamaError(f"{what} takes a list of {noun} or a pandas Series, not a {type(items).__name__}{hint}.")
    try:
        return list(items)
    except TypeError:
        raise LlamaError(f"{what} takes a list of {noun} or a pandas Series; got {type(items).__name__}.") from None


def template_filler(template: str) -> Callable[[str], str]:
    """The function that puts an item into `template` ({} marks the place); LlamaError for a template that cannot be filled."""
    if not isinstance(template, str):
        raise LlamaError(f"The template must be a string like 'Summarise: {{}}'; got {type(template).__name__}.")
    check_text(template, "template")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise LlamaError(f"The template {template!r} is not a valid format string ({e}); write literal braces as {{{{ }}}}.") from None
    if not fields:
        return lambda text: f"{template.rstrip()}\n\n{text}" if template.strip() else text
    named = [f for f in fields if f not in ("", "0") and not f.startswith(("0.", "0[", "0!", "0:"))]
    if named:
        raise LlamaError(f"The template has a field {{{named[0]}}}; use {{}} for the item, and double literal braces "
                         f"(JSON examples too): {{{{ }}}}.")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError, AttributeError) as e:
        raise LlamaError(f"The template {template!r} cannot be filled ({e}); use {{}} for the item.") from None
    return template.format


def is_missing(value: Any) -> bool:
    """Whether `value` is a missing value: None, any NaN (Python, numpy of any width, Decimal), pd.NA, NaT."""
    if value is None:
        return True
    if isinstance(value, decimal.Decimal):
        return value.is_nan()
    if isinstance(value, numbers.Complex):  # float, complex, numpy's numbers
        try:
            return cmath.isnan(complex(value))
        except (TypeError, ValueError, OverflowError):
            return False
    pd = sys.modules.get("pandas")
    if pd is not None:
        try:
            flag = pd.isna(value)
        except (TypeError, ValueError):
            return False
        return bool(flag) if getattr(flag, "ndim", 0) == 0 else False  # a list-like value is not a missing one
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return False


def prompts_of(values: list[Any], fill: Callable[[str], str]) -> tuple[list[str], dict[int, str]]:
    """Prompt texts, and for the items that cannot be asked, why (by position)."""
    texts: list[str] = []
    problems: dict[int, str] = {}
    for pos, value in enumerate(values):
        text = ""
        if isinstance(value, str):
            text = value
        elif is_missing(value):
            problems[pos] = "missing value"
        elif isinstance(value, numbers.Number):
            text = str(value)
        else:
            problems[pos] = f"not text or a number (a {type(value).__name__})"
        if pos not in problems and not text.strip():
            problems[pos] = "empty text"
        elif pos not in problems and not _encodable(text):
            problems[pos] = "holds an invalid character (a lone surrogate)"
        texts.append(fill(text) if pos not in problems else "")
    return texts, problems


def _encodable(text: str) -> bool:
    try:
        check_text(text, "item")
    except LlamaError:
        return False
    return True


class Rows:
    """The items of one call: values and labels as given, their prompts, and the replies and failures by position."""

    def __init__(self, items: Any, template: str | None, *, what: str, noun: str) -> None:
        """template: where each item goes ({}); None: each item is the prompt itself."""
        self.what = what
        self.series = as_series(items)
        self.values = list_items(items, what.rpartition(".")[2], noun) if self.series is None else self.series.tolist()
        self.labels = list(range(len(self.values))) if self.series is None else list(self.series.index)
        self.template = template
        self.fill: Callable[[str], str] = str if template is None else template_filler(template)
        self.prompts, self.problems = prompts_of(self.values, self.fill)
        self.replies: list[str | None] = [None] * len(self.values)
        self.failures: list[ItemError] = []
        self.loops: list[ItemError] = []  # replies stopped in a loop (core/loops.py): kept up to there, not failures
        self.cut: list[ItemError] = []  # replies that reached max_tokens: kept as written, not failures

    def __len__(self) -> int:
        return len(self.values)

    def fail(self, position: int, reason: str) -> ItemError:
        error = ItemError(position, self.labels[position], reason)
        self.failures.append(error)
        return error

    def looped(self, position: int, reason: str) -> None:
        """Mark that the reply at `position` fell into a loop and was stopped (loop_reason(span) says how)."""
        self.loops.append(ItemError(position, self.labels[position], reason))

    def was_cut(self, position: int, reason: str) -> None:
        """Mark that the reply at `position` reached max_tokens and ends where it was cut (cut_reason says so)."""
        self.cut.append(ItemError(position, self.labels[position], reason))

    def refused(self, errors: str) -> None:
        """With errors='raise', LlamaError for the items that cannot be asked, before anything is generated."""
        if self.problems and errors == "raise":
            failed = [self.fail(p, self.problems[p]) for p in sorted(self.problems)]
            raise LlamaError(f"{self.what}: {summary(failed, len(self), raised=True)}")

    def result(self) -> Any:
        """The replies in the input's shape: a list, or a Series on the input's index."""
        self.failures.sort(key=lambda f: f.position)
        self.loops.sort(key=lambda f: f.position)
        self.cut.sort(key=lambda f: f.position)
        if self.series is None:
            return list(self.replies)
        pd = sys.modules["pandas"]
        return pd.Series(self.replies, index=self.series.index, name=self.series.name, dtype=object)


def summary(failures: list[ItemError], total: int, raised: bool = False) -> str:
    """One line about the items that got no reply."""
    shown = "; ".join(f"item {f.label!r}: {f.reason}" for f in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    if raised:
        return f"{len(failures)} of {total} items cannot be answered ({shown}{more}); nothing was generated."
    return f"{len(failures)} of {total} items failed and are None ({shown}{more}); details in llama.last_errors."


def loop_reason(span: str) -> str:
    """Why a reply was stopped early, naming the span it repeated (shortened)."""
    shown = span if len(span) <= 30 else span[:27] + "..."
    return f"fell into a loop ({shown!r} over and over) and was stopped"


def cut_reason(max_tokens: int) -> str:
    return f"reached max_tokens ({max_tokens}) and was cut short"


def cut_summary(cut: list[ItemError], total: int) -> str:
    """One line about the replies cut at max_tokens."""
    shown = ", ".join(repr(f.label) for f in cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
    many = len(cut) > 1
    limit = cut[0].reason.partition("(")[2].partition(")")[0]
    return (f"{len(cut)} of {total} replies reached max_tokens ({limit}) and {'were' if many else 'was'} cut short "
            f"(item{'s' * many} {shown}); raise max_tokens for whole replies; details in llama.last_cut.")


def loop_summary(loops: list[ItemError], total: int) -> str:
    """One line about the replies stopped in a loop."""
    shown = ", ".join(repr(f.label) for f in loops[:3]) + (f" and {len(loops) - 3} more" if len(loops) > 3 else "")
    many = len(loops) > 1
    return (f"{len(loops)} of {total} items fell into a loop and {'were' if many else 'was'} stopped "
            f"(item{'s' * many} {shown}); "
            "each keeps its text up to the loop; details in llama.last_loops (LlamaSettings.stop_loops = False lets "
            "them run on).")
