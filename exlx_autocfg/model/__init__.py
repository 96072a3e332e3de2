"""The model stage: what exllamav2 will build from a checkpoint, read from config.json and the safetensors
headers (a directory), from the catalog (`profiles/models.toml`), never from tensor data."""
