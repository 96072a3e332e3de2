"""Fake NVML at the hardware boundary: the REAL nvidia-ml-py `pynvml`, talking to a fake libnvidia-ml.so.1.

This module executes the real `pynvml.py` (the next one on sys.path, from the nvidia-ml-py distribution)
in its own namespace and replaces only the `CDLL` it uses to load the shared library. The replacement
library implements the C functions we call, writing results through the same ctypes pointers and buffers
and returning the same NVML_ERROR_* codes the driver would. Everything above the C ABI (wrappers,
str/bytes conversion, `c_nvmlMemory_t`, `NVMLError` subclasses, error strings) is nvidia-ml-py's own code.

Scenario: env var EXLX_FAKE_NVML (see tests/support/nvml_scenarios.py), read when the library is loaded
(the first `nvmlInit()` of this module). Use it in a child process by putting this directory in front of
PYTHONPATH, in-process via `tests.support.fake_pynvml.use_fake_nvml(monkeypatch, scenario)`.
"""

import ctypes
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_scenarios = sys.modules.get("_exlx_nvml_scenarios")
if _scenarios is None:
    _path = os.path.join(os.path.dirname(_HERE), "nvml_scenarios.py")
    _scenarios = _load_by_path("_exlx_nvml_scenarios", _path)
    _scenarios.compiled = {}  # real pynvml code objects, so each fresh fake loads in milliseconds
    sys.modules["_exlx_nvml_scenarios"] = _scenarios


def _real_pynvml_path():
    search = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("pynvml", search)
    if spec is None or not spec.origin:
        raise ImportError("fake NVML: the real nvidia-ml-py `pynvml` module is not installed")
    return spec.origin


REAL_PYNVML_PATH = _real_pynvml_path()
if REAL_PYNVML_PATH not in _scenarios.compiled:
    with open(REAL_PYNVML_PATH, encoding="utf-8") as _fh:
        _scenarios.compiled[REAL_PYNVML_PATH] = compile(_fh.read(), REAL_PYNVML_PATH, "exec")
exec(_scenarios.compiled[REAL_PYNVML_PATH], globals())  # the real module, verbatim

FAKE_NVML = True
_MIB = 1024 * 1024
_HANDLE_BASE = 0x7E570000


class _CFunction:
    """Stands in for a ctypes function pointer (callers set .restype/.argtypes on them)."""

    def __init__(self, impl):
        self._impl = impl
        self.restype = ctypes.c_int
        self.argtypes = None

    def __call__(self, *args):
        return self._impl(*args)


def _err(name):
    return globals()["NVML_ERROR_" + name]


def _out(arg):
    """The ctypes object behind byref(x) (what the C function writes to)."""
    return getattr(arg, "_obj", arg)


def _put_string(buf, size, text):
    data = text.encode()
    if len(data) + 1 > int(getattr(size, "value", size)):
        return NVML_ERROR_INSUFFICIENT_SIZE  # noqa: F821 - defined by the real module above
    buf.value = data
    return NVML_SUCCESS  # noqa: F821


class FakeNvmlLibrary:
    """The C side of NVML for one scenario."""

    def __init__(self, scenario):
        self.scenario = scenario
        self.gpus = list(scenario.get("gpus", []))
        self.init_count = 0
        self.calls = []
        names = [n for n in dir(self) if n.startswith("nvml")]
        self._functions = {n: _CFunction(self._wrap(n, getattr(self, n))) for n in names}
        # Versioned aliases the wrappers use in this and other nvidia-ml-py releases.
        for alias, target in (
            ("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"),
            ("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"),
            ("nvmlDeviceGetHandleByPciBusId_v2", "nvmlDeviceGetHandleByPciBusId"),
            ("nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetPciInfo_v3"),
            ("nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v3"),
            ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"),
            ("nvmlInit_v2", "nvmlInit"),
        ):
            self._functions[alias] = self._functions[target]

    def __getattr__(self, name):
        functions = self.__dict__.get("_functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError("undefined symbol: " + name)  # like ctypes -> NVML_ERROR_FUNCTION_NOT_FOUND

    def _wrap(self, name, impl):
        def call(*args):
            self.calls.append(name)
            if name not in ("nvmlInitWithFlags", "nvmlInit", "nvmlErrorString") and self.init_count <= 0:
                return _err("UNINITIALIZED")
            return impl(*args)

        return call

    # -- handles -------------------------------------------------------------------------------------
    def _gpu(self, handle):
        try:
            address = ctypes.cast(handle, ctypes.c_void_p).value
        except (TypeError, ctypes.ArgumentError):
            return None, None
        if address is None:
            return None, None
        index, rest = divmod(address - _HANDLE_BASE, 0x100)
        if rest or not 0 <= index < len(self.gpus):
            return None, None
        return index, self.gpus[index]

    def _device_call(self, fname, handle):
        _, gpu = self._gpu(handle)
        if gpu is None:
            return None, _err("INVALID_ARGUMENT")
        code = (gpu.get("errors") or {}).get(fname)
        if code:
            return gpu, _err(code)
        return gpu, NVML_SUCCESS  # noqa: F821

    @staticmethod
    def _write_handle(ref, index):
        device = _out(ref)
        ctypes.c_void_p.from_address(ctypes.addressof(device)).value = _HANDLE_BASE + 0x100 * index

    # -- init ----------------------------------------------------------------------------------------
    def nvmlInitWithFlags(self, flags):
        code = self.scenario.get("init_error")
        if code:
            return _err(code)
        self.init_count += 1
        return NVML_SUCCESS  # noqa: F821

    def nvmlInit(self):
        return self.nvmlInitWithFlags(0)

    def nvmlShutdown(self):
        self.init_count -= 1
        return NVML_SUCCESS  # noqa: F821

    def nvmlErrorString(self, result):
        return NVMLError._errcode_to_string.get(int(result), "Unknown Error").encode()  # noqa: F821

    # -- system --------------------------------------------------------------------------------------
    def nvmlSystemGetDriverVersion(self, buf, size):
        return _put_string(buf, size, self.scenario.get("driver_version", "550.120"))

    def nvmlSystemGetNVMLVersion(self, buf, size):
        return _put_string(buf, size, self.scenario.get("nvml_version", "12.550.120"))

    def nvmlSystemGetCudaDriverVersion(self, ref):
        _out(ref).value = int(self.scenario.get("cuda_driver_version", 12040))
        return NVML_SUCCESS  # noqa: F821

    # -- devices -------------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self, ref):
        _out(ref).value = len(self.gpus)
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetHandleByIndex(self, index, ref):
        index = int(_out(index).value)
        if not 0 <= index < len(self.gpus):
            return _err("INVALID_ARGUMENT")
        self._write_handle(ref, index)
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetHandleByUUID(self, uuid, ref):
        wanted = _out(uuid).value.decode()
        for i, gpu in enumerate(self.gpus):
            if gpu.get("uuid") == wanted:
                self._write_handle(ref, i)
                return NVML_SUCCESS  # noqa: F821
        return _err("NOT_FOUND")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id, ref):
        wanted = _out(bus_id).value.decode().lower()
        for i, gpu in enumerate(self.gpus):
            if _bus_ids(gpu["pci_bus_id"]) & {wanted}:
                self._write_handle(ref, i)
                return NVML_SUCCESS  # noqa: F821
        return _err("NOT_FOUND")

    def nvmlDeviceGetIndex(self, handle, ref):
        index, gpu = self._gpu(handle)
        if gpu is None:
            return _err("INVALID_ARGUMENT")
        _out(ref).value = index
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetName(self, handle, buf, size):
        gpu, code = self._device_call("nvmlDeviceGetName", handle)
        return code if code else _put_string(buf, size, gpu["name"])

    def nvmlDeviceGetUUID(self, handle, buf, size):
        gpu, code = self._device_call("nvmlDeviceGetUUID", handle)
        return code if code else _put_string(buf, size, gpu["uuid"])

    def nvmlDeviceGetPciInfo_v3(self, handle, ref):
        gpu, code = self._device_call("nvmlDeviceGetPciInfo", handle)
        if code:
            return code
        info = _out(ref)
        domain, bus, rest = gpu["pci_bus_id"].split(":")
        device = rest.split(".")[0]
        info.busId = gpu["pci_bus_id"].encode()
        info.busIdLegacy = f"{int(domain, 16) & 0xFFFF:04x}:{bus}:{rest}".upper().encode()
        info.domain = int(domain, 16)
        info.bus = int(bus, 16)
        info.device = int(device, 16)
        info.pciDeviceId = int(gpu.get("pci_device_id", 0))
        info.pciSubSystemId = int(gpu.get("pci_subsystem_id", 0))
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        gpu, code = self._device_call("nvmlDeviceGetCudaComputeCapability", handle)
        if code:
            return code
        _out(major).value, _out(minor).value = gpu["cc"]
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetArchitecture(self, handle, ref):
        gpu, code = self._device_call("nvmlDeviceGetArchitecture", handle)
        if code:
            return code
        _out(ref).value = int(gpu.get("architecture", 0xFFFFFFFF))
        return NVML_SUCCESS  # noqa: F821

    def _memory(self, gpu):
        total = int(gpu["memory_total_mib"]) * _MIB
        used = int(gpu.get("memory_used_mib", 0)) * _MIB
        reserved = int(gpu.get("memory_reserved_mib", 0)) * _MIB
        return total, used, reserved

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        gpu, code = self._device_call("nvmlDeviceGetMemoryInfo", handle)
        if code:
            return code
        total, used, _ = self._memory(gpu)
        mem = _out(ref)
        mem.total, mem.used, mem.free = total, used, max(total - used, 0)
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetMemoryInfo_v2(self, handle, ref):
        gpu, code = self._device_call("nvmlDeviceGetMemoryInfo", handle)
        if code:
            return code
        mem = _out(ref)
        if mem.version != nvmlMemory_v2:  # noqa: F821
            return _err("ARGUMENT_VERSION_MISMATCH")
        total, used, reserved = self._memory(gpu)
        mem.total, mem.reserved, mem.used, mem.free = total, reserved, used - reserved, max(total - used, 0)
        return NVML_SUCCESS  # noqa: F821

    def nvmlDeviceGetMigMode(self, handle, current, pending):
        gpu, code = self._device_call("nvmlDeviceGetMigMode", handle)
        if code:
            return code
        if gpu.get("mig") is None:
            return _err("NOT_SUPPORTED")  # what GeForce and pre-Ampere boards answer
        _out(current).value, _out(pending).value = gpu["mig"]
        return NVML_SUCCESS  # noqa: F821


def _bus_ids(bus_id):
    """The spellings NVML accepts for a bus id (domain with 8 or 4 digits, any case)."""
    bus_id = bus_id.lower()
    domain, rest = bus_id.split(":", 1)
    return {bus_id, f"{int(domain, 16) & 0xFFFF:04x}:{rest}", f"{int(domain, 16):08x}:{rest}"}


def CDLL(name, *args, **kwargs):  # replaces ctypes.CDLL inside the real module
    scenario = _scenarios.resolve(os.environ.get(_scenarios.ENV_VAR))
    if not scenario.get("library", True):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    return FakeNvmlLibrary(scenario)
