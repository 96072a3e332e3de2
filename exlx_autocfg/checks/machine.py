"""A read-only view of the facts that the checks need, with the small derivations they share.

Pure: built from a `Facts` document, never touches the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from exlx_autocfg.checks.rules import cc_tuple
from exlx_autocfg.facts.types import Facts, LibraryFacts


@dataclass(frozen=True)
class GpuView:
    label: str  # "GPU 0 Tesla P40 (CC 6.1)"
    name: str
    vendor: str
    cc: tuple[int, int] | None

    @property
    def cc_text(self) -> str:
        return f"{self.cc[0]}.{self.cc[1]}" if self.cc else "?"


@dataclass(frozen=True)
class Machine:
    facts: Facts

    # --- GPUs -------------------------------------------------------------------------------------------
    @cached_property
    def gpus(self) -> list[GpuView]:
        """GPUs from NVML/ROCm (or the what-if table); torch's device list when no reader found any."""
        views = [
            GpuView(_label(g.index, g.name, g.compute_capability), g.name, g.vendor, g.cc)
            for g in self.facts.gpu.gpus
        ]
        if views:
            return views
        for dev in self.torch.details.get("devices") or []:
            cc = dev.get("capability")
            vendor = "amd" if self.hip else "nvidia"
            views.append(
                GpuView(
                    _label(dev.get("index", len(views)), dev.get("name", "?"), cc),
                    dev.get("name", "?"),
                    vendor,
                    cc_tuple(cc),
                )
            )
        return views

    @property
    def nvidia(self) -> list[GpuView]:
        return [g for g in self.gpus if g.vendor == "nvidia"]

    @property
    def amd(self) -> list[GpuView]:
        return [g for g in self.gpus if g.vendor == "amd"]

    def below(self, cc: tuple[int, int]) -> list[GpuView]:
        """NVIDIA GPUs whose compute capability is below `cc`."""
        return [g for g in self.nvidia if g.cc is not None and g.cc < cc]

    @property
    def gpu_names(self) -> str:
        return ", ".join(g.label for g in self.gpus) or "no GPU"

    # --- libraries --------------------------------------------------------------------------------------
    def lib(self, name: str) -> LibraryFacts:
        return self.facts.lib(name)

    @property
    def torch(self) -> LibraryFacts:
        return self.facts.lib("torch")

    @property
    def torch_version(self) -> str | None:
        return self.torch.version if self.torch.installed else None

    @property
    def cuda(self) -> str | None:
        """The CUDA version torch was built with ("12.8"), None for CPU and ROCm builds."""
        return self.torch.details.get("cuda_version") or self.torch.build.get("cuda")

    @property
    def hip(self) -> str | None:
        return self.torch.details.get("hip_version") or self.torch.build.get("rocm")

    @property
    def torch_is_cpu(self) -> bool:
        return self.torch.installed and not self.cuda and not self.hip

    @property
    def python(self) -> str:
        return self.facts.python.version

    @property
    def windows(self) -> bool:
        return self.facts.python.platform.startswith("win")

    @property
    def cxx11_abi(self) -> bool | None:
        return self.torch.details.get("cxx11_abi")

    def env_set(self, name: str) -> bool:
        """exllamav2's switches are presence tests: any value, even '0', counts (compat-facts §0 item 2)."""
        return name in self.facts.env


def _label(index: int, name: str, cc: str | None) -> str:
    return f"GPU {index} {name}" + (f" (CC {cc})" if cc else "")
