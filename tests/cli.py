"""Run the `hubbeam` command as users do: a real subprocess of this interpreter."""
import os
import subprocess
import sys


def hubbeam_cli(*args, check=False, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "hubbeam", *map(str, args)], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=300, check=check, cwd=cwd)


# A child that fails loudly if anything imports TensorFlow: "refused before TensorFlow is loaded" is then
# checked by the import itself, not by looking for TensorFlow's start-up lines (TF_CPP_MIN_LOG_LEVEL=2 hides them).
_WITHOUT_TENSORFLOW = """
import importlib.abc, runpy, sys

class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("TENSORFLOW WAS IMPORTED: " + name)

sys.meta_path.insert(0, RefuseTensorFlow())
sys.argv[0] = "hubbeam"
runpy.run_module("hubbeam", run_name="__main__", alter_sys=True)
"""


def hubbeam_cli_without_tensorflow(*args, cwd=None, env=None):
    """hubbeam_cli in a child where importing TensorFlow raises ImportError."""
    return subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, *map(str, args)], capture_output=True,
                          text=True, env=env or os.environ.copy(), timeout=300, cwd=cwd)
