from __future__ import annotations

import sys
from pathlib import Path

# tests/ is on sys.path and holds a folder named cloud/ without __init__.py: make sure "cloud" is the
# project's package, not that namespace (as in tests/cloud/alerts/conftest.py).
_REPO = str(Path(__file__).resolve().parents[3])
if sys.path[0] != _REPO:
    sys.path.insert(0, _REPO)
for _name in [n for n in sys.modules if n == "cloud" or n.startswith("cloud.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]
