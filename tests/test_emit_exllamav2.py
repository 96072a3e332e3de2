"""exllamav2 script flags: parsed by exllamav2's own `model_init.add_args` parser (real 0.3.2 wheel, only
`exllamav2_ext` stood in for) they give the plan's values, and `model_init.init` turns them into an
ExLlamaV2Config with the plan's fields on a sparse model directory."""

from __future__ import annotations

import argparse
import shlex

import pytest

from exlx_autocfg.emitters import emit, exllamav2_args
from exlx_autocfg.emitters.source import EmitInput
from tests.support.emit_samples import ampere_plan, autosplit_plan, mixed_split_plan, model, turing_plan


@pytest.fixture(scope="module")
def model_init():
    from tests.support.standin import import_exllamav2

    import_exllamav2()
    from exllamav2 import model_init

    return model_init


def parser_for(model_init, script: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    model_init.add_args(parser)
    if exllamav2_args.SCRIPTS[script]:
        # examples/chat.py's own cache flags, declared as that script declares them (store_true).
        for flag, dest in (("-cq4", "cache_q4"), ("-cq6", "cache_q6"), ("-cq8", "cache_q8")):
            parser.add_argument(flag, f"--{dest}", action="store_true")
    return parser


PLANS = {
    "turing": turing_plan(),
    "ampere": ampere_plan(),
    "split": mixed_split_plan(),
    "autosplit": autosplit_plan(),
    "matmul": turing_plan(backend="matmul", cache_mode="FP16", max_input_len=512, max_attention_size=512**2),
}


@pytest.mark.parametrize("script", ["chat", "model_init"])
@pytest.mark.parametrize("name", list(PLANS))
def test_flags_parse_to_the_plans_values(model_init, name, script):
    plan = PLANS[name]
    text = emit(plan, "exllamav2-args", script=script).text
    args = parser_for(model_init, script).parse_args(shlex.split(text))
    assert args.model_dir == plan.model.path
    assert args.length == plan.settings.max_seq_len
    assert args.chunk_size == plan.settings.max_input_len
    assert (args.no_flash_attn, args.no_xformers, args.no_sdpa) == (
        plan.settings.no_flash_attn,
        plan.settings.no_xformers,
        plan.settings.no_sdpa,
    )
    if plan.settings.gpu_split:  # parsed the way model_init.post_init_load parses it
        assert [float(x) for x in args.gpu_split.split(",")] == plan.settings.gpu_split
    else:
        assert args.gpu_split == ("auto" if plan.settings.autosplit else None)
    if script == "chat":
        flags = {"Q4": args.cache_q4, "Q6": args.cache_q6, "Q8": args.cache_q8}
        chosen = {mode for mode, on in flags.items() if on}
        assert chosen == ({plan.settings.cache_mode} - {"FP16"})


def test_model_init_builds_the_planned_config(model_init, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from tests.support.model_dirs import make_model_dir

    directory = make_model_dir(tmp_path, "tiny-llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 1024)}}
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(directory / "tokenizer.json"))  # init loads one

    plan = turing_plan(
        model=model(str(directory)), max_seq_len=1536, max_input_len=512, max_attention_size=512**2
    )
    args = parser_for(model_init, "chat").parse_args(shlex.split(emit(plan, "exllamav2-args").text))
    model_, _tokenizer = model_init.init(args, quiet=True, skip_load=True)
    cfg = model_.config
    assert cfg.model_dir == str(directory)
    assert (cfg.max_seq_len, cfg.max_input_len, cfg.max_attention_size) == (1536, 512, 512**2)
    assert (cfg.no_flash_attn, cfg.no_xformers, cfg.no_sdpa) == (True, True, False)


def test_notes_say_what_flags_cannot():
    plan = turing_plan(model=model(None))
    assert "-m" not in exllamav2_args.args(EmitInput.from_plan(plan))
    notes = exllamav2_args.notes(EmitInput.from_plan(plan), "model_init")
    assert any("add -m MODEL_DIR" in n for n in notes)
    assert any("takes no cache flag" in n for n in notes)
    assert exllamav2_args.notes(EmitInput.from_plan(ampere_plan()), "chat") == []
    assert exllamav2_args.notes(EmitInput.from_plan(mixed_split_plan()), "chat") == [
        "run with CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1,0 (emit --format env) so the split "
        "meets the GPUs in the planned order"
    ]


def test_paths_with_spaces_are_quoted():
    plan = turing_plan(model=model("/srv/my models/Llama 3 'exl2'"))
    assert shlex.split(exllamav2_args.render(EmitInput.from_plan(plan)))[1] == "/srv/my models/Llama 3 'exl2'"
