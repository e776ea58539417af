"""The test suite; ``ROOT`` is the repository, whatever the depth of the test module."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
