"""Benchmark harness of whereabouts (Python): exec cost, storms, scale, memory.

Run it with ``ci/bench`` (or ``python -m bench``); see ``bench/README.md``. Nothing here
is imported by the plugin, and nothing here asserts a performance figure: the harness
measures and reports, and fails only when correctness breaks (duplicates, leaks).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
