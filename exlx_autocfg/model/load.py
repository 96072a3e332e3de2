"""`load_model_spec(ref)`: a model directory (config.json + *.safetensors, headers only), a Hugging Face
revision `hf:ORG/REPO[@REVISION]` (config.json and headers by range requests, `model.hub`) or a catalog
reference such as `yi-34b@4.0bpw` / `llama3-8b` (profiles/models.toml)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from exlx_autocfg.errors import ModelSpecError, OptionError
from exlx_autocfg.model.catalog import DEFAULT_CATALOG_BPW, catalog, catalog_spec, resolve_catalog_id
from exlx_autocfg.model.directory import load_directory
from exlx_autocfg.model.spec import ModelSpec

_REF = re.compile(r"^(?P<id>[^@]+?)(?:@(?P<q>fp16|[0-9]+(?:\.[0-9]+)?)(?:bpw)?)?$", re.IGNORECASE)


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or ref.startswith((".", "~")) or (os.altsep is not None and os.altsep in ref)


def load_model_spec(ref: str | os.PathLike[str], *, bpw: float | None = None) -> ModelSpec:
    """A model directory, `hf:ORG/REPO[@REVISION]` (default revision main), or a catalog reference
    `id[@<bpw>[bpw]|@fp16]` (default 4.0 bpw).

    `bpw` chooses the bits per weight of a catalog model; it is refused for a directory or a Hub revision
    (whose bits are in their config.json) and when the reference names other bits. Raises ModelSpecError
    (no such model, a bad directory), HubError (the Hub cannot answer) or OptionError (`bpw`).
    """
    text = os.fspath(ref) if isinstance(ref, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        raise OptionError("model", ref, "must be a model directory or a catalog reference (yi-34b@4.0bpw)",
                          flag="MODEL")
    from exlx_autocfg.model.hub import is_hub_ref

    if is_hub_ref(text):
        if bpw is not None:
            raise OptionError("bpw", bpw, f"applies only to a catalog model; {text} is a Hub revision, whose "
                              "bits per weight are those it was quantized with")
        from exlx_autocfg.model.hub import read_hub_spec

        return read_hub_spec(text)
    path = Path(text).expanduser()
    if bpw is not None and (isinstance(bpw, bool) or not isinstance(bpw, (int, float))):
        raise OptionError("bpw", bpw, "must be a number of bits per weight")
    if path.is_dir():
        if bpw is not None:
            raise OptionError("bpw", bpw, f"applies only to a catalog model; {text} is a directory, whose "
                              "bits per weight are those it was quantized with")
        return load_directory(path)
    match = _REF.match(text.strip())
    model_id = resolve_catalog_id(match.group("id")) if match else None
    if model_id is None:
        if path.exists():
            raise ModelSpecError(f"{text}: not a model directory (give the folder holding config.json)")
        if _looks_like_path(text):
            raise ModelSpecError(f"{text}: no such directory")
        known = ", ".join(sorted(catalog()))
        raise ModelSpecError(
            f"unknown model {text!r}: not a directory and not in the catalog (known: {known})"
        )
    q = match.group("q") if match else None
    if q is not None and bpw is not None and (q.lower() == "fp16" or float(q) != bpw):
        raise OptionError("bpw", bpw, f"conflicts with the bits in the reference {text!r}; give one of them")
    if q is not None and q.lower() == "fp16":
        chosen: float | None = None
    else:
        chosen = float(q) if q is not None else (bpw if bpw is not None else DEFAULT_CATALOG_BPW)
        if q is None and bpw is not None and not 2.0 <= bpw <= 8.0:
            raise OptionError("bpw", bpw, "EXL2 bits per weight must be between 2.0 and 8.0")
        if not 2.0 <= chosen <= 8.0:
            raise ModelSpecError(f"{text}: EXL2 bits per weight must be between 2.0 and 8.0, got {chosen:g}")
    return catalog_spec(model_id, chosen)

