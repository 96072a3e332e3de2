"""The profile stage: the profile file (format), whether it still fits the machine (staleness), and the
runtime loader that applies it to ExLlamaV2 (an edge: it imports exllamav2)."""
