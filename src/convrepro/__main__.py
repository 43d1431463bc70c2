"""``python -m convrepro fit --config ...``: the CLI of ``main.py``, usable from any folder."""

from convrepro.cli import main

main()
