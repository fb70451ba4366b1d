"""Import TensorFlow the way hubbeam needs it, and only when it is really needed."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings


def tensorflow():
    """TensorFlow, with Keras 2 selected (hub.KerasLayer needs it) and its native start-up chatter quietened.

    The only place hubbeam sets TF_USE_LEGACY_KERAS: importing hubbeam leaves os.environ alone, so every
    TensorFlow (or Keras) import in hubbeam comes after a call to this.

    Quiet by default: TensorFlow's C++ runtime writes lines such as "failed call to cuInit: … CUDA error" on
    a machine meant to run without a GPU, before its own log level applies, and a command's output should be
    its own. Unless TF_CPP_MIN_LOG_LEVEL is set (`hubbeam --verbose` sets it to 0), the import and device
    discovery run with the process's native stderr pointed at /dev/null, and later native logs below FATAL
    are dropped. Python exceptions are unaffected.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if "tensorflow" in sys.modules:
        if os.environ["TF_USE_LEGACY_KERAS"] != "1":
            print("hubbeam: TF_USE_LEGACY_KERAS is not 1; hub.KerasLayer needs tf-keras", file=sys.stderr)
        import tensorflow as tf

        return tf
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if not quiet:
        import tensorflow as tf

        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _native_stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery (cuInit, …) logs here
    return tf


@contextlib.contextmanager
def _native_stderr_to_devnull():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tensorflow_hub_and_text():
    """tensorflow_hub, plus tensorflow_text imported for its side effect: it registers the ops that
    modules with in-graph tokenisation (WordPiece, SentencePiece) need before they can be loaded."""
    tensorflow()
    # tensorflow_hub 0.16.1 imports pkg_resources (hence setuptools<81); its deprecation notice is noise here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    return hub
