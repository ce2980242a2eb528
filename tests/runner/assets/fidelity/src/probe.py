"""Report what this step's Python sees: versions of the named distributions (None: not installed), whether each
module imports, the interpreter's prefix. Optionally pip-installs first, the way a careless step script does.

    python probe.py --out DIR [--names six click ...] [--pip-install "six==1.15.0" --pip-args "--no-index ..."]
"""

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--out", required=True, help="folder for probe.json")
p.add_argument("--names", nargs="*", default=[], help="distributions/modules to look for")
p.add_argument("--pip-install", default=None, help="a requirement to `pip install` before looking")
p.add_argument("--pip-args", default="", help="extra pip arguments (e.g. --no-index --find-links DIR)")
a = p.parse_args()

if a.pip_install:
    subprocess.run(["pip", "install", "-q", *shlex.split(a.pip_args), a.pip_install], check=True)
found = {"prefix": sys.prefix, "executable": sys.executable, "cwd": os.getcwd(), "versions": {}, "imports": {}}
for name in a.names:
    try:
        found["versions"][name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found["versions"][name] = None
    try:
        importlib.import_module(name)
        found["imports"][name] = True
    except ImportError:
        found["imports"][name] = False
Path(a.out).mkdir(parents=True, exist_ok=True)
(Path(a.out) / "probe.json").write_text(json.dumps(found))
print(json.dumps(found["versions"]), flush=True)
