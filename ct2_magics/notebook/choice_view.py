"""`%%llama --choices`: the label and each choice's probability as a small bar chart, in sanitised HTML (every
choice is text, escaped, and the fragment goes through the replies' allow-list) or inert plain text."""

from __future__ import annotations

from typing import Any

from ct2_magics.errors import LlamaError
from ct2_magics.notebook.markup import escaped, inert_text, sanitised
from ct2_magics.notebook.render import wants_markdown

BAR_CELLS = 20  # a bar of probability 1 is this many characters wide
_EIGHTHS = " ▏▎▍▌▋▊▉"


def split_choices(typed: str) -> list[str]:
    """The labels of --choices "a, b, c": comma-separated, each trimmed (core/choices.py checks them)."""
    labels = [part.strip() for part in typed.split(",")]
    if len(labels) > 1 and not all(labels):
        blank = next(n for n, label in enumerate(labels, 1) if not label)
        raise LlamaError(f'--choices: label {blank} is blank; write the labels between commas, like --choices "yes, no".')
    return [label for label in labels if label]


def bar(probability: float) -> str:
    """A horizontal bar of block characters, BAR_CELLS wide at probability 1, to an eighth of a character."""
    eighths = round(max(0.0, min(1.0, probability)) * BAR_CELLS * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def chart_text(label: str, probabilities: dict[str, float]) -> str:
    width = max(len(c) for c in probabilities)
    lines = [f"{c:<{width}}  {bar(p):<{BAR_CELLS}}  {p:6.1%}" for c, p in probabilities.items()]
    return inert_text("\n".join([label, *lines]))


def chart_html(label: str, probabilities: dict[str, float]) -> str:
    rows = []
    for choice, p in probabilities.items():
        name = f"<strong>{escaped(choice)}</strong>" if choice == label else escaped(choice)
        rows.append(f'<tr><td style="text-align: left">{name}</td><td style="text-align: left">{bar(p)}</td>'
                    f'<td style="text-align: right">{p:.1%}</td></tr>')
    fragment = f"<p><strong>{escaped(label)}</strong></p><table><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="ct2-md ct2-choices">{sanitised(fragment)}</div>'


def show(reply: Any, shell: Any, *, mode: str = "auto", plain: bool = False, quiet: bool = False) -> str:
    """Score `reply` (a core.choices.ChoiceReply), show its label and bars in the cell, and return the label."""
    label = reply.answer()
    if not quiet:
        for line in reply.notices:
            print(inert_text(line))
    probabilities = reply.probabilities
    text = chart_text(label, probabilities)
    if not wants_markdown(shell, mode):
        print(text)
        return label
    from IPython.display import display

    bundle = {"text/plain": text} if plain else {"text/html": chart_html(label, probabilities), "text/plain": text}
    display(bundle, raw=True, metadata={"ct2_magics": reply.metadata()})
    return label
