"""Shared test support: real components, with only the hardware boundary (NVML, CUDA, the compiled
exllamav2 extension) stood in for."""
