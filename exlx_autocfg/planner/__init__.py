"""The plan stage, a pure core: facts + model spec + request -> Plan (backend, cache, context, chunk,
split), with the memory arithmetic and the reason for every decision. Nothing here probes, writes files or
imports exllamav2, typer, rich or ruamel (tests/test_layers.py keeps it so)."""
