"""What a context beyond the model's trained one needs: RoPE scaling, as the tools users run compute it.

TabbyAPI sets exllamav2's NTK `scale_alpha_value` from the ratio of the requested to the trained context
(`calculate_rope_alpha`, constants in profiles/draft.toml `[rope_alpha]`); the alternative is linear
position scaling (`scale_pos_emb`, TabbyAPI `rope_scale`) by the same ratio. Either changes the model's
output, which is why exceeding the trained length is a modelling decision the planner only advises on.
"""

from __future__ import annotations

from exlx_autocfg.data import load_data


def rope_alpha(trained: int, target: int) -> float:
    """TabbyAPI's calculate_rope_alpha(trained, target): 1 up to the trained length, else its quadratic."""
    c = load_data("draft.toml")["rope_alpha"]
    ratio = target / trained
    return 1.0 if ratio <= 1.0 else c["c0"] + c["c1"] * ratio + c["c2"] * ratio**2


def rope_advice(trained: int, target: int) -> str:
    """One clause: the scaling that context would need, in the settings users set."""
    ratio = target / trained
    # TabbyAPI's quadratic dips just under 1 right above the trained length: an alpha below 1 would shrink
    # the positions, so the advice never goes below 1.
    alpha = max(1.0, rope_alpha(trained, target))
    return (f"{target} tokens need RoPE scaling: NTK alpha {alpha:.2f} (TabbyAPI "
            "rope_alpha, exllamav2 -ra / scale_alpha_value) or linear scale "
            f"{ratio:.2f} (TabbyAPI rope_scale, exllamav2 -rs / scale_pos_emb); either changes the model's "
            "output")
