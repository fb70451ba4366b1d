"""Import TensorFlow the way hubbeam needs it, and only when it is really needed."""
from __future__ import annotations

import os
import sys
import warnings


def tensorflow():
    """TensorFlow, with Keras 2 selected (hub.KerasLayer needs it) and C++ start-up chatter quietened.

    The only place hubbeam sets TF_USE_LEGACY_KERAS: importing hubbeam leaves os.environ alone, so every
    TensorFlow (or Keras) import in hubbeam comes after a call to this."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules and os.environ["TF_USE_LEGACY_KERAS"] != "1":
        print("hubbeam: TF_USE_LEGACY_KERAS is not 1; hub.KerasLayer needs tf-keras", file=sys.stderr)
    import tensorflow as tf

    return tf


def tensorflow_hub_and_text():
    """tensorflow_hub, plus tensorflow_text imported for its side effect: it registers the ops that
    modules with in-graph tokenisation (WordPiece, SentencePiece) need before they can be loaded."""
    tensorflow()
    # tensorflow_hub 0.16.1 imports pkg_resources (hence setuptools<81); its deprecation notice is noise here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    return hub
