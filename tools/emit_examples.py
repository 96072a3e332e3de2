"""Fill the example blocks of docs/emit-*.md with real `exlx-autocfg emit` output.

A page marks a slot with `<!-- example: NAME -->` ... `<!-- /example -->`; this script runs the command
that NAME stands for (what-if GPUs, so no GPU is needed) and replaces the slot's content. The model is a
sparse EXL2 directory (real config.json and safetensors headers, no weights) from
tests/support/model_dirs.py. Run from the repository root:

    python -m tools.emit_examples            # rewrite the pages
    python -m tools.emit_examples --check    # exit 1 if a page is out of date
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHOWN_MODELS = "/srv/models"  # the directory the pages show, wherever the sparse model really is
MODEL = "Mistral-Nemo-Instruct-2407-exl2-6.0bpw"

PRE = "--gpu 2080ti-22gb --assume torch==2.4.0 --assume xformers==0.0.27.post2 --context 131072"
AMP = "--gpu 3090 --assume torch==2.4.0 --assume flash-attn==2.6.3 --context 65536 --batch-size 4"
MIX = "--gpu 3090 --gpu p40 --assume torch==2.4.0 --assume xformers==0.0.27.post2 --context 131072"

EXAMPLES = {
    "tabbyapi-pre": f"emit -f tabbyapi M {PRE}",
    "tabbyapi-amp": f"emit -f tabbyapi M {AMP}",
    "tabbyapi-model-pre": f"emit -f tabbyapi-model M {PRE}",
    "tabbyapi-mix": f"emit -f tabbyapi M {MIX}",
    "textgen-pre": f"emit -f textgen M {PRE}",
    "textgen-amp": f"emit -f textgen M {AMP}",
    "textgen-flags-pre": f"emit -f textgen-flags M {PRE}",
    "textgen-flags-amp": f"emit -f textgen-flags M {AMP}",
    "exllamav2-args-pre": f"emit -f exllamav2-args M {PRE}",
    "exllamav2-args-amp": f"emit -f exllamav2-args M {AMP}",
    "exllamav2-args-pre-init": f"emit -f exllamav2-args --script model_init M {PRE}",
    "exllamav2-args-mix": f"emit -f exllamav2-args M {MIX}",
    "env-pre": f"emit -f env M {PRE}",
    "env-amp": f"emit -f env M {AMP}",
    "env-mix": f"emit -f env M {MIX}",
    "env-fish-pre": f"emit -f env --shell fish M {PRE}",
    "env-powershell-pre": f"emit -f env --shell powershell M {PRE}",
    "json-pre": f"emit -f json M {PRE}",
    "json-amp": f"emit -f json M {AMP}",
}
SLOT = re.compile(r"(<!-- example: (?P<name>[\w-]+) -->\n)(.*?)(<!-- /example -->)", re.S)


def run_example(name: str, model_dir: Path) -> str:
    argv = [a if a != "M" else str(model_dir) for a in shlex.split(EXAMPLES[name])]
    exe = Path(sys.executable).with_name("exlx-autocfg")
    proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr.strip()}")
    out = proc.stdout
    if name.startswith("json"):  # the full plan is long; the page shows the launcher part
        doc = json.loads(out)
        doc["plan"] = "{... the Plan document of `plan --json`, 300 lines ...}"
        doc["reasons"] = [*doc["reasons"][:2], f"... {len(doc['reasons']) - 2} more"]
        out = json.dumps(doc, indent=2) + "\n"
    shown = f"$ exlx-autocfg {EXAMPLES[name].replace(' M ', f' {SHOWN_MODELS}/{MODEL} ')}\n"
    text = shown + "".join(f"[stderr] {line}\n" for line in proc.stderr.splitlines()) + out
    return "```\n" + text.replace(str(model_dir.parent), SHOWN_MODELS) + "```\n"


def main() -> int:
    from tests.support.model_dirs import make_model_dir

    check = "--check" in sys.argv
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp), "mistral-nemo-12b", bpw=6.0, name=MODEL)
        for page in sorted((ROOT / "docs").glob("emit-*.md")):
            text = page.read_text()
            new = SLOT.sub(lambda m: m.group(1) + run_example(m.group("name"), model_dir) + m.group(4), text)
            if new != text:
                stale.append(page.name)
                if not check:
                    page.write_text(new)
    if stale:
        print(("out of date: " if check else "updated: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
