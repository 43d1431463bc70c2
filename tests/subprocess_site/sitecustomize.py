"""Loaded by Python at start-up when this folder is on PYTHONPATH (tests' subprocesses only).

Made-up CIFAR-10/STL-10 files cannot match torchvision's md5 sums: the process skips that check
only, with the one bypass of :mod:`convrepro.testing.integrity`.
"""

from convrepro.testing import skip_md5_checks

skip_md5_checks()
