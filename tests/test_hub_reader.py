"""`model.hub`: the real huggingface_hub client against a local Hub (tests/support/fake_hub.py) on 127.0.0.1.

Expected values come from the same files read as a local directory (`load_directory`), from a fingerprint
computed here by hand from the files' bytes, and from the fake Hub's own count of the bytes it served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import HubError, ModelSpecError, UsageError
from exlx_autocfg.model.directory import load_directory
from exlx_autocfg.model.hub import HubReader, HubRef, parse_hub_ref, read_hub_spec
from exlx_autocfg.model.load import load_model_spec
from tests.support.fake_hub import FakeHub, files_of, readme_only
from tests.support.model_dirs import make_model_dir

REPO = "org/Llama-3-8B-exl2"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama3-8b", bpw=4.0, name="l4")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama3-8b", bpw=6.0, shards=3, name="l6")


@pytest.fixture
def hub(tmp_path, monkeypatch, single, sharded):
    monkeypatch.setenv("EXLX_CACHE_DIR", str(tmp_path / "exlx-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with FakeHub(tokens={"hf_granted": {"org/gated"}, "hf_other": set()}) as fake:
        fake.add_repo(REPO, {"4.0bpw": files_of(single), "6.0bpw": files_of(sharded)})
        fake.add_repo("org/gated", {"4.0bpw": files_of(single)}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def hand_fingerprint(directory):
    """model/directory.py's definition, computed from the files' bytes: config.json, then per *.safetensors
    file in name order its name, NUL, the 8-byte length and the header JSON."""
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as fh:
            prefix = fh.read(8)
            digest.update(path.name.encode() + b"\0" + prefix + fh.read(struct.unpack("<Q", prefix)[0]))
    return digest.hexdigest()


def identity(spec):
    """Everything of a spec but where it was read from."""
    where = ("name", "path", "source", "hub", "hf_repo")
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in where}


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_revision_equals_the_same_files_as_a_directory(hub, which, request):
    directory = request.getfixturevalue(which)
    revision = "4.0bpw" if which == "single" else "6.0bpw"
    spec = read_hub_spec(f"hf:{REPO}@{revision}")
    local = load_directory(directory)
    assert spec.tensors == local.tensors
    assert spec.fingerprint == local.fingerprint == hand_fingerprint(directory)
    assert identity(spec) == identity(local)
    assert (spec.source, spec.path, spec.name, spec.hf_repo) == ("hub", None, f"{REPO}@{revision}", REPO)
    source = spec.hub
    assert source.repo == REPO and source.revision == revision and source.commit == hub.repos[REPO].commits[
        revision]
    weights = sorted(p.name for p in directory.glob("*.safetensors"))
    index = ["model.safetensors.index.json"] if which == "sharded" else []
    expected_files = ["config.json", *index, *weights]
    assert list(source.files) == expected_files
    assert source.weights_bytes == sum((directory / n).stat().st_size for n in weights)
    # What the client received is what the Hub sent; and it is a sliver of the weights.
    assert source.bytes_read == hub.bytes_served > 0 and source.bytes_cached == 0
    assert source.bytes_read < source.weights_bytes / 10_000
    # Weights are only ever read by range, on the CDN the Hub redirects to, never with the Hub token.
    weight_gets = [s for s in hub.log if s.method == "GET" and s.path.split("?")[0].endswith(".safetensors")]
    assert weight_gets and all(s.range for s in weight_gets if s.status != 302)
    assert {s.status for s in weight_gets} == {302, 206}


def test_second_read_by_commit_is_free_and_by_branch_costs_one_listing(hub):
    first = read_hub_spec(f"hf:{REPO}@6.0bpw")
    hub.reset()
    by_commit = read_hub_spec(HubRef(REPO, first.hub.commit))
    assert hub.log == [] and by_commit.hub.bytes_read == 0
    assert by_commit.fingerprint == first.fingerprint and by_commit.hub.bytes_cached > 0
    again = read_hub_spec(f"hf:{REPO}@6.0bpw")
    assert [s.path for s in hub.log] == [f"/api/models/{REPO}/revision/6.0bpw?blobs=true"]
    assert again.hub.bytes_read == hub.bytes_served and again.fingerprint == first.fingerprint


def test_offline_mode_plans_from_the_cache_and_says_what_is_cached(hub, monkeypatch):
    online = read_hub_spec(f"hf:{REPO}@4.0bpw")
    hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = read_hub_spec(f"hf:{REPO}@4.0bpw")
    assert hub.log == [] and offline.hub.offline and offline.hub.bytes_read == 0
    assert offline.tensors == online.tensors and offline.fingerprint == online.fingerprint
    with pytest.raises(HubError) as info:
        read_hub_spec(f"hf:{REPO}@6.0bpw")
    assert info.value.one_line() == (
        f"offline (HF_HUB_OFFLINE=1) and hf:{REPO}@6.0bpw is not in the cache; cached: "
        f"hf:{REPO}@4.0bpw (commit {online.hub.commit[:12]})")
    assert hub.log == []


def test_gated_repo_needs_a_granted_token(hub, monkeypatch):
    with pytest.raises(HubError) as info:
        read_hub_spec("hf:org/gated@4.0bpw")
    message = info.value.one_line()
    assert message.startswith("hf:org/gated@")
    assert "gated repo: the Hub needs a token" in message and "hf auth login" in message
    assert "HF_TOKEN" in message and f"{hub.endpoint}/org/gated" in message
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(HubError, match="gated repo, and this token has not been granted access"):
        read_hub_spec("hf:org/gated@4.0bpw")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    hub.reset()
    spec = read_hub_spec("hf:org/gated@4.0bpw")
    assert spec.hub.repo == "org/gated" and spec.tensors
    hub_files = [s for s in hub.log if "/resolve/" in s.path]
    cdn_files = [s for s in hub.log if s.path.startswith("/repos/")]
    assert hub_files and all(s.authorized for s in hub_files)
    assert cdn_files and not any(s.authorized for s in cdn_files)  # the token never leaves the Hub


def test_errors_name_the_problem(hub, tmp_path):
    with pytest.raises(HubError, match=r"^hf:org/missing@main: repository not found on http://127\.0\.0\.1"):
        read_hub_spec("hf:org/missing")
    with pytest.raises(HubError) as info:
        read_hub_spec(f"hf:{REPO}@5.0bpw")
    assert info.value.one_line() == (
        f"hf:{REPO}@5.0bpw: no branch, tag or commit '5.0bpw' in {REPO} (branches: 4.0bpw, 6.0bpw, main)")
    no_config = r"@main \(commit [0-9a-f]{12}\): no config\.json in this revision \(files: \.gitattributes, "
    with pytest.raises(ModelSpecError, match=no_config + r"README\.md\)"):
        read_hub_spec(f"hf:{REPO}")
    with pytest.raises(UsageError, match="not a Hugging Face model reference"):
        read_hub_spec("hf:not-a-repo")


def test_header_beyond_the_limit_is_refused_before_it_is_fetched(hub, tmp_path, single):
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_bytes((single / "config.json").read_bytes())
    with open(big / "output.safetensors", "wb") as fh:  # announces a 30 MB header in a 40 MB file
        fh.write(struct.pack("<Q", 30_000_000))
        fh.truncate(40_000_000)
    hub.add_repo("org/big", {"4.0bpw": files_of(big)})
    hub.reset()
    with pytest.raises(ModelSpecError) as info:
        read_hub_spec("hf:org/big@4.0bpw")
    assert info.value.one_line() == ("hf:org/big@4.0bpw/output.safetensors: safetensors header length "
                                     "30000000 is absurd (limit 25000000)")
    assert hub.bytes_served < 110_000


def test_index_naming_a_shard_the_repo_lacks(hub, sharded):
    files = files_of(sharded)
    del files["output-00003-of-00003.safetensors"]
    hub.add_repo("org/broken", {"6.0bpw": files})
    with pytest.raises(ModelSpecError) as info:
        read_hub_spec("hf:org/broken@6.0bpw")
    assert info.value.one_line() == (
        "hf:org/broken@6.0bpw/model.safetensors.index.json: names shard 'output-00003-of-00003.safetensors', "
        "which is not in the repo (its safetensors files: output-00001-of-00003.safetensors, "
        "output-00002-of-00003.safetensors)")


def test_unreachable_and_slow_hubs(hub, monkeypatch):
    read_hub_spec(f"hf:{REPO}@4.0bpw")  # cached, so the errors can say so
    commit = hub.repos[REPO].commits["4.0bpw"][:12]
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.3")
    hub.delay_s = 1.0
    with pytest.raises(HubError) as info:
        read_hub_spec(f"hf:{REPO}@4.0bpw")
    message = info.value.one_line()
    assert message.startswith(f"cannot reach the Hub at {hub.endpoint}: no answer within 0.3 s")
    assert f"cached: hf:{REPO}@4.0bpw (commit {commit})" in message
    hub.delay_s = 0
    hub.down()  # connection refused from now on
    with pytest.raises(HubError) as info:
        read_hub_spec(f"hf:{REPO}@4.0bpw")
    message = info.value.one_line()
    assert message.startswith(f"cannot reach the Hub at {hub.endpoint}: ConnectError")
    assert message.endswith(f"; cached: hf:{REPO}@4.0bpw (commit {commit}) "
                            "(with HF_HUB_OFFLINE=1 a cached revision plans without the network)")


def test_branches_are_read_and_classified(hub, tmp_path, single):
    gguf = {**readme_only(), "model.Q4_K_M.gguf": b"GGUF" + bytes(60)}
    fp16 = files_of(make_model_dir(tmp_path, "llama3-8b", quant="fp16", shards=2))
    gptq_dir = make_model_dir(tmp_path, "llama3-8b", quant="fp16", name="gptq",
                              quantization_config={"quant_method": "gptq", "bits": 4})
    hub.add_repo("org/mixed", {"4.0bpw": files_of(single), "gguf": gguf, "original": fp16,
                               "gptq": files_of(gptq_dir)})
    events = []
    listing = HubReader(progress=lambda *e: events.append(e)).read_branches("org/mixed")
    by_name = {b.revision: b for b in listing.branches}
    assert set(by_name) == {"4.0bpw", "gguf", "original", "gptq", "main"}
    assert by_name["4.0bpw"].spec.fingerprint == load_directory(single).fingerprint
    assert {n: b.skip_code for n, b in by_name.items()} == {
        "4.0bpw": None, "gguf": "hub.skip.gguf", "original": "hub.skip.not_exl2",
        "gptq": "hub.skip.other_quant", "main": "hub.skip.no_config"}
    assert by_name["gptq"].skipped == "a gptq checkpoint (quantization_config.quant_method), not EXL2"
    assert listing.bytes_read == hub.bytes_served
    assert sum(b.bytes_read for b in listing.branches) <= listing.bytes_read  # + the refs listing
    # The FP16 original costs its config and its first header, never the other shard's.
    original = hub.repos["org/mixed"].commits["original"]
    read = {s.path.split("?")[0].rsplit("/", 1)[1] for s in hub.log
            if s.path.startswith(f"/repos/org/mixed/{original}")}
    assert read == {"model-00001-of-00002.safetensors"}
    assert ("org/mixed: 5 branches", 5, 5) in events and any("output.safetensors" in e[0] for e in events)


def test_load_model_spec_takes_hf_references(hub):
    spec = load_model_spec(f"hf:{REPO}@4.0bpw")
    assert spec.source == "hub" and spec.hub.revision == "4.0bpw"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_references_parse_or_fail_with_one_line(text):
    try:
        ref = parse_hub_ref("hf:" + text)
    except UsageError as exc:
        assert "\n" not in exc.one_line()
        return
    assert "/" in ref.repo and str(ref).startswith("hf:")
