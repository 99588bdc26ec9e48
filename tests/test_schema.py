"""schema=: every reply is JSON that fits its schema (checked by jsonschema, an independent validator), greedy decoding
is exactly the argmax over the tokens the schema allows (checked against a brute-force loop over forward_batch), and
bad schemas are one line that loses nothing."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Literal, Optional, TypedDict

import jsonschema
import numpy as np
import pytest
from helpers import htmls, plains, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ct2_magics.errors import LlamaError

HOSTILE = ['say "hi"', "back\\slash", "two\nlines", "tab\there", "café ünïcödé", "emoji 😀🎉", "\u0001ctrl",
           "```\n<img src=x onerror=alert(1)>", "<|eot_id|>", "", " ", "{}", "\\u0041"]
REVIEW = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]},
                                           "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                           "topic": {"type": "string", "maxLength": 12}},
          "required": ["sentiment", "rating", "topic"]}
# How a reply is written: json.dumps's separators and no other whitespace (so greedy replies can be compared).
STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@pytest.fixture
def llama(llama):
    llama.settings.max_context = 8192
    llama.settings.batch_size = 16
    llama.settings.system = None
    llama.load("demo")
    return llama


def brute_force(llama, prompt: str, schema: dict, max_tokens: int) -> str:
    """Greedy constrained decoding the slow, obvious way: at every step, forward_batch over prompt + reply so far, the
    schema's mask from a fresh llguidance matcher, and the argmax over the allowed tokens (an end token only once the
    JSON is complete). No fast-forward, no reuse of the model's own picks."""
    import llguidance

    tokenizer, generator = llama.tokenizer, llama.generator
    vocab = len(json.loads((llama.engine.model_dir / "vocabulary.json").read_text()))
    ends = tokenizer.convert_tokens_to_ids(llama.engine.end_tokens)
    lltok = llguidance.LLTokenizer(tokenizer.backend_tokenizer.to_str(), n_vocab=vocab, eos_token=ends)
    matcher = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(
        {**schema, "additionalProperties": schema.get("additionalProperties", False)} if schema.get("type") == "object"
        else schema, overrides=STYLE))
    prompt_ids = llama.engine.prompt_ids([{"role": "user", "content": prompt}])
    reply: list[int] = []
    while len(reply) < max_tokens and not matcher.is_stopped():
        tokens = tokenizer.convert_ids_to_tokens(prompt_ids + reply)
        log_probs = np.array(generator.forward_batch([tokens], return_log_probs=True))[0, -1]
        allowed = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")[:vocab]
        allowed = allowed.astype(bool)
        allowed[ends] = matcher.is_accepting()
        best = int(np.argmax(np.where(allowed, log_probs, -np.inf)))
        if best in ends:
            break
        assert matcher.consume_token(best)
        reply.append(best)
    return tokenizer.decode(reply, skip_special_tokens=True)


EXACT = [
    (REVIEW, "Review: the kettle leaks, awful."),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                                "minItems": 1, "maxItems": 3},
                                       "score": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
                                       "ok": {"type": "boolean"}},
      "required": ["tags", "score", "ok"]}, "Tag this: a cat in the morning."),
    ({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"enum": ["none", "many", 'q"uote']}]}, "How many?"),
    ({"type": "string", "minLength": 3, "maxLength": 20}, "Name a robot."),
]


@pytest.mark.parametrize("schema,prompt", EXACT, ids=["object", "array-null-bool", "anyOf", "string"])
def test_greedy_equals_brute_force_argmax_over_allowed_tokens(llama, schema, prompt):
    reply = llama.stream(prompt, schema=schema, temperature=0, max_tokens=80, once=True)
    value = reply.value()
    jsonschema.validate(value, schema)
    assert reply.text == brute_force(llama, prompt, schema, 80)
    assert reply.text == json.dumps(value, ensure_ascii=False)  # written the way json.dumps writes it


def test_batched_greedy_equals_brute_force_too(llama):
    prompts = ["Review: great lamp.", "Review: the straps broke.", "Review: fine.", "hi"]
    values = llama.generate(prompts, schema=REVIEW, temperature=0, max_tokens=80)
    assert [json.dumps(v, ensure_ascii=False) for v in values] == [brute_force(llama, p, REVIEW, 80) for p in prompts]


# -- validity: property-based over hostile schemas and strings -----------------------------------------------------------
text = st.sampled_from(HOSTILE) | st.text(st.characters(blacklist_categories=["Cs"]), max_size=6)
scalars = st.one_of(
    st.builds(lambda lo, span, kind: {"type": kind, "minimum": lo, "maximum": lo + span},
              st.integers(-50, 50), st.integers(0, 40), st.sampled_from(["integer", "number"])),
    st.builds(lambda lo, span: {"type": "string", "minLength": lo, "maxLength": lo + span}, st.integers(0, 3), st.integers(0, 8)),
    st.builds(lambda values: {"enum": values}, st.lists(text | st.integers(-3, 3) | st.booleans() | st.none(), min_size=1,
                                                        max_size=4, unique_by=lambda v: json.dumps(v))),
    st.builds(lambda value: {"const": value}, text),
    st.just({"type": "boolean"}), st.just({"type": "null"}), st.just({"type": ["integer", "null"], "maximum": 9, "minimum": 0}),
)


def _nested(children):
    objects = st.builds(lambda props, k: {"type": "object", "properties": dict(props), "required": [n for n, _ in props][:k]},
                        st.lists(st.tuples(text, children), max_size=3, unique_by=lambda p: p[0]), st.integers(0, 3))
    arrays = st.builds(lambda items, lo, span: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + span},
                       children, st.integers(0, 2), st.integers(0, 2))
    return objects | arrays | st.builds(lambda arms: {"anyOf": arms}, st.lists(children, min_size=1, max_size=3))


schemas = st.recursive(scalars, _nested, max_leaves=6)


@pytest.mark.parametrize("temperature", [0, 1.5])
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(schema=schemas, prompt=st.sampled_from(["Reply in JSON.", 'He said "no" \\ then left.\n\tOK 😀', "é"]))
def test_every_reply_fits_its_schema(llama, temperature, schema, prompt):
    reply = llama.stream(prompt, schema=schema, temperature=temperature, max_tokens=120, once=True)
    try:
        value = reply.value()
    except LlamaError as e:  # the only way out without a value: the reply did not fit in max_tokens, said in one line
        assert "max_tokens (120) ran out" in str(e) and "\n" not in str(e)
        if '"number"' in json.dumps(schema):
            return  # a number's decimals may go on forever (the demo model loops on "2")
        # Everything else these schemas allow is bounded (lengths, items, enums): with room enough it must end.
        reply = llama.stream(prompt, schema=schema, temperature=temperature, max_tokens=2000, once=True)
        value = reply.value()
    jsonschema.validate(value, schema)
    assert json.loads(reply.text) == value


def test_hostile_strings_are_escaped_right_at_any_temperature(llama):
    schema = {"type": "object", "properties": {k: {"const": k} for k in HOSTILE[:9]} | {"pick": {"enum": HOSTILE}},
              "required": HOSTILE[:9] + ["pick"]}
    picks = set()
    for temperature in (0,) + (1.5,) * 9:  # nine draws: all alike would be a flat-out sampling bug, not bad luck
        value = llama.ask("Fill it in.", schema=schema, temperature=temperature, max_tokens=300, once=True)
        jsonschema.validate(value, schema)
        assert all(value[k] == k for k in HOSTILE[:9])
        picks.add(value["pick"])
    assert len(picks) > 1  # sampling really drew among the allowed values


def exact_distribution(llama, prompt: str, schema: dict, temperature: float) -> dict[str, float]:
    """Each value's probability when every token is drawn from the model's distribution (forward_batch, at this
    temperature) restricted to the tokens the schema allows: the whole tree of a small enum, walked exhaustively."""
    import llguidance

    tokenizer, generator = llama.tokenizer, llama.generator
    vocab = len(json.loads((llama.engine.model_dir / "vocabulary.json").read_text()))
    ends = tokenizer.convert_tokens_to_ids(llama.engine.end_tokens)
    lltok = llguidance.LLTokenizer(tokenizer.backend_tokenizer.to_str(), n_vocab=vocab, eos_token=ends)
    prompt_ids = llama.engine.prompt_ids([{"role": "user", "content": prompt}])
    found: dict[str, float] = {}

    def walk(matcher, reply, p):
        if matcher.is_stopped():
            found[tokenizer.decode(reply)] = found.get(tokenizer.decode(reply), 0.0) + p
            return
        tokens = tokenizer.convert_ids_to_tokens(prompt_ids + reply)
        z = np.array(generator.forward_batch([tokens], return_log_probs=True))[0, -1].astype(np.float64) / temperature
        allowed = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")[:vocab] == 1
        allowed[ends] = matcher.is_accepting()
        weights = np.where(allowed, np.exp(z - z[allowed].max()), 0.0)
        for token in np.nonzero(weights)[0]:
            share = p * weights[token] / weights.sum()
            if token in ends:
                found[tokenizer.decode(reply)] = found.get(tokenizer.decode(reply), 0.0) + share
                continue
            branch = matcher.deep_copy()
            assert branch.consume_token(int(token))
            walk(branch, reply + [int(token)], share)

    walk(llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=STYLE)), [], 1.0)
    return found


@pytest.mark.parametrize("schema,temperature", [({"enum": [1, 2, 3]}, 1.0), ({"enum": ["positive", "negative", "neutral"]}, 1.5)])
def test_sampling_draws_the_models_distribution_restricted_to_allowed_tokens(llama, schema, temperature):
    expected = exact_distribution(llama, "Pick one.", schema, temperature)
    assert sum(expected.values()) == pytest.approx(1.0, abs=1e-4) and sum(p > 0.05 for p in expected.values()) >= 2
    draws = 400
    counts: dict[str, int] = {}
    for _ in range(draws):
        text = llama.stream("Pick one.", schema=schema, temperature=temperature, top_k=0, top_p=1.0, max_tokens=10, once=True)
        key = text.consume()
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= {k for k, p in expected.items() if p > 0}
    chi2 = sum((counts.get(k, 0) - draws * p) ** 2 / (draws * p) for k, p in expected.items() if p > 1e-3)
    assert chi2 < 16.3, (counts, expected)  # 3 degrees of freedom at most: fails by chance once in a thousand runs


# -- what comes back ------------------------------------------------------------------------------------------------------
class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


@dataclasses.dataclass
class Place:
    name: Literal["home", "work"]
    floor: Literal[0, 1, 2]  # the demo model's bigrams write digits forever: a closed set ends


@dataclasses.dataclass
class Person:
    mood: Mood
    kind: Literal["cat", "dog"]
    home: Place
    tags: list[Mood]
    vip: bool | None = None


class Movie(TypedDict):
    genre: Literal["drama", "comedy"]
    rated: bool


class Titled(TypedDict, total=False):
    title: str
    year: int


def test_a_dataclass_gives_an_instance_and_a_typeddict_a_dict(llama):
    from ct2_magics.core.schema import as_schema

    assert as_schema(Person).json["properties"]["home"]["required"] == ["name", "floor"]
    assert as_schema(Person).json["required"] == ["mood", "kind", "home", "tags"]
    assert as_schema(Titled).json["properties"] == {"title": {"type": "string"}, "year": {"type": "integer"}}
    assert "required" not in as_schema(Titled).json
    person = llama.ask("Describe someone.", schema=Person, temperature=0, max_tokens=200, once=True)
    assert isinstance(person, Person) and isinstance(person.home, Place) and isinstance(person.mood, Mood)
    assert person.kind in ("cat", "dog") and all(isinstance(t, Mood) for t in person.tags)
    jsonschema.validate(dataclasses.asdict(person) | {"mood": person.mood.value, "tags": [t.value for t in person.tags]},
                        as_schema(Person).json)
    movie = llama.ask("A film?", schema=Movie, temperature=1.5, max_tokens=60, once=True)
    assert isinstance(movie, dict) and movie["genre"] in ("drama", "comedy") and isinstance(movie["rated"], bool)


def test_a_pydantic_model_gives_an_instance(llama):
    pydantic = pytest.importorskip("pydantic")

    class Inner(pydantic.BaseModel):
        label: Literal["x", "y"]

    class Outer(pydantic.BaseModel):
        count: int = pydantic.Field(ge=0, le=9)
        inner: Inner
        maybe: Optional[bool] = None  # noqa: UP045 (typing.Optional must work too)

    value = llama.ask("Go.", schema=Outer, temperature=1.5, max_tokens=200, once=True)
    assert isinstance(value, Outer) and isinstance(value.inner, Inner) and 0 <= value.count <= 9


def test_map_gives_a_typed_table_on_the_inputs_index(llama):
    pd = pytest.importorskip("pandas")
    items = pd.Series(["great lamp", None, "broken straps", ""], index=pd.Index(["r1", "r2", "r3", "r4"], name="id"))
    table = llama.map(items, "Review: {}", schema=REVIEW, temperature=0, max_tokens=80)
    assert list(table.columns) == ["sentiment", "rating", "topic"] and table.index.equals(items.index)
    assert str(table["rating"].dtype) == "Int64" and str(table["sentiment"].dtype) == "string"
    assert table.loc[["r2", "r4"]].isna().all().all() and table.loc[["r1", "r3"]].notna().all().all()
    assert [(e.label, e.reason) for e in llama.last_errors] == [("r2", "missing value"), ("r4", "empty text")]
    for row in table.loc[["r1", "r3"]].to_dict("records"):
        jsonschema.validate({k: (int(v) if k == "rating" else v) for k, v in row.items()}, REVIEW)
    listed = llama.map(["a", "b"], "{}", schema={"type": "integer", "minimum": 0, "maximum": 3}, temperature=0, max_tokens=10)
    assert list(listed.columns) == ["value"] and str(listed["value"].dtype) == "Int64"


def test_a_row_that_cannot_fit_max_tokens_is_none_and_listed(llama):
    values = llama.generate(["a", "b"], schema={"type": "string", "minLength": 40}, temperature=0, max_tokens=5)
    assert values == [None, None]
    assert all("max_tokens (5) ran out" in e.reason for e in llama.last_errors)


def test_ask_says_so_in_one_line_when_max_tokens_cannot_fit_the_json(llama):
    with pytest.raises(LlamaError, match=r"max_tokens \(4\) ran out") as caught:
        llama.ask("Review it.", schema=REVIEW, max_tokens=4)
    assert "\n" not in str(caught.value)
    turn = llama.chat().turns[-1]  # the turn is kept as written, cut JSON and all, never presented as a value
    assert turn.assistant and not turn.assistant.endswith("}")


def test_a_schema_reply_streams_and_is_recorded_like_any_reply(llama):
    reply = llama.stream("Review: nice.", schema=REVIEW, temperature=0, max_tokens=80)
    pieces = list(reply)
    assert len(pieces) > 3 and "".join(pieces) == reply.text
    assert llama.history()[-1] == {"role": "assistant", "content": reply.text}
    before = len(llama.chat().turns)
    llama.ask("Again.", schema=REVIEW, temperature=0, max_tokens=80, once=True)
    assert len(llama.chat().turns) == before


def test_a_stopped_schema_reply_has_no_value(llama):
    reply = llama.stream("Review: nice.", schema={"type": "string"}, temperature=0, max_tokens=400)
    next(iter(reply))
    reply.close()
    with pytest.raises(LlamaError, match="stopped before its JSON was complete"):
        reply.value()
    assert llama.ask("ok", schema=REVIEW, temperature=0, max_tokens=80, once=True)["sentiment"]  # the model is free


# -- bad input: one line, nothing lost --------------------------------------------------------------------------------------
@dataclasses.dataclass
class WithDate:
    when: complex


BAD = [
    ({"type": "string", "format": "date-time"}, "'format'"),
    ({"oneOf": [{"type": "string"}]}, "'oneOf'"),
    ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "object", "patternProperties": {}}, "'patternProperties'"),
    ({"type": "string", "minimum": 3}, "'minimum'"),
    ({"name": "string", "age": "int"}, "'name'"),
    ({"type": "strin"}, "not a JSON Schema type"),
    ({"type": "object", "properties": {"a": 5}}, "is not JSON Schema"),
    ({"type": "object", "required": ["b"], "properties": {"a": {}}}, "requires 'b'"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "no value fits"),
    ({"$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"}, "recursive"),
    ({"type": "string", "pattern": "(?=a)"}, "look-around"),
    (["type", "string"], "takes a JSON Schema dict"),
    ('{"type": "string"}', "json.loads it first"),
    (int, "takes a JSON Schema dict"),
    (WithDate, "type complex"),
    (Place("x", 1), "not an instance"),
]


@pytest.mark.parametrize("schema,says", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_schema_is_one_line_and_loses_nothing(llama, schema, says):
    llama.ask("Keep me.", temperature=0, max_tokens=4)
    before = llama.history()
    for call in (lambda: llama.ask("x", schema=schema), lambda: llama.generate(["x"], schema=schema),
                 lambda: llama.map(["x"], schema=schema)):
        with pytest.raises(LlamaError) as caught:
            call()
        assert says in str(caught.value) and "\n" not in str(caught.value)
    assert llama.history() == before and llama.engine is not None


def test_a_tokenizer_llguidance_cannot_read_is_one_line(llama, demo_model, tmp_path):
    import shutil

    model = tmp_path / "wordpiece-model"
    shutil.copytree(demo_model, model)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}  # as a word-level model may have
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    llama.load(str(model))
    llama.ask("Keep me.", temperature=0, max_tokens=4)
    before = llama.history()
    with pytest.raises(LlamaError) as caught:
        llama.ask("x", schema={"type": "object"})
    assert "schema= cannot use" in str(caught.value) and "\n" not in str(caught.value)
    assert llama.history() == before and llama.ask("Still here?", temperature=0, max_tokens=4) is not None


# -- the magic ----------------------------------------------------------------------------------------------------------------
def test_the_magic_stores_the_value_and_shows_the_json(shell, llama):
    shell.user_ns["Review"] = REVIEW
    result = run(shell, "%%llama -f json --schema Review -o facts -t 0 -n 80\nReview: the lamp flickers.")
    assert result.error_in_exec is None
    facts = shell.user_ns["facts"]
    jsonschema.validate(facts, REVIEW)
    assert json.dumps(facts, ensure_ascii=False) in plains(shell)[-1]
    assert "<pre" in htmls(shell)[-1] and not any("text/markdown" in o["data"] for o in shell.display_pub.outputs)
    assert llama.history()[-2:] == [{"role": "user", "content": "Review: the lamp flickers."},
                                    {"role": "assistant", "content": json.dumps(facts, ensure_ascii=False)}]
    run(shell, "%%llama --schema Review --once -t 0 -n 80 -o again\nReview: fine.")
    assert len(llama.history()) == 2 and isinstance(shell.user_ns["again"], dict)


def test_a_hostile_value_stays_inside_its_code_block(shell, llama):
    shell.user_ns["Evil"] = {"const": "```\n<img src=x onerror=alert(1)>\n```"}
    run(shell, "%%llama --schema Evil -o evil --once\nx")
    assert shell.user_ns["evil"] == "```\n<img src=x onerror=alert(1)>\n```"
    assert "<img" not in htmls(shell)[-1] and "&lt;img" in htmls(shell)[-1]


@pytest.mark.parametrize("line,says", [
    ("-f json --schema Nope", "there is no variable 'Nope'"),
    ("-f code --schema Review", "use it with -f json"),
    ("--schema Number", "takes a JSON Schema dict"),
    ("--schema Bad", "'format'"),
])
def test_the_magics_bad_schema_is_one_line(shell, llama, capsys, line, says):
    shell.user_ns.update(Review=REVIEW, Number=42, Bad={"type": "string", "format": "email"})
    result = run(shell, f"%%llama {line}\nhello")
    err = capsys.readouterr().err
    assert result.error_in_exec is not None and says in err and "Traceback" not in err
    assert not llama.chat().turns


def test_the_magic_says_when_max_tokens_cannot_fit_and_keeps_the_text(shell, llama, capsys):
    shell.user_ns["Review"] = REVIEW
    run(shell, "%%llama --schema Review -n 3 -o cut\nReview: ok.")
    assert "max_tokens (3) ran out" in capsys.readouterr().err
    assert isinstance(shell.user_ns["cut"], str) and llama.chat().turns[-1].assistant == shell.user_ns["cut"]


def test_an_interrupt_stops_a_schema_reply_within_a_step_and_keeps_it(shell, long_model, sigint, capsys):
    import _thread
    import threading
    import time

    from ct2_magics import llama
    from helpers import reply_outputs, wait_idle

    shell.run_line_magic("llama", f"load {long_model}")
    # A story the reply cannot finish within -n 3000: it is still being written when the interrupt comes.
    shell.user_ns["Text"] = {"type": "object", "properties": {"story": {"type": "string", "minLength": 5000}},
                             "required": ["story"]}

    def interrupt_when_streaming() -> None:
        while not llama.busy or len(reply_outputs(shell)) < 2:
            time.sleep(0.005)
        time.sleep(0.3)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_streaming, daemon=True).start()
    result = run(shell, "%%llama --schema Text -n 3000 -o story\nWrite forever.")
    assert isinstance(result.error_in_exec, KeyboardInterrupt) and "story" not in shell.user_ns
    shown = capsys.readouterr()
    assert "KeyboardInterrupt: the reply stopped; what it wrote is kept in its chat, marked interrupted." in shown.out + shown.err
    assert wait_idle(llama.generator, 1.0), "decoding went on after the interrupt"
    last = llama.chat().turns[-1]
    assert last.status == "interrupted" and last.assistant.startswith('{"story": "')
    assert run(shell, "%%llama --schema Text -n 5 -o cut\nnext").error_in_exec is not None  # the model is free again
    assert llama.chat().turns[-1].status in ("complete", "cut")  # cut: it reached -n 5
