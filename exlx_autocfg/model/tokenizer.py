"""What a model directory says about its tokenizer, enough to tell whether two models share one.

Speculative decoding feeds the draft's token ids to the model (exllamav2 generator/dynamic.py
iterate_draftmodel_gen: argmax of the draft's logits, copied into the model's input), and neither
exllamav2 nor TabbyAPI compares the two tokenizers. So we compare what decides what an id means:
tokenizer.json's model vocabulary and merges and its added tokens (ExLlamaV2Tokenizer reads tokenizer.json,
else the SentencePiece tokenizer.model), and the special ids of config.json / generation_config.json.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exlx_autocfg.atomic import read_regular
from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.config import read_json_file

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024  # the largest tokenizer.json in the wild is ~20 MB


@dataclass(frozen=True)
class TokenizerInfo:
    source: str  # "tokenizer.json" | "tokenizer.model" | "config" (only config.json's ids known)
    vocab_digest: str | None = None  # sha256 of the token->id map and merges (or of tokenizer.model)
    vocab_entries: int | None = None  # entries of the model vocabulary (tokenizer.json model.vocab)
    added_tokens: tuple[tuple[int, str], ...] = ()  # (id, content), sorted by id
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        return self.vocab_digest is not None


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, bool):
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def special_ids(config: dict[str, Any], generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """bos/eos/pad from config.json (text_config too), eos widened by generation_config.json."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def pick(key: str) -> Any:
        return config.get(key, text.get(key))

    bos = _ids(pick("bos_token_id"))
    pad = _ids(pick("pad_token_id"))
    eos = list(_ids(pick("eos_token_id")))
    for extra in _ids((generation or {}).get("eos_token_id")):
        if extra not in eos:
            eos.append(extra)
    return {
        "bos_token_id": bos[0] if bos else None,
        "eos_token_ids": tuple(eos),
        "pad_token_id": pad[0] if pad else None,
    }


def from_config(config: dict[str, Any]) -> TokenizerInfo:
    """Only what config.json says (catalog models: no tokenizer files)."""
    return TokenizerInfo(source="config", **special_ids(config))


def _tokenizer_json(path: Path) -> tuple[str, int, tuple[tuple[int, str], ...]]:
    try:
        raw = read_regular(path, limit=MAX_TOKENIZER_BYTES)  # refused by type, never opened blindly
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            size = path.stat().st_size
            raise ModelSpecError(f"{path}: {size} bytes is too large for a tokenizer.json") from None
        raise ModelSpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelSpecError(f"{path}: not valid JSON") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ModelSpecError(f"{path}: no 'model' object")
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        pairs = sorted((str(k), v) for k, v in vocab.items())
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], the id is the position
        pairs = [
            (str(item[0]) if isinstance(item, list) and item else str(item), i)
            for i, item in enumerate(vocab)
        ]
    else:
        raise ModelSpecError(f"{path}: model.vocab is neither a map nor a list")
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode())
    # tokenizers >= 0.20 writes merges as [a, b] pairs, older releases as "a b": the same merges either way
    merges = [" ".join(map(str, m)) if isinstance(m, list) else str(m) for m in model.get("merges") or []]
    digest.update(json.dumps(merges, ensure_ascii=False).encode())
    added = []
    for entry in doc.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int):
            added.append((entry["id"], str(entry.get("content", ""))))
    return digest.hexdigest(), len(pairs), tuple(sorted(added))


def read_tokenizer_info(directory: str | Path) -> TokenizerInfo:
    """The tokenizer facts of a model directory: tokenizer.json if present (what ExLlamaV2Tokenizer
    prefers), else a digest of tokenizer.model; special ids from config.json and generation_config.json."""
    directory = Path(directory)
    _, config = read_json_file(directory / "config.json")
    if not isinstance(config, dict):
        raise ModelSpecError(f"{directory / 'config.json'}: not a JSON object")
    generation = None
    gen_path = directory / "generation_config.json"
    if gen_path.is_file():
        _, generation = read_json_file(gen_path)
        if not isinstance(generation, dict):
            generation = None
    ids = special_ids(config, generation)
    tok_json, tok_model = directory / "tokenizer.json", directory / "tokenizer.model"
    if tok_json.is_file():
        digest, entries, added = _tokenizer_json(tok_json)
        return TokenizerInfo("tokenizer.json", digest, entries, added, **ids)
    if tok_model.is_file():
        try:
            digest = hashlib.sha256(read_regular(tok_model)).hexdigest()
        except OSError as exc:
            raise ModelSpecError(f"{tok_model}: cannot read: {exc.strerror or exc}") from None
        return TokenizerInfo("tokenizer.model", digest, None, (), **ids)
    return TokenizerInfo("config", **ids)
