"""Time circuit-tracer 0.5.0's ``attribute`` on the toy model with a CLT in its layout.

Run with circuit-tracer's own interpreter (its venv pins transformers 4.x), by
``bench_graphs.py --circuit-tracer-venv``; prints one JSON line and writes the adjacency matrix.

    <venv>/bin/python benchmarks/_circuit_tracer_graph.py SPEC.json

SPEC: toy_weights (safetensors, Hugging Face GPT-2 names), arch (GPT2Config kwargs),
tokenizer_dir, clt_dir, tokens [pos], target_vec (safetensors with ``vec`` [d_model]: the target
direction read at the final LayerNorm's output), target_weight, batch_size, max_feature_nodes,
threads, reps, out (safetensors path for the adjacency).
"""

import json
import pathlib
import statistics
import sys
import time

import torch
from circuit_tracer.attribution.attribute import attribute
from circuit_tracer.attribution.targets import CustomTarget
from circuit_tracer.replacement_model.replacement_model_transformerlens import (
    TransformerLensReplacementModel,
)
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast


def load_model(spec: dict) -> TransformerLensReplacementModel:
    """The toy as a HookedTransformer (GPT-2 architecture, no LN folding) with the CLT."""
    arch = spec["arch"]
    hf = GPT2LMHeadModel(GPT2Config(**arch))
    state = {k: v.float() for k, v in load_file(spec["toy_weights"]).items()}
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    cfg = HookedTransformerConfig(
        n_layers=arch["n_layer"],
        d_model=arch["n_embd"],
        n_heads=arch["n_head"],
        d_head=arch["n_embd"] // arch["n_head"],
        d_mlp=arch.get("n_inner") or 4 * arch["n_embd"],
        n_ctx=arch["n_positions"],
        d_vocab=arch["vocab_size"],
        act_fn="gelu_new",
        normalization_type="LN",
        eps=1e-5,
        model_name="toy",
        original_architecture="GPT2LMHeadModel",
        device="cpu",
        dtype=torch.float32,
    )
    tok = GPT2TokenizerFast.from_pretrained(spec["tokenizer_dir"])
    clt = load_clt(spec["clt_dir"], device=torch.device("cpu"), dtype=torch.float32)
    model = TransformerLensReplacementModel(cfg, tokenizer=tok)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model._configure_replacement_model(clt)
    return model.eval()


def main() -> None:
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    model = load_model(spec)
    tokens = torch.tensor(spec["tokens"], dtype=torch.long)
    vec = load_file(spec["target_vec"])["vec"].float()
    targets = [CustomTarget("target", float(spec["target_weight"]), vec)]
    kw = dict(
        attribution_targets=targets,
        batch_size=spec["batch_size"],
        max_feature_nodes=spec["max_feature_nodes"],
    )
    for _ in range(spec.get("warmup", 1)):  # warm-up (lazy imports, allocator)
        graph = attribute(tokens, model, **kw)
    walls, cpus = [], []
    for _ in range(spec["reps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        graph = attribute(tokens, model, **kw)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    save_file(
        {
            "adjacency": graph.adjacency_matrix.contiguous(),
            "active_features": graph.active_features.contiguous(),
            "selected_features": graph.selected_features.contiguous(),
        },
        spec["out"],
    )
    print(json.dumps({"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}))


if __name__ == "__main__":
    main()
