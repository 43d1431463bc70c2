"""Test-wide settings: tests import ``tiny_backbone`` (a tiny network for CLI configs) from here.

Made-up data sets and the md5 bypass come from :mod:`convrepro.testing`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
