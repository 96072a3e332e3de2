"""Qwen2.5-72B 4.25 bpw on 2x RTX 3090, with and without a Qwen2.5-0.5B draft: max context per cache mode.

Every figure is the real command's answer, run in this process through the CLI:

    exlx-autocfg plan qwen2.5-72b@4.25bpw --gpu 3090x2 [--draft qwen2.5-0.5b@4.0bpw] --cache MODE --json

`max_seq_len` of each plan (the planner solves the context with the draft's weights and its cache, in the
same mode, placed first on GPU 0 as TabbyAPI loads it; the chunk size is the planner's choice, so a
row at --chunk-size 2048 on both sides isolates what the draft costs). Further rows: `--tensor-parallel`
(load_tp over both GPUs), tensor parallel with the draft, and a rank-64 LoRA on every linear (a
header-only adapter_model.safetensors written to a temporary directory: only its shapes matter).

Run: python bench/bench_draft.py [--draft-bpw 4.0] [--lora-rank 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exlx_autocfg.cli import run
from exlx_autocfg.model.catalog import catalog_config
from tests.support.adapters import make_adapter

MIB = 1024**2
MODEL = "qwen2.5-72b@4.25bpw"
MODES = ("FP16", "Q8", "Q6", "Q4")


def plan_json(*args: str) -> dict:
    """`exlx-autocfg plan ... --json` in this process; the document it prints (an error document too)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = run(["plan", *args, "--json"])
    doc = json.loads(out.getvalue())
    doc["_exit"] = code
    return doc


def write_lora(root: Path, rank: int) -> Path:
    """A PEFT LoRA for Qwen2.5-72B on every linear of every layer, header only (tests/support/adapters.py)."""
    base = root / "qwen2.5-72b"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(catalog_config("qwen2.5-72b")))
    return make_adapter(root, base, name=f"qwen72b-r{rank}", r=rank,
                        config={"base_model_name_or_path": "Qwen/Qwen2.5-72B-Instruct"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft-bpw", type=float, default=4.0)
    ap.add_argument("--lora-rank", type=int, default=64)
    args = ap.parse_args()
    draft = f"qwen2.5-0.5b@{args.draft_bpw:g}bpw"
    base = [MODEL, "--gpu", "3090x2"]
    with tempfile.TemporaryDirectory() as tmp:
        lora = write_lora(Path(tmp), args.lora_rank)
        variants = {
            "without draft": [],
            f"with {draft} draft": ["--draft", draft],
            "tensor parallel": ["--tensor-parallel"],
            "tensor parallel + draft": ["--tensor-parallel", "--draft", draft],
            f"rank-{args.lora_rank} LoRA": ["--lora", str(lora)],
            "without draft, chunk 2048": ["--chunk-size", "2048"],
            "with draft, chunk 2048": ["--draft", draft, "--chunk-size", "2048"],
        }
        docs: dict[str, dict[str, dict]] = {name: {} for name in variants}
        seconds: dict[str, float] = {}
        for name, extra in variants.items():
            started = time.perf_counter()
            for mode in MODES:
                docs[name][mode] = plan_json(*base, *extra, "--cache", mode)
            seconds[name] = (time.perf_counter() - started) / len(MODES)
    print(f"{MODEL} on 2x RTX 3090 (24 GiB), what-if stack (flash-attn 2.7.4.post1), `plan --cache MODE`")
    print()
    print("| | " + " | ".join(MODES) + " | s/plan |")
    print("|---|" + "---:|" * (len(MODES) + 1))

    def ctx(doc: dict) -> str:
        return f"{doc['settings']['max_seq_len']:,}" if doc["_exit"] == 0 else "does not fit"

    for name, by_mode in docs.items():
        print(f"| {name} | " + " | ".join(ctx(by_mode[m]) for m in MODES) + f" | {seconds[name]:.2f} |")
    plain, with_draft = docs["without draft"], docs[f"with {draft} draft"]

    def lost(a: dict, b: dict) -> str:
        return " | ".join(
            f"{a[m]['settings']['max_seq_len'] - b[m]['settings']['max_seq_len']:,}" for m in MODES)

    print(f"| context lost to the draft | {lost(plain, with_draft)} | |")
    print("| context lost to the draft, chunk 2048 both | "
          f"{lost(docs['without draft, chunk 2048'], docs['with draft, chunk 2048'])} | |")
    held = []
    for m in MODES:
        row = with_draft[m]["memory"][0]["parts"]
        held.append(sum(v for k, v in row.items() if k.startswith("draft_")))
    print("| draft bytes on GPU 0 (MiB) | " + " | ".join(f"{h / MIB:,.0f}" for h in held) + " | |")
    lora_doc = docs[f"rank-{args.lora_rank} LoRA"]
    lora_mib = [sum(r["parts"].get("lora", 0) for r in lora_doc[m]["memory"]) / MIB for m in MODES]
    print("| LoRA bytes, both GPUs (MiB) | " + " | ".join(f"{x:,.0f}" for x in lora_mib) + " | |")
    print()
    print("chunk size chosen (max_input_len): " + "; ".join(
        f"{name}: " + ", ".join(f"{m} {by_mode[m]['settings']['max_input_len']}" for m in MODES
                                if by_mode[m]["_exit"] == 0) for name, by_mode in docs.items()))
    doc = with_draft["Q4"]
    print()
    for w in doc["warnings"]:
        if w["code"].startswith("draft."):
            print(f"Q4 with the draft: [{w['code']}] {w['message']}")
    for r in doc["reasons"]:
        if r["decision"].startswith("draft"):
            print(f"Q4 with the draft: {r['decision']} = {r['choice']} [{r['code']}]")


if __name__ == "__main__":
    main()
