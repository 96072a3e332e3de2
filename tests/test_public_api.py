"""The public API (issue 14): `dir(exlx_autocfg)` shows what `__all__` promises, and every public function
raises only the ExlxError subclasses `exlx_autocfg.RAISES` lists for it, whatever it is given: bad types,
bad values, missing and special files. Errors name keyword arguments, never CLI flags."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import exlx_autocfg
from exlx_autocfg.errors import ExlxError
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.facts.what_if import what_if_facts
from tests.support.model_dirs import make_model_dir
from tests.support.profile_samples import facts as sample_facts


def raised(function: str, call) -> ExlxError | None:
    """Call; an exception must be an ExlxError of a class RAISES lists for `function` (or a subclass)."""
    try:
        call()
    except ExlxError as exc:
        allowed = tuple(getattr(exlx_autocfg, name) for name in exlx_autocfg.RAISES[function])
        assert isinstance(exc, allowed), f"{function} raised {type(exc).__name__}: {exc.one_line()}"
        assert "\n" not in exc.one_line()
        return exc
    return None


def test_dir_shows_the_public_names():
    names = dir(exlx_autocfg)
    assert set(exlx_autocfg.__all__) <= set(names)
    assert {"detect", "plan", "prepare", "load", "check", "Facts", "ExlxError", "RAISES"} <= set(names)
    for name in exlx_autocfg.__all__:
        assert getattr(exlx_autocfg, name) is not None


def test_raises_names_real_error_classes():
    for function, names in exlx_autocfg.RAISES.items():
        for name in names:
            assert issubclass(getattr(exlx_autocfg, name), ExlxError), (function, name)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"timeout": math.nan}, "timeout=nan: must be a positive, finite number"),
    ({"timeout": math.inf}, "timeout=inf"),
    ({"timeout": -1}, "timeout=-1"),
    ({"timeout": "60"}, "timeout='60': must be a number"),
    ({"python": 3}, "python=3: must be a string"),
    ({"python": ""}, "python='': is empty"),
    ({"python": "/no/such/python"}, "python='/no/such/python': no such file"),
])
def test_detect(kwargs, says):
    exc = raised("detect", lambda: exlx_autocfg.detect(**kwargs))
    assert exc is not None and says in exc.one_line() and "--" not in exc.one_line()


@pytest.fixture(scope="module")
def facts_3090():
    return what_if_facts(["3090"], recommended=True)


@pytest.mark.parametrize(("args", "kwargs", "says"), [
    ((None, "llama3-8b"), {}, "facts=None: must be a Facts document"),
    (("3090", "llama3-8b"), {}, "facts='3090'"),
    ((None, "llama3-8b"), {}, "facts=None"),
    (("F", 42), {}, "model=42: must be a ModelSpec"),
    (("F", ""), {}, "model='': must be a model directory"),
    (("F", "no-such-model"), {}, "unknown model 'no-such-model'"),
    (("F", Path("/no/such/dir/")), {}, "no such directory"),
    (("F", "llama3-8b"), {"context": -1}, "context=-1: must be a positive number of tokens"),
    (("F", "llama3-8b"), {"context": "8k"}, "context='8k': must be an integer"),
    (("F", "llama3-8b"), {"context": 8192.0}, "context=8192.0: must be an integer"),
    (("F", "llama3-8b"), {"cache": 4}, "cache=4: must be a string"),
    (("F", "llama3-8b"), {"cache": "Q7"}, "cache='Q7': choose one of"),
    (("F", "llama3-8b"), {"chunk_size": 300}, "chunk_size=300: must be a multiple of 256"),
    (("F", "llama3-8b"), {"budget": "all"}, "budget='all': choose total or free"),
    (("F", "llama3-8b"), {"batch_size": True}, "batch_size=True: must be an integer"),
    (("F", "llama3-8b"), {"margin_mib": -5}, "margin_mib=-5: must be >= 0"),
    (("F", "llama3-8b"), {"gpus": 2}, "unknown plan option(s): gpus"),
    (("F", "llama2-70b"), {}, "missing"),
])
def test_plan(facts_3090, args, kwargs, says):
    facts = facts_3090 if args[0] == "F" else args[0]
    exc = raised("plan", lambda: exlx_autocfg.plan(facts, args[1], **kwargs))
    assert exc is not None and says in exc.one_line(), exc.one_line() if exc else None
    assert "--" not in exc.one_line()


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=2), st.sampled_from(["Q4", "free"]))
KEYS = st.sampled_from(["context", "cache", "backend", "min_cache_precision", "budget", "margin_mib",
                        "batch_size", "chunk_size", "nonsense"])


@settings(max_examples=40, deadline=None)
@given(request=st.dictionaries(KEYS, VALUES, max_size=3))
def test_plan_with_any_options_raises_only_what_it_documents(request):
    facts = what_if_facts(["3090"], recommended=True)
    raised("plan", lambda: exlx_autocfg.plan(facts, "llama3-8b", **request))


def test_plan_from_a_special_file(tmp_path, facts_3090):
    model = make_model_dir(tmp_path, "tiny-llama")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    exc = raised("plan", lambda: exlx_autocfg.plan(facts_3090, str(model)))
    assert exc is not None and exc.code == "error.input.special_file"


@pytest.mark.parametrize(("ref", "kwargs", "says"), [
    (42, {}, "model=42"),
    ("", {}, "model=''"),
    ("llama3-8b", {"bpw": "4"}, "bpw='4': must be a number"),
    ("llama3-8b", {"bpw": 12.0}, "bpw=12.0: EXL2 bits per weight must be between 2.0 and 8.0"),
    ("llama3-8b@4.0", {"bpw": 5.0}, "bpw=5.0: conflicts with the bits in the reference"),
    ("DIR", {"bpw": 5.0}, "bpw=5.0: applies only to a catalog model"),
])
def test_load_model_spec(tmp_path, ref, kwargs, says):
    if ref == "DIR":
        ref = make_model_dir(tmp_path, "tiny-llama")
    exc = raised("load_model_spec", lambda: exlx_autocfg.load_model_spec(ref, **kwargs))
    assert exc is not None and says in exc.one_line()


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"require": ["numpy"]}, "require='numpy': unknown package"),
    ({"require": ["flash attn"]}, "require='flash attn': expected a package name"),
    ({"skip": ["bogus"]}, "skip='bogus': unknown check"),
    ({"gpu": ["A100"]}, "GPU name 'A100' is ambiguous"),
    ({"gpu": [""]}, "gpu='': expected a GPU name"),
    ({"assume": ["torch"]}, "assume='torch': expected PKG==VERSION"),
    ({"timeout": math.nan}, "timeout=nan"),
    ({"import_timeout": 0}, "import_timeout=0"),
    ({"python": 7}, "python=7"),
    ({"facts": {"schema": 1}}, "facts={'schema': 1}: must be a Facts document"),
])
def test_check(kwargs, says):
    kwargs.setdefault("facts", sample_facts())
    exc = raised("check", lambda: exlx_autocfg.check(**kwargs))
    assert exc is not None and says in exc.one_line() and "--" not in exc.one_line()


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"on_stale": "maybe"}, "on_stale='maybe': choose one of"),
    ({"model_dir": 42}, "model_dir=42"),
    ({"model_dir": "/no/such/model"}, "does not exist"),
    ({"facts": "x"}, "facts='x'"),
])
def test_prepare_and_load(kwargs, says):
    kwargs.setdefault("model_dir", "/no/such/model")
    for function in ("prepare", "load"):
        exc = raised(function, lambda f=function: getattr(exlx_autocfg, f)(**kwargs))
        assert exc is not None and says in exc.one_line()


@pytest.mark.parametrize(("text", "says"), [
    ('{"schema": 99}', "facts schema: version 99 is not supported (this tool reads schema 1)"),
    ('{"schema": "1"}', "facts schema: must be the integer 1, got the string '1'"),
    ('{"schema": true}', "must be the integer 1, got bool True"),
    ('{"schema": 1}', "facts document: python: missing"),
    ("{}", "no schema"),
    ("[1]", "the top level is a list"),
    ("{", "not a facts document: not JSON"),
    ("[" * 100000, "not JSON"),
])
def test_facts_from_json(text, says):
    exc = raised("Facts.from_json", lambda: Facts.from_json(text))
    assert exc is not None and says in exc.one_line()


VALID = json.loads(sample_facts().to_json())
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                 st.text(max_size=5)),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_mangled_facts_document_parses_or_is_one_facts_error(data):
    doc = json.loads(json.dumps(VALID))
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(JSONISH)
    try:
        Facts.from_json(json.dumps(doc))
    except ExlxError as exc:
        assert exc.code == "error.facts" and "\n" not in exc.one_line()
