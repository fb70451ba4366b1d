"""`minilm-preprocess`: the registry's entry point; the code is in minilm_bert.py, shared with the encoder."""
from hubbeam.modules.minilm_bert import build_preprocess as build

__all__ = ["build"]
