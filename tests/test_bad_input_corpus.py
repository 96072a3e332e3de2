"""The bad-input corpus (issue 14): every command, fed broken model directories, profiles, facts documents,
options and output targets (FIFOs, devices, sockets, symlinks made in a temporary directory, never the real
/dev), answers with the right exit code and ONE line `exlx-autocfg: error: ...` on stderr (plus one JSON
error document on stdout for a machine-readable run), never a traceback, never a hang, and changes nothing
but the file it was meant to write.

Each case runs the real CLI in-process (`cli.run`), under an alarm so that a regression that blocks on a
FIFO fails instead of hanging the suite. The workspace is snapshotted before and after (type, mode, inode,
size, device number, link target, content hash of every entry, read without opening anything but regular
files); only the paths a case names may differ (and the lock file a write leaves, `atomic.LOCK_NAME`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exlx_autocfg.atomic import LOCK_NAME
from exlx_autocfg.cli import run
from exlx_autocfg.errors import ERROR_CODES
from exlx_autocfg.model.safetensors import write_header_only
from exlx_autocfg.profile.format import profile_from_plan, write_profile
from tests.support.adapters import make_adapter
from tests.support.emit_samples import turing_plan
from tests.support.model_dirs import make_model_dir
from tests.support.profile_samples import facts, gpu_2080ti

# A character/block device number with no driver behind it (240-254 are "local/experimental use" in the
# kernel's devices.txt): opening it would fail with ENXIO, and the tool must not even try.
NO_DRIVER = os.makedev(240, 0)
NULL = os.makedev(1, 3)  # the null device's number (devices.txt: 1 char 3 = /dev/null)


# ----------------------------------------------------------------------------------------- workspace


def workspace(root: Path) -> Path:
    """A valid model directory, profile and facts document; cases break copies of them."""
    ws = root / "ws"
    ws.mkdir()
    make_model_dir(ws, "tiny-llama", name="model")
    make_model_dir(ws, "tiny-llama", name="sharded", shards=2)
    write_profile(profile_from_plan(turing_plan(), facts(gpus=[gpu_2080ti()])), ws / "p.toml")
    (ws / "facts.json").write_text(facts(gpus=[gpu_2080ti()]).to_json())
    (ws / "config.yml").write_text("# mine\nnetwork:\n  port: 5001\n")
    return ws


def fifo(rel: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        os.mkfifo(ws / rel)
    return make


def chardev(rel: str, number: int = NO_DRIVER) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        _mknod(ws / rel, stat.S_IFCHR, number)
    return make


def blockdev(rel: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        _mknod(ws / rel, stat.S_IFBLK, NO_DRIVER)
    return make


def sock(rel: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(ws / rel))  # the socket file stays after close
    return make


def directory(rel: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        (ws / rel).mkdir()
    return make


def symlink(rel: str, to: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        _clear(ws / rel)
        os.symlink(to, ws / rel)
    return make


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        path = ws / rel
        _clear(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return make


def edit(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        text = (ws / rel).read_text()
        assert old in text, (rel, old)
        (ws / rel).write_text(text.replace(old, new, 1))
    return make


def json_edit(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        doc = json.loads((ws / rel).read_text())
        change(doc)
        (ws / rel).write_text(json.dumps(doc))
    return make


def remove(rel: str) -> Callable[[Path], None]:
    return lambda ws: _clear(ws / rel)


def sparse(rel: str, size: int) -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        with open(ws / rel, "r+b") as fh:
            fh.truncate(size)
    return make


def drop_tensor(name: str) -> Callable[[Path], None]:
    """Rewrite model/output.safetensors without one tensor (header only, as the fixtures write them)."""
    def make(ws: Path) -> None:
        from exlx_autocfg.model.safetensors import read_header

        path = ws / "model" / "output.safetensors"
        header = read_header(path)
        kept = [(t.name, t.dtype, t.shape) for t in header.tensors.values() if t.name != name]
        assert len(kept) < len(header.tensors)
        path.unlink()
        write_header_only(path, kept, {"format": "pt"})
    return make


def index_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return json_edit("sharded/model.safetensors.index.json", lambda doc: change(doc["weight_map"]))


def _keep_first(weight_map: dict, n: int) -> None:
    for key in list(weight_map)[n:]:
        del weight_map[key]


def _swap_first_shard(weight_map: dict) -> None:
    first = next(iter(weight_map))
    weight_map[first] = "output-00002-of-00002.safetensors"


def tiny(rel: str, arch: str = "tiny-llama", **overrides) -> Callable[[Path], None]:
    """Another sparse model directory in the workspace (a draft, a model of another shape)."""
    def make(ws: Path) -> None:
        make_model_dir(ws, arch, name=rel, **overrides)
    return make


def adapter(rel: str, base: str, **kw) -> Callable[[Path], None]:
    """A LoRA adapter directory for the model in `base` (relative to the workspace)."""
    def make(ws: Path) -> None:
        target = ws / rel
        make_adapter(target.parent, ws / base, name=target.name, **kw)
    return make


def tokenizer(rel: str, vocab: dict[str, int]) -> Callable[[Path], None]:
    """A tokenizer.json (BPE) in a model directory, enough for the tokenizer comparison."""
    def make(ws: Path) -> None:
        doc = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []}
        (ws / rel / "tokenizer.json").write_text(json.dumps(doc))
    return make


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        import shutil

        shutil.rmtree(path)


def _mknod(path: Path, kind: int, number: int) -> None:
    try:
        os.mknod(path, kind | 0o600, number)
    except PermissionError:
        pytest.skip("mknod needs root (CI runs as root)")


# -------------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    argv: list[str]  # "{ws}" is the workspace
    exit: int
    message: str  # a part of the one stderr line (errors) or of stderr (successes)
    setup: list[Callable[[Path], None]] = field(default_factory=list)
    changes: set[str] = field(default_factory=set)  # paths (relative to ws) a success may change
    stdout: str | None = None  # a part of stdout for successes that write there


PLAN = ["plan", "--gpu", "3090"]
EMIT_TG = ["emit", "-f", "textgen", "{ws}/p.toml"]
SPECIAL = "not a regular file"

CASES = [
    # ------------------------------------------------------------------------ model directories
    Case("model-no-config", [*PLAN, "{ws}/model"], 2, "config.json: missing", [remove("model/config.json")]),
    Case("model-config-fifo", [*PLAN, "{ws}/model"], 2, "config.json: is a FIFO (named pipe), " + SPECIAL,
         [fifo("model/config.json")]),
    Case("model-config-fifo-json", [*PLAN, "{ws}/model", "--json"], 2, "is a FIFO",
         [fifo("model/config.json")]),
    Case("model-config-dir", [*PLAN, "{ws}/model"], 2, "config.json: is a directory",
         [directory("model/config.json")]),
    Case("model-config-chardev", [*PLAN, "{ws}/model"], 2, "config.json: is a character device",
         [chardev("model/config.json")]),
    Case("model-config-socket", [*PLAN, "{ws}/model"], 2, "config.json: is a socket",
         [sock("model/config.json")]),
    Case("model-config-symlink-to-fifo", [*PLAN, "{ws}/model"], 2, "is a FIFO",
         [fifo("elsewhere.fifo"), symlink("model/config.json", "../elsewhere.fifo")]),
    Case("model-config-symlink-loop", [*PLAN, "{ws}/model"], 2, "config.json: cannot read",
         [symlink("model/config.json", "config.json")]),
    Case("model-config-not-json", [*PLAN, "{ws}/model"], 2, "config.json: not valid JSON",
         [write("model/config.json", "{\"architectures\": [")]),
    Case("model-config-not-utf8", [*PLAN, "{ws}/model"], 2, "config.json: not UTF-8",
         [write("model/config.json", b"\xff\xfe{}")]),
    Case("model-config-list", [*PLAN, "{ws}/model"], 2, "config.json: not a JSON object",
         [write("model/config.json", "[1, 2]")]),
    Case("model-config-arch", [*PLAN, "{ws}/model"], 2,
         "architecture FalconForCausalLM is not one exllamav2 0.3.2 recognises",
         [json_edit("model/config.json", lambda d: d.update(architectures=["FalconForCausalLM"]))]),
    Case("model-config-layers", [*PLAN, "{ws}/model"], 2, "num_hidden_layers must be positive",
         [json_edit("model/config.json", lambda d: d.update(num_hidden_layers=-1))]),
    Case("model-config-huge", [*PLAN, "{ws}/model"], 2, "is too large for a config.json",
         [sparse("model/config.json", 17 * 1024 * 1024)]),
    Case("model-no-safetensors", [*PLAN, "{ws}/model"], 2, "no .safetensors files",
         [remove("model/output.safetensors")]),
    Case("model-safetensors-fifo", [*PLAN, "{ws}/model"], 2, "output.safetensors: is a FIFO",
         [fifo("model/output.safetensors")]),
    Case("model-safetensors-named-fifo", ["emit", "-f", "env", "{ws}/model", "--gpu", "3090"], 2,
         "model.safetensors: is a FIFO", [fifo("model/model.safetensors")]),
    Case("model-safetensors-chardev", [*PLAN, "{ws}/model"], 2, "output.safetensors: is a character device",
         [chardev("model/output.safetensors")]),
    Case("model-safetensors-dir", [*PLAN, "{ws}/model"], 2, "extra.safetensors: is a directory",
         [directory("model/extra.safetensors")]),
    Case("model-safetensors-truncated", [*PLAN, "{ws}/model"], 2, "truncated safetensors file",
         [write("model/output.safetensors", b"abc")]),
    Case("model-safetensors-absurd", [*PLAN, "{ws}/model"], 2, "header length",
         [write("model/output.safetensors", (2**40).to_bytes(8, "little") + b"{}")]),
    Case("model-safetensors-not-json", [*PLAN, "{ws}/model"], 2, "safetensors header is not JSON",
         [write("model/output.safetensors", (4).to_bytes(8, "little") + b"{{{{")]),
    Case("model-tensor-missing", [*PLAN, "{ws}/model"], 2, "tensor model.norm missing",
         [drop_tensor("model.norm.weight")]),
    Case("index-shard-missing", [*PLAN, "{ws}/sharded"], 2, "which is missing from",
         [index_edit(lambda m: m.update({next(iter(m)): "output-00009-of-00009.safetensors"}))]),
    Case("index-wrong-shard", [*PLAN, "{ws}/sharded"], 2, "which does not hold it (it is in output-00001",
         [index_edit(_swap_first_shard)]),
    Case("index-unknown-tensor", [*PLAN, "{ws}/sharded"], 2, "(no file holds it)",
         [index_edit(lambda m: m.update({"model.ghost.weight": "output-00001-of-00002.safetensors"}))]),
    Case("index-incomplete", [*PLAN, "{ws}/sharded"], 2, "lists 10 of the",
         [index_edit(lambda m: _keep_first(m, 10))]),
    Case("index-no-weight-map", [*PLAN, "{ws}/sharded"], 2, "no weight_map object",
         [json_edit("sharded/model.safetensors.index.json", lambda d: d.pop("weight_map"))]),
    Case("index-fifo", [*PLAN, "{ws}/sharded"], 2, "model.safetensors.index.json: is a FIFO",
         [fifo("sharded/model.safetensors.index.json")]),
    Case("model-missing-path", [*PLAN, "{ws}/nope"], 2, "no such directory"),
    Case("model-unknown-catalog", [*PLAN, "no-such-model"], 2, "unknown model 'no-such-model'"),
    Case("model-argument-fifo", [*PLAN, "{ws}/a.fifo"], 2, "not a model directory", [fifo("a.fifo")]),
    Case("model-empty", [*PLAN, ""], 2, "MODEL '': must be a model directory"),
    Case("bpw-on-directory", [*PLAN, "{ws}/model", "--bpw", "5"], 2,
         "--bpw 5.0: applies only to a catalog model"),
    Case("bpw-conflict", [*PLAN, "llama3-8b@4.0", "--bpw", "5"], 2,
         "conflicts with the bits in the reference"),
    Case("bpw-range", [*PLAN, "llama3-8b", "--bpw", "9"], 2, "between 2.0 and 8.0"),
    # ---------------------------------------------------------------------------------- profiles
    Case("show-missing", ["show", "{ws}/nope.toml"], 2, "no such file"),
    Case("show-fifo", ["show", "{ws}/p.toml"], 2, "p.toml: is a FIFO", [fifo("p.toml")]),
    Case("show-dir", ["show", "{ws}/p.toml"], 2, "p.toml: is a directory", [directory("p.toml")]),
    Case("show-chardev", ["show", "{ws}/p.toml"], 2, "is a character device", [chardev("p.toml")]),
    Case("show-not-toml", ["show", "{ws}/p.toml"], 2, "not valid TOML", [write("p.toml", "[settings\n")]),
    Case("show-not-utf8", ["show", "{ws}/p.toml"], 2, "not UTF-8", [write("p.toml", b"\xff\xfe\x00")]),
    Case("show-schema-string", ["show", "{ws}/p.toml"], 2,
         "schema: must be the integer 2, got the string '2'",
         [edit("p.toml", "schema = 2", 'schema = "2"')]),
    Case("show-schema-99", ["show", "{ws}/p.toml"], 2, "version 99 is not supported",
         [edit("p.toml", "schema = 2", "schema = 99")]),
    Case("show-unknown-key", ["show", "{ws}/p.toml"], 2, "settings.max_seq_lenn: unknown key",
         [edit("p.toml", "max_seq_len =", "max_seq_lenn =")]),
    Case("show-negative", ["show", "{ws}/p.toml"], 2, "settings.max_seq_len",
         [edit("p.toml", "max_seq_len = 16384", "max_seq_len = -1")]),
    Case("verify-json-unreadable", ["verify", "{ws}/p.toml", "--json"], 2, "cannot read: not UTF-8",
         [write("p.toml", b"\xff\xfe\x00")]),
    Case("verify-json-missing", ["verify", "{ws}/nope.toml", "--json"], 2, "no such file"),
    Case("verify-json-fifo", ["verify", "{ws}/p.toml", "--json"], 2, "is a FIFO", [fifo("p.toml")]),
    Case("verify-python-empty", ["verify", "{ws}/p.toml", "--python", ""], 2, "--python '': is empty"),
    Case("emit-profile-plan-option", [*EMIT_TG, "--context", "4096"], 2, "--context applies only to a MODEL"),
    Case("emit-profile-plan-options", [*EMIT_TG, "--context", "4096", "--gpu", "3090"], 2,
         "--gpu, --context apply only to a MODEL"),
    Case("emit-json-profile-fifo", ["emit", "-f", "json", "{ws}/p.toml"], 2, "is a FIFO", [fifo("p.toml")]),
    Case("prepare-json-no-model", ["prepare", "{ws}/nope", "--json"], 2, "does not exist"),
    Case("prepare-on-stale", ["prepare", "{ws}/model", "--on-stale", "maybe", "--json"], 2,
         "--on-stale maybe: choose one of"),
    # --------------------------------------------------------------------------- facts documents
    Case("facts-schema-99", ["check", "--facts", "{ws}/facts.json"], 2,
         "facts schema: version 99 is not supported",
         [json_edit("facts.json", lambda d: d.update(schema=99))]),
    Case("facts-schema-string", ["check", "--facts", "{ws}/facts.json"], 2,
         "must be the integer 1, got the string",
         [json_edit("facts.json", lambda d: d.update(schema="1"))]),
    Case("facts-no-schema", ["check", "--facts", "{ws}/facts.json"], 2, "no schema",
         [json_edit("facts.json", lambda d: d.pop("schema"))]),
    Case("facts-not-json", ["check", "--facts", "{ws}/facts.json"], 2, "not a facts document: not JSON",
         [write("facts.json", "{")]),
    Case("facts-list", ["check", "--facts", "{ws}/facts.json"], 2, "the top level is a list",
         [write("facts.json", "[]")]),
    Case("facts-no-python", ["check", "--facts", "{ws}/facts.json"], 2, "python: missing",
         [json_edit("facts.json", lambda d: d.pop("python"))]),
    Case("facts-wrong-type", ["check", "--facts", "{ws}/facts.json"], 2, "gpu.gpus: expected a list",
         [json_edit("facts.json", lambda d: d["gpu"].update(gpus="x"))]),
    Case("facts-fifo", ["check", "--facts", "{ws}/facts.json"], 2, "--facts", [fifo("facts.json")]),
    Case("facts-missing", ["check", "--facts", "{ws}/nope.json"], 2, "no such file"),
    Case("facts-json-schema", ["check", "--facts", "{ws}/facts.json", "--json"], 2, "facts schema",
         [json_edit("facts.json", lambda d: d.update(schema=2))]),
    Case("check-require", ["check", "--facts", "{ws}/facts.json", "--require", "numpy"], 2,
         "--require numpy: unknown package 'numpy'"),
    Case("check-skip", ["check", "--facts", "{ws}/facts.json", "--skip", "bogus", "--json"], 2,
         "--skip bogus: unknown check"),
    # ------------------------------------------------------------------------------------ options
    Case("timeout-nan", ["detect", "--timeout", "nan"], 2,
         "--timeout nan: must be a positive, finite number"),
    Case("timeout-inf", ["detect", "--timeout", "inf"], 2,
         "--timeout inf: must be a positive, finite number"),
    Case("timeout-negative", ["detect", "--timeout", "-1"], 2, "--timeout -1.0: must be a positive"),
    Case("timeout-nan-json", ["detect", "--timeout", "nan", "--json"], 2, "finite"),
    Case("check-timeout-inf", ["check", "--timeout", "inf", "--json"], 2,
         "--timeout inf: must be a positive"),
    Case("timeout-text", ["detect", "--timeout", "soon"], 2, "detect: invalid value for '--timeout'"),
    Case("python-empty", ["detect", "--python", ""], 2, "--python '': is empty"),
    Case("python-missing", ["detect", "--python", "{ws}/no/python"], 2, "no such file"),
    Case("python-dir", ["detect", "--python", "{ws}"], 2, "is a directory, not an interpreter"),
    Case("python-not-executable", ["detect", "--python", "{ws}/p.toml"], 2, "is not executable"),
    Case("gpu-ambiguous", [*PLAN[:1], "llama3-8b", "--gpu", "A100"], 2,
         "GPU name 'A100' is ambiguous: the table has a100-40gb (40 GiB), a100-80gb (80 GiB)"),
    Case("gpu-ambiguous-count", [*PLAN[:1], "llama3-8b", "--gpu", "2xV100"], 2,
         "GPU name 'V100' is ambiguous"),
    Case("gpu-count-zero", [*PLAN[:1], "llama3-8b", "--gpu", "0x3090"], 2, "--gpu 0x3090: count must be"),
    Case("gpu-empty", [*PLAN[:1], "llama3-8b", "--gpu", ""], 2, "--gpu '': expected a GPU name"),
    Case("gpu-unknown", [*PLAN[:1], "llama3-8b", "--gpu", "RTX 3080"], 2, "unknown GPU 'RTX 3080'"),
    Case("gpu-mixed-vendors", [*PLAN, "llama3-8b", "--gpu", "mi210"], 2, "mixes NVIDIA and AMD"),
    Case("assume-bad", [*PLAN, "llama3-8b", "--assume", "torch>=2"], 2, "--assume 'torch>=2': expected"),
    Case("assume-unknown", [*PLAN, "llama3-8b", "--assume", "numpy==1.0"], 2, "unknown package 'numpy'"),
    Case("context-negative-json", [*PLAN, "llama3-8b", "--context", "-1", "--json"], 2,
         "--context -1: must be a positive number of tokens"),
    Case("context-text", [*PLAN, "llama3-8b", "--context", "lots"], 2, "plan: invalid value for '--context'"),
    Case("cache-unknown", [*PLAN, "llama3-8b", "--cache", "Q7"], 2, "--cache Q7: choose one of"),
    Case("cache-coarser", [*PLAN, "llama3-8b", "--cache", "Q4", "--min-cache-precision", "Q8"], 2,
         "--cache Q4: is coarser than the minimum cache precision Q8"),
    Case("chunk-size", [*PLAN, "llama3-8b", "--chunk-size", "100"], 2,
         "--chunk-size 100: must be a multiple"),
    Case("budget", [*PLAN, "llama3-8b", "--budget", "half"], 2, "--budget half: choose total or free"),
    Case("batch-size", [*PLAN, "llama3-8b", "--batch-size", "0"], 2, "--batch-size 0: must be >= 1"),
    Case("backend-unknown", [*PLAN, "llama3-8b", "--backend", "cuda"], 2, "unknown backend 'cuda'"),
    Case("python-with-gpu", [*PLAN, "llama3-8b", "--python", "/usr/bin/python3"], 2,
         "--python /usr/bin/python3: applies only to a plan for this machine"),
    Case("profile-python-with-gpu", ["profile", "llama3-8b", "--gpu", "3090", "--python", "x"], 2,
         "applies only to a plan for this machine"),
    Case("does-not-fit", ["plan", "llama2-70b", "--gpu", "3060"], 1,
         "NVIDIA GeForce RTX 3060 offers 11.05 GiB"),
    Case("does-not-fit-json", ["plan", "llama2-70b", "--gpu", "3060", "--json"], 1, "missing"),
    Case("emit-shell-wrong-format", [*EMIT_TG, "--shell", "fish"], 2,
         "--shell fish: applies only to --format env, not --format textgen"),
    Case("emit-script-wrong-format", ["emit", "-f", "env", "{ws}/p.toml", "--script", "chat"], 2,
         "--script chat: applies only to --format exllamav2-args"),
    Case("emit-unknown-format", ["emit", "-f", "yaml", "{ws}/p.toml"], 2, "unknown format 'yaml'"),
    Case("emit-no-format", ["emit", "{ws}/p.toml"], 2, "--format is required"),
    Case("emit-json-bad-shell", ["emit", "--format=json", "{ws}/p.toml", "--shell", "zsh"], 2, "--shell zsh"),
    Case("no-such-command", ["frobnicate"], 2, "no such command 'frobnicate'"),
    Case("no-such-option-json", ["plan", "llama3-8b", "--frob", "--json"], 2, "plan: no such option: --frob"),
    # ------------------------------------------------------------ what loads beside the model (issue 12)
    Case("draft-vocab-differs", [*PLAN, "{ws}/model", "--draft", "{ws}/draft"], 2,
         "vocabulary differs from the model's",
         [tiny("draft", num_hidden_layers=1), tokenizer("model", {"a": 0, "b": 1}),
          tokenizer("draft", {"a": 0, "c": 1})]),
    Case("draft-vocab-larger", [*PLAN, "{ws}/model", "--draft", "{ws}/draft"], 2,
         "draft vocabulary 2048 > model vocabulary 1024",
         [tiny("draft", num_hidden_layers=1, vocab_size=2048)]),
    Case("draft-larger-than-model", [*PLAN, "{ws}/draft", "--draft", "{ws}/model"], 2,
         "is not smaller than", [tiny("draft", num_hidden_layers=1)]),
    Case("draft-larger-json", [*PLAN, "{ws}/draft", "--draft", "{ws}/model", "--json"], 2,
         "is not smaller than", [tiny("draft", num_hidden_layers=1)]),
    Case("draft-missing", [*PLAN, "{ws}/model", "--draft", "{ws}/nope"], 2, "no such directory"),
    Case("draft-config-fifo", [*PLAN, "{ws}/model", "--draft", "{ws}/draft"], 2, "config.json: is a FIFO",
         [tiny("draft", num_hidden_layers=1), fifo("draft/config.json")]),
    Case("draft-cache-alone", [*PLAN, "{ws}/model", "--draft-cache", "Q4"], 2,
         "--draft-cache Q4: applies only with --draft"),
    Case("draft-cache-unknown", [*PLAN, "{ws}/model", "--draft", "{ws}/draft", "--draft-cache", "Q5"], 2,
         "--draft-cache Q5: choose one of", [tiny("draft", num_hidden_layers=1)]),
    Case("profile-draft-refused", ["profile", "{ws}/draft", "--gpu", "3090", "--draft", "{ws}/model", "--out",
                                   "{ws}/new.toml"], 2, "is not smaller than",
         [tiny("draft", num_hidden_layers=1)]),
    Case("lora-other-model", [*PLAN, "{ws}/model", "--lora", "{ws}/loras/wide"], 2,
         "(an adapter for another base model?)",
         [tiny("wide", hidden_size=512, intermediate_size=1024), adapter("loras/wide", "wide", r=4)]),
    Case("lora-other-architecture", [*PLAN, "{ws}/gemma", "--lora", "{ws}/loras/g"], 2,
         "exllamav2 has no LoRA support for Gemma2ForCausalLM",
         [tiny("gemma", "tiny-gemma2"), adapter("loras/g", "gemma", r=4, modules=("q_proj",))]),
    Case("lora-no-adapter-config", [*PLAN, "{ws}/model", "--lora", "{ws}/loras/x"], 2,
         "no adapter_config.json (not a PEFT LoRA adapter directory)",
         [adapter("loras/x", "model", r=4), remove("loras/x/adapter_config.json")]),
    Case("lora-config-json-emit",
         ["emit", "-f", "json", "{ws}/model", "--gpu", "3090", "--lora", "{ws}/loras/x"], 2,
         "no adapter_config.json", [adapter("loras/x", "model", r=4), remove("loras/x/adapter_config.json")]),
    Case("lora-missing", [*PLAN, "{ws}/model", "--lora", "{ws}/loras/none"], 2, "no such adapter directory"),
    Case("lora-negative-scale", [*PLAN, "{ws}/model", "--lora", "{ws}/loras/x:-1"], 2,
         "scale -1 must be a finite number >= 0", [adapter("loras/x", "model", r=4)]),
    Case("tp-one-gpu", [*PLAN, "llama3-8b", "--tensor-parallel"], 2,
         "--tensor-parallel needs two or more GPUs; 1 given"),
    Case("tp-one-gpu-json", [*PLAN, "llama3-8b", "--tensor-parallel", "--json"], 2, "two or more GPUs"),
    Case("tp-with-lora",
         ["plan", "--gpu", "3090x2", "{ws}/model", "--tensor-parallel", "--lora", "{ws}/loras/x"],
         2, "exllamav2's TP forward never applies LoRAs", [adapter("loras/x", "model", r=4)]),
    Case("emit-profile-draft-option", [*EMIT_TG, "--draft", "x"], 2, "--draft applies only to a MODEL"),
    Case("emit-profile-tp-option", [*EMIT_TG, "--tensor-parallel"], 2, "--tensor-parallel applies only "
                                                                       "to a MODEL"),
    # ------------------------------------------------------------------------------ output targets
    Case("out-fifo", [*EMIT_TG, "--out", "{ws}/out.yaml"], 2, "out.yaml: is a FIFO (named pipe); refusing",
         [fifo("out.yaml")]),
    Case("out-chardev", [*EMIT_TG, "--out", "{ws}/out.yaml"], 2, "out.yaml: is a character device; refusing",
         [chardev("out.yaml")]),
    Case("out-blockdev", [*EMIT_TG, "--out", "{ws}/out.yaml"], 2, "is a block device; refusing",
         [blockdev("out.yaml")]),
    Case("out-socket", [*EMIT_TG, "--out", "{ws}/out.yaml"], 2, "is a socket; refusing", [sock("out.yaml")]),
    Case("out-symlink-to-fifo", [*EMIT_TG, "--out", "{ws}/link.yaml"], 2, "(the symlink points at",
         [fifo("target.fifo"), symlink("link.yaml", "target.fifo")]),
    Case("out-symlink-loop", [*EMIT_TG, "--out", "{ws}/loop.yaml"], 2, "is a symlink loop",
         [symlink("loop.yaml", "loop.yaml")]),
    Case("out-dir-default-fifo", ["emit", "-f", "tabbyapi", "{ws}/p.toml", "--out", "{ws}/tabby"], 2,
         "tabby/config.yml: is a FIFO", [directory("tabby"), fifo("tabby/config.yml")]),
    Case("out-stdin", [*EMIT_TG, "--out", "/dev/stdin"], 2, "names file descriptor 0 of this process"),
    Case("out-under-file", [*EMIT_TG, "--out", "{ws}/p.toml/sub.yaml"], 2, "is not a directory"),
    Case("out-env-fifo", ["emit", "-f", "env", "{ws}/p.toml", "--out", "{ws}/env.sh"], 2, "env.sh: is a FIFO",
         [fifo("env.sh")]),
    Case("out-not-mapping", ["emit", "-f", "tabbyapi", "{ws}/p.toml", "--out", "{ws}/config.yml"], 2,
         "the top level is a list, not a mapping", [write("config.yml", "- a\n- b\n")]),
    Case("out-not-utf8", ["emit", "-f", "tabbyapi", "{ws}/p.toml", "--out", "{ws}/config.yml"], 2,
         "config.yml: not UTF-8 text", [write("config.yml", b"model:\n  x: \xff\n")]),
    Case("out-broken-markers", ["emit", "-f", "env", "{ws}/p.toml", "--out", "{ws}/env.sh"], 2,
         "block markers are broken",
         [write("env.sh", "# >>> exlx-autocfg: managed block, `exlx-autocfg emit --out` replaces it >>>\n")]),
    Case("out-bak-fifo", ["emit", "-f", "tabbyapi", "{ws}/p.toml", "--out", "{ws}/config.yml"], 2,
         "config.yml.bak: is a FIFO", [fifo("config.yml.bak")]),
    Case("profile-out-fifo", ["profile", "llama3-8b", "--gpu", "3090", "--out", "{ws}/new.toml"], 2,
         "new.toml: is a FIFO (named pipe); refusing", [fifo("new.toml")]),
    Case("profile-out-chardev", ["profile", "llama3-8b", "--gpu", "3090", "--out", "{ws}/new.toml"], 2,
         "is a character device", [chardev("new.toml")]),
    Case("profile-out-dir", ["profile", "llama3-8b", "--gpu", "3090", "--out", "{ws}"], 2,
         "is a directory, expected a file"),
    # Output targets written as the policy says (exit 0): through symlinks, plainly to stdout-like devices.
    Case("out-symlink-through", ["emit", "-f", "tabbyapi", "{ws}/p.toml", "--out", "{ws}/link.yml"], 0,
         "(through the symlink", [symlink("link.yml", "config.yml")],
         changes={"config.yml", "config.yml.bak"}),
    Case("out-dangling-symlink", [*EMIT_TG, "--out", "{ws}/link.yaml"], 0, "wrote 10 keys",
         [symlink("link.yaml", "made.yaml")], changes={"made.yaml"}),
    Case("out-null-device", [*EMIT_TG, "--out", "{ws}/null"], 0, "wrote", [chardev("null", NULL)]),
    Case("out-dev-stdout", [*EMIT_TG, "--out", "/dev/stdout"], 0, "in /dev/stdout",
         stdout="max_seq_len: 16384"),
    Case("profile-out-symlink", ["profile", "llama3-8b", "--gpu", "3090", "--out", "{ws}/link.toml"], 0, "",
         [symlink("link.toml", "p.toml")], changes={"p.toml"}, stdout="wrote"),
]


def _ids() -> list[str]:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return ids


# ------------------------------------------------------------------------------------------ snapshots


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed, only regular files opened), without lock files."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if name == LOCK_NAME:
                continue
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = (kind, st.st_mode)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = (kind, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = (kind, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, digest)
            else:
                out[rel] = (kind, st.st_mode, st.st_ino, st.st_rdev)
    return out


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


# ------------------------------------------------------------------------------------------------ tests


def test_the_corpus_is_large_and_covers_every_command():
    commands = {c.argv[0] for c in CASES}
    assert len(CASES) >= 60
    assert {"detect", "plan", "profile", "show", "verify", "prepare", "emit", "check"} <= commands


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_bad_input(case: Case, tmp_path, capsys, no_hang, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no profile lands in the user's home
    ws = workspace(tmp_path)
    for step in case.setup:
        step(ws)
    before = snapshot(ws)
    argv = [arg.replace("{ws}", str(ws)) for arg in case.argv]
    capsys.readouterr()

    code = run(argv)

    out, err = capsys.readouterr()
    assert code == case.exit, (code, err)
    assert "Traceback" not in out + err
    assert changed(before, snapshot(ws)) == case.changes
    if case.exit == 0:
        assert case.message in err
        if case.stdout is not None:
            assert case.stdout in out
        return
    assert err.count("\n") == 1 and err.startswith("exlx-autocfg: error: "), err
    assert case.message in err, err
    as_json = "--json" in argv or (argv[0] == "emit" and "json" in " ".join(argv) and "--out" not in argv)
    if as_json:
        doc = json.loads(out)  # one document, nothing else
        assert out.count("\n") == 1
        assert set(doc) == {"schema", "error"} and doc["schema"] == 1
        assert doc["error"]["exit_code"] == code and doc["error"]["code"] in ERROR_CODES
        assert doc["error"]["message"] == err.removeprefix("exlx-autocfg: error: ").rstrip("\n")
    else:
        assert out == ""


def test_special_files_stay_what_they_were(tmp_path, capsys, no_hang):
    """The FIFO, the device and the socket a refused --out named are still a FIFO, a device and a socket
    (the bug made them regular files, and wrote a .bak beside them)."""
    ws = workspace(tmp_path)
    fifo("a.fifo")(ws)
    sock("a.sock")(ws)
    chardev("a.dev")(ws)
    for name, test in (("a.fifo", stat.S_ISFIFO), ("a.sock", stat.S_ISSOCK), ("a.dev", stat.S_ISCHR)):
        assert run(["emit", "-f", "textgen", str(ws / "p.toml"), "--out", str(ws / name)]) == 2
        assert test(os.lstat(ws / name).st_mode) and not (ws / f"{name}.bak").exists()
    capsys.readouterr()
