"""Test-wide settings: tests import their helpers (datasets, tiny_backbone) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
