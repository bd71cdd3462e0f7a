import sys
from pathlib import Path

# Make `hrx_ref` importable however pytest is started.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
