"""`minilm-encoder`: the registry's entry point; the code is in minilm_bert.py, shared with the preprocessor."""
from hubbeam.modules.minilm_bert import build_encoder as build

__all__ = ["build"]
