"""rtgen never imports torch: the daemon must start fast and small, without the training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import importlib, pkgutil, sys
import rtgen
names = [
    "rtgen.generation.engine",
    "rtgen.generation.model",
    "rtgen.arrange.voicing",
    "rtgen.offline.render",
    "rtgen.io.synth",
    "rtgen.cli",
]
names += [m.name for m in pkgutil.walk_packages(rtgen.__path__, "rtgen.")]
for name in dict.fromkeys(n for n in names if not n.endswith("__main__")):
    importlib.import_module(name)
from rtgen.cli import build_parser
build_parser()
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(len(names), "modules;", "torch loaded:" if loaded else "no torch", *loaded[:3])
sys.exit(1 if loaded else 0)
"""


def test_rtgen_never_imports_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no torch" in proc.stdout
