"""`exlx-autocfg profile`: placeholder until its issue lands."""

from __future__ import annotations

from exlx_autocfg.cli.app import app  # noqa: F401
