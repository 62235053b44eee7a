"""Settings the Go core reads from Python's environment, through the real library.

Go copies the process environment when the library is loaded, so a variable that the program sets
in ``os.environ`` later is invisible to ``os.Getenv``. Esper passes its settings through
``esper_init`` instead. The library is loaded once per process, so each case runs in a fresh
interpreter (``python -c``) where the setting is made at runtime, before and after the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test starts an interpreter that imports torch: about 5 s of CPU, more on a busy machine.
pytestmark = pytest.mark.slow

# Runs in a child whose environment holds ESPER_HOME=<decoy>: os.Getenv in Go sees the decoy.
_CHILD = r"""
import ctypes, json, os, sys
first, second, decoy = sys.argv[1:4]
os.environ["ESPER_HOME"] = first          # at runtime, before import esper: Go never sees it
import esper
from esper import _lib
from esper.urza import Urza
out = {}
with Urza() as store:
    out["first"] = store.root
os.environ["ESPER_HOME"] = second         # after the library was loaded
with Urza() as store:
    out["second"] = store.root
# The raw export without Python's refresh: the value esper_init last gave, not Go's environment.
os.environ["ESPER_HOME"] = decoy + "-unused"
h = ctypes.c_uint64()
_lib.check(_lib.lib().esper_urza_open(None, ctypes.byref(h)))
raw = Urza.__new__(Urza)
_lib.Handle.__init__(raw, h.value)
out["raw"] = raw.root
raw.close()
del os.environ["ESPER_HOME"]              # unset: the default under HOME, not the decoy
with Urza() as store:
    out["unset"] = store.root
print(json.dumps(out))
"""


def test_esper_home_set_at_runtime_reaches_the_go_core(tmp_path: Path) -> None:
    first, second, decoy, home = (tmp_path / n for n in ("first", "second", "decoy", "home"))
    env = dict(os.environ, ESPER_HOME=str(decoy), HOME=str(home), ESPER_GO_MAXPROCS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(first), str(second), str(decoy)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["first"] == str(first / "urza")
    assert out["second"] == str(second / "urza")
    assert out["raw"] == str(second / "urza")  # what init last said; Go's own environment says decoy
    assert out["unset"] == str(home / ".esper" / "urza")
    # The stores were created where Python said, none where Go's copy of the environment points.
    assert (first / "urza").is_dir() and (second / "urza").is_dir()
    assert not decoy.exists()


def test_without_the_setting_go_sees_the_load_time_environment(tmp_path: Path) -> None:
    """Negative control: init settings without esper_home (as before the fix) leave Go on the
    environment it copied at load, whatever os.environ says by then."""
    code = (
        "import json, os, sys\n"
        "from esper import _lib\n"
        "os.environ['ESPER_HOME'] = sys.argv[1]\n"
        "_lib._init_settings = lambda: json.dumps({'max_procs': 1, 'log_level': 'warn'}).encode()\n"
        "from esper.urza import Urza\n"
        "with Urza() as store:\n"
        "    print(store.root)\n"
    )
    env = dict(os.environ, ESPER_HOME=str(tmp_path / "at-load"), HOME=str(tmp_path / "home"), ESPER_GO_MAXPROCS="1")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runtime")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "at-load" / "urza")
