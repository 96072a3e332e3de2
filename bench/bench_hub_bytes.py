"""Benchmark: what planning a Hugging Face model costs in network bytes, measured against the local Hub.

    python bench/bench_hub_bytes.py

Full-size sparse EXL2 checkpoints (tests/support/model_dirs.py) are served by tests/support/fake_hub.py on
127.0.0.1 to the real huggingface_hub client; each `plan` runs in this process with empty caches. Prints,
per plan, the bytes the Hub served (counted by the server), the bytes `plan --json` reports (`bytes_read`),
the size of the weights, and the ratio; then the same plan again (cache) and offline. Goal (issue 13):
bytes read stay a tiny fraction of the weights, a second plan of a commit costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)

from exlx_autocfg.cli import run  # noqa: E402
from tests.support.fake_hub import FakeHub, files_of  # noqa: E402
from tests.support.model_dirs import make_model_dir  # noqa: E402


def plan(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(["plan", *args, "--json"])
    if code:
        raise SystemExit(f"plan {' '.join(args)} exited {code}")
    return json.loads(out.getvalue())


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="exlx-bench-hub-"))
    os.environ["HF_HOME"] = str(tmp / "hf")
    os.environ["EXLX_CACHE_DIR"] = str(tmp / "cache")
    os.environ.pop("HF_HUB_OFFLINE", None)
    single = make_model_dir(tmp, "llama3-8b", bpw=4.0, name="l8-4.0")
    sharded = make_model_dir(tmp, "llama3-70b", bpw=4.0, shards=8, name="l70-4.0")
    quants = {b: make_model_dir(tmp, "yi-34b", bpw=b, shards=3 if b > 5 else 1, name=f"yi-{b}")
              for b in (4.0, 5.0, 6.5)}
    gpu = ("--gpu", "3090")
    with FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        hub.add_repo("bench/Llama-3-8B-exl2", {"4.0bpw": files_of(single)})
        hub.add_repo("bench/Llama-3-70B-exl2", {"4.0bpw": files_of(sharded)})
        hub.add_repo("bench/Yi-34B-exl2", {f"{b:.1f}bpw": files_of(d) for b, d in quants.items()})
        print(f"{'plan':58} {'served':>10} {'bytes_read':>10} {'weights':>12} {'ratio':>9}")
        cases = [
            ("single file: hf:bench/Llama-3-8B-exl2@4.0bpw", ("hf:bench/Llama-3-8B-exl2@4.0bpw", *gpu)),
            ("8 shards: hf:bench/Llama-3-70B-exl2@4.0bpw",
             ("hf:bench/Llama-3-70B-exl2@4.0bpw", "--gpu", "3090x2")),
            ("3 branches + main: hf:bench/Yi-34B-exl2", ("hf:bench/Yi-34B-exl2", *gpu, "--context", "32768")),
            ("again, by branch: hf:bench/Llama-3-8B-exl2@4.0bpw", ("hf:bench/Llama-3-8B-exl2@4.0bpw", *gpu)),
            ("again: hf:bench/Yi-34B-exl2", ("hf:bench/Yi-34B-exl2", *gpu, "--context", "32768")),
        ]
        for label, args in cases:
            hub.reset()
            doc = plan(*args)
            source = doc.get("hub") or doc["model"]["hub"]
            read, weights = source["bytes_read"], source["weights_bytes"]
            print(f"{label:58} {hub.bytes_served:>10,} {read:>10,} {weights:>12,} {read / weights:>9.5%}")
        commit = plan("hf:bench/Llama-3-8B-exl2@4.0bpw", *gpu)["model"]["hub"]["commit"]
        hub.reset()
        doc = plan(f"hf:bench/Llama-3-8B-exl2@{commit}", *gpu)
        print(f"{'again, by commit':58} {hub.bytes_served:>10,} {doc['model']['hub']['bytes_read']:>10,}")
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub.reset()
        doc = plan("hf:bench/Yi-34B-exl2", *gpu, "--context", "32768")
        print(f"{'offline (HF_HUB_OFFLINE=1): hf:bench/Yi-34B-exl2':58} {hub.bytes_served:>10,} "
              f"{doc['hub']['bytes_read']:>10,}   chose {doc['revision']}")


if __name__ == "__main__":
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    argparse.ArgumentParser(description=__doc__, formatter_class=fmt).parse_args()
    main()
