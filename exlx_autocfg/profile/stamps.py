"""The draft's and the adapters' stamps now, read from their directories (an edge: it reads files), for
the staleness comparison (`staleness.find_changes(..., companions=read_companion_stamps(cf))`)."""

from __future__ import annotations

from exlx_autocfg.errors import ExlxError
from exlx_autocfg.profile.format import ComputedFor, LoraStamp, ModelStamp


def read_companion_stamps(cf: ComputedFor) -> tuple[ModelStamp | None, list[LoraStamp]]:
    """Fresh stamps for the draft and adapters `cf` records; a fingerprint None: gone or unreadable. A
    catalog or Hub draft (no directory) keeps its recorded stamp: nothing local can have changed."""
    draft = cf.draft
    if draft is not None and draft.dir:
        from exlx_autocfg.model.load import load_model_spec

        try:
            fingerprint = load_model_spec(draft.dir).fingerprint
        except ExlxError:
            fingerprint = None
        draft = ModelStamp(name=draft.name, dir=draft.dir, fingerprint=fingerprint)
    loras = []
    for stamp in cf.loras:
        from exlx_autocfg.model.lora import read_adapter

        try:
            fingerprint = read_adapter(stamp.dir).fingerprint
        except ExlxError:
            fingerprint = None
        loras.append(LoraStamp(name=stamp.name, dir=stamp.dir, fingerprint=fingerprint))
    return draft, loras
