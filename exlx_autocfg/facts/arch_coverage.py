"""Does a torch wheel carry kernels for a GPU? One judgement, shared by `detect` and `check`.

torch.cuda.get_arch_list() lists `sm_XY` cubins (run on compute capability X.Y' with the same major and
Y' >= Y; the exact-only `sm_XYa` / `sm_XYf` variants only on X.Y itself) and `compute_XY` PTX (JIT-compiled
by the driver for any compute capability >= X.Y).
"""

from __future__ import annotations


def kernel_coverage(entries: list[str], cc: tuple[int, int]) -> str | None:
    """'sass' when a cubin runs on `cc` (same major, minor <= cc; 'a' variants only on their exact CC),
    'ptx' when only PTX can be JIT-compiled for it (compute_XY <= cc), else None."""
    sass = ptx = False
    for entry in entries:
        kind, _, arch = entry.partition("_")
        exact_only = arch.endswith(("a", "f"))
        digits = arch.rstrip("af")
        if not digits.isdigit() or len(digits) < 2:
            continue
        have = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and have[0] == cc[0] and (have == cc if exact_only else have[1] <= cc[1]):
            sass = True
        elif kind == "compute" and have <= cc and not exact_only:
            ptx = True
    return "sass" if sass else "ptx" if ptx else None
