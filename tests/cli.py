"""Run the `hubbeam` command as users do: a real subprocess of this interpreter."""
import os
import subprocess
import sys


def hubbeam_cli(*args, check=False, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "hubbeam", *map(str, args)], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=300, check=check, cwd=cwd)
