"""docs/compat-matrix.md is generated from the rules data and must be up to date."""

from __future__ import annotations

from tools.docs_matrix import DOC, render


def test_committed_matrix_is_up_to_date():
    assert DOC.exists(), "run: python -m tools.docs_matrix"
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/compat-matrix.md is stale: python -m tools.docs_matrix"
    )


def test_matrix_reflects_the_rules():
    text = render()
    assert "**wrong** on exllamav2 >=0.2.9,<=0.3.2" in text
    assert "`xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask`" in text
    assert "| NVIDIA GeForce RTX 2080 Ti (22 GB mod) | 7.5 | 22,528 | `matmul` | `xformers` |" in text


def test_committed_codes_page_is_up_to_date():
    from tools.docs_codes import DOC as CODES_DOC
    from tools.docs_codes import render as render_codes

    assert CODES_DOC.read_text(encoding="utf-8") == render_codes(), (
        "docs/codes.md is stale: python -m tools.docs_codes"
    )
