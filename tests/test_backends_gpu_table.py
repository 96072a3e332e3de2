"""The GPU table and what-if facts (`--gpu NAME[xN]`, `--assume PKG==VER`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exlx_autocfg.errors import UsageError
from exlx_autocfg.facts.what_if import (
    _key,
    find_gpu,
    gpu_table,
    parse_assume,
    parse_gpu_option,
    what_if_facts,
)

REQUIRED = [
    "GTX 1080 Ti",
    "Tesla P40",
    "Tesla P100 16GB",
    "Tesla V100 16GB",
    "Tesla V100 32GB",
    "Tesla T4",
    "RTX 2080 Ti 11GB",
    "RTX 2080 Ti 22GB",
    "Titan RTX",
    "RTX 3060 12GB",
    "RTX 3090",
    "RTX A6000",
    "A100 40GB",
    "A100 80GB",
    "L4",
    "RTX 4060 Ti 16GB",
    "RTX 4090",
    "L40S",
    "H100 80GB",
    "H200",
    "RTX 5090",
    "MI100",
    "MI210",
    "MI300X",
    "RX 7900 XTX",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_gpu_is_in_the_table(name):
    row = find_gpu(name)
    assert row.memory_mib > 1000 and row.bandwidth_gbs > 100
    assert (row.cc is not None) == (row.vendor == "nvidia")
    assert (row.gfx is not None) == (row.vendor == "amd")


def test_table_rows_are_consistent():
    rows = gpu_table()
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids))
    owners: dict[str, set[str]] = {}
    for r in rows:
        for spelling in (r.id, r.name, *r.aliases):
            owners.setdefault(_key(spelling), set()).add(r.id)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}, "a spelling must name exactly one GPU"


def test_matching_is_case_and_punctuation_insensitive():
    assert find_gpu("rtx-3090").id == find_gpu("NVIDIA GeForce RTX 3090").id == find_gpu("3090").id
    assert find_gpu("2080TI-22GB").memory_mib == 22528
    # The driver name of the stock 2080 Ti is the 11 GB card.
    assert find_gpu("NVIDIA GeForce RTX 2080 Ti").memory_mib == 11264
    assert find_gpu("h100").memory_mib == 81559  # as NVML reports it (tests/support/nvml_scenarios.py)


def test_unknown_gpu_lists_close_matches():
    with pytest.raises(UsageError) as info:
        find_gpu("RTX 3080")
    line = info.value.one_line()
    assert "unknown GPU 'RTX 3080'" in line and "close matches:" in line and "rtx-3090" in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("text", "count"),
    [("3090x2", 2), ("RTX 3090 x 4", 4), ("p40*3", 3), ("mi300x", 1), ("rx-7900-xtx", 1), ("t4 X2", 2)],
)
def test_gpu_option_counts(text, count):
    assert len(parse_gpu_option(text)) == count


def test_gpu_option_bad_count():
    with pytest.raises(UsageError, match="between 1 and 16"):
        parse_gpu_option("3090x0")


def test_mixed_vendors_are_refused():
    with pytest.raises(UsageError, match="mixes NVIDIA and AMD"):
        what_if_facts(["3090", "mi210"])


@pytest.mark.parametrize(
    "bad", ["flash-attn", "flash-attn=2.7", "flash-attn>=2.7", "==2.7", "torch==", "torch==abc"]
)
def test_bad_assume_syntax(bad):
    with pytest.raises(UsageError):
        parse_assume(bad)


@given(st.text(max_size=30))
def test_parse_assume_never_crashes(text):
    try:
        name, version = parse_assume(text)
    except UsageError as exc:
        assert "\n" not in exc.one_line()
    else:
        assert name and (version is None or version)


def test_assume_aliases_and_none():
    assert parse_assume("flash_attn==2.7.4.post1") == ("flash-attn", "2.7.4.post1")
    assert parse_assume("xformers==none") == ("xformers", None)
    with pytest.raises(UsageError, match="unknown package"):
        parse_assume("vllm==0.6.0")


def test_what_if_facts_shape_and_derived_details():
    facts = what_if_facts(["3090x2"], ["xformers==0.0.29.post3", "torch==2.6.0+cu124", "flash-attn==2.5.6"])
    assert facts.what_if and len(facts.gpu.gpus) == 2
    assert [g.index for g in facts.gpu.gpus] == [0, 1]
    assert facts.gpu.gpus[0].memory_total == 24576 * 1024 * 1024 and facts.gpu.gpus[0].memory_free is None
    torch = facts.libraries["torch"]
    assert torch.local_tag == "cu124" and torch.build == {"cuda": "12.4"}
    assert torch.details["has_causal_lower_right"] is True
    xf = facts.libraries["xformers"].details
    assert xf["has_cpp_library"] is True
    assert xf["import_paths"]["xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask"] is True
    fa = facts.libraries["flash-attn"].details["features"]
    assert fa == {"window_size": False, "softcap": False, "kvcache": True, "paged": False}
    assert facts.version_of("exllamav2") == "0.3.2"  # the default what-if stack
    # Round trip through JSON like every facts document.
    assert type(facts).from_json(facts.to_json()) == facts


def test_rocm_what_if_gets_a_rocm_torch():
    facts = what_if_facts(["mi210"])
    torch = facts.libraries["torch"]
    assert "rocm" in torch.build and torch.details.get("hip_version")
    assert facts.gpu.gpus[0].architecture == "gfx90a" and facts.gpu.gpus[0].compute_capability is None


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (["3090"], {"xformers", "flash-attn"}),
        (["2080ti-22gb"], {"xformers"}),
        (["3090", "p40"], {"xformers"}),  # the weakest card decides: flash-attn would crash on the P40
        (["mi210"], set()),
    ],
)
def test_recommended_stack_follows_the_weakest_gpu(gpus, expected):
    facts = what_if_facts(gpus, recommended=True)
    attention = {n for n in ("xformers", "flash-attn") if facts.lib(n).installed}
    assert attention == expected
    assert not {n for n in ("xformers", "flash-attn") if what_if_facts(gpus).lib(n).installed}


def test_assume_none_removes_a_recommended_library():
    facts = what_if_facts(["3090"], ["flash-attn==none"], recommended=True)
    assert not facts.lib("flash-attn").installed and facts.lib("xformers").installed


def test_ambiguous_names_are_consistent_with_the_table():
    """Every `[[ambiguous]]` name lists at least two real rows and is no row's own spelling; every family
    the table holds in several memory sizes (`a100-40gb`, `a100-80gb`) without a row of its bare name is
    listed, so a bare family name can never silently pick one size."""
    from exlx_autocfg.facts.what_if import ambiguous_names

    rows = {r.id: r for r in gpu_table()}
    spellings = {_key(s) for r in rows.values() for s in (r.id, r.name, *r.aliases)}
    ambiguous = ambiguous_names()
    for key, candidates in ambiguous.items():
        assert len(candidates) >= 2 and set(candidates) <= set(rows), key
        assert len({rows[c].memory_mib for c in candidates}) == len(candidates), key
        assert key not in spellings, f"{key} is both ambiguous and a spelling of one GPU"
    families: dict[str, set[str]] = {}
    for rid in rows:
        family, sep, size = rid.rpartition("-")
        if sep and size.endswith("gb") and size[:-2].isdigit():
            families.setdefault(family, set()).add(rid)
    for family, ids in families.items():
        if len(ids) > 1 and family not in rows:
            assert _key(family) in ambiguous and set(ambiguous[_key(family)]) == ids, family


@pytest.mark.parametrize("name", ["A100", "a100", "V100", "Tesla V100", "2xA100", "a100x2"])
def test_ambiguous_names_are_refused_with_the_candidates(name):
    with pytest.raises(UsageError) as info:
        parse_gpu_option(name)
    line = info.value.one_line()
    assert "is ambiguous: the table has" in line and "\n" not in line
    candidates = ("a100-40gb (40 GiB), a100-80gb (80 GiB)", "v100-16gb (16 GiB), v100-32gb (32 GiB)")
    assert any(c in line for c in candidates)


@pytest.mark.parametrize(("text", "count"), [("2x3090", 2), ("4 x RTX 4090", 4), ("3*p40", 3), ("2X t4", 2)])
def test_count_may_come_first(text, count):
    rows = parse_gpu_option(text)
    assert len(rows) == count and len({r.id for r in rows}) == 1


def test_what_if_mixed_rig_says_it_assumes_the_gpu_order():
    from exlx_autocfg.findings import CODES

    mixed = what_if_facts(["3090", "p40"], recommended=True)
    note = mixed.gpu.device_order.note or ""
    assert "taken in the --gpu order (#0 NVIDIA GeForce RTX 3090, #1 Tesla P40)" in note
    assert mixed.gpu.device_order.pci_order_matches_cuda is None
    assert "plan.what_if.gpu_order" in CODES
    same = what_if_facts(["3090x2"], recommended=True)
    assert same.gpu.device_order.note is None and same.gpu.device_order.pci_order_matches_cuda is True
