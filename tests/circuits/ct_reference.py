"""Run circuit-tracer 0.5.0 on jobs described in a JSON file (run by its own interpreter, in a subprocess).

Each job names a saved model folder, a transcoder folder in circuit-tracer's own layout (per-layer
`layer_{l}.safetensors`, or a CLT's `W_enc_{l}` / `W_dec_{l}` files), the hooks, the prompt's token ids and
where to write the graph (safetensors: adjacency_matrix, active_features, activation_values,
selected_features, logit_ids, logit_probabilities, input_tokens, and prune_graph's node_mask, edge_mask and
cumulative_scores at node_threshold 0.8, edge_threshold 0.98); create_graph_files writes the JSON into json_dir.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def transcoders(job):
    if job["kind"] == "clt":
        from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

        clt = load_clt(
            job["transcoders"],
            feature_input_hook=job["input_hook"],
            feature_output_hook=job["output_hook"],
            device=torch.device("cpu"),
            dtype=torch.float32,
            lazy_decoder=False,
        )
        skip = Path(job["transcoders"]) / "W_skip.safetensors"
        if skip.exists():  # load_clt reads no skip term: set it as CrossLayerTranscoder holds one
            clt.W_skip = torch.nn.Parameter(load_file(str(skip))["W_skip"])
            clt.skip_connection = True
        return clt
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    paths = {layer: f"{job['transcoders']}/layer_{layer}.safetensors" for layer in range(job["n_layers"])}
    tcs = load_transcoder_set(
        paths,
        scan="test",
        feature_input_hook=job["input_hook"],
        feature_output_hook=job["output_hook"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    if job.get("topk"):
        for tc in tcs:
            tc.activation_function = TopK(job["topk"])
    return tcs


def replacement_model(job, tcs):
    if job["backend"] == "nnsight":
        from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel

        return NNSightReplacementModel.from_pretrained_and_transcoders(
            job["model"], tcs, device=torch.device("cpu"), dtype=torch.float32
        )
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(job["model"])
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd if c.n_inner is None else c.n_inner,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn=c.activation_function,
        eps=c.layer_norm_epsilon,
        normalization_type="LN",
        positional_embedding_type="standard",
        model_name="tiny-gpt2",
        original_architecture="GPT2LMHeadModel",
        tokenizer_name=job["model"],
        device="cpu",
        dtype=torch.float32,
    )
    model = TransformerLensReplacementModel(cfg, tokenizer=AutoTokenizer.from_pretrained(job["model"]))
    missing, unexpected = model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    assert not unexpected and all(k.endswith(("mask", "IGNORE", "b_U")) for k in missing), (missing, unexpected)
    model._configure_replacement_model(tcs)
    return model


def main() -> None:
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.utils.create_graph_files import create_graph_files

    for job in json.loads(open(sys.argv[1]).read()):
        tcs = transcoders(job)
        model = replacement_model(job, tcs)
        targets = None if job.get("targets") is None else torch.tensor(job["targets"])
        graph = attribute(
            torch.tensor(job["tokens"]),
            model,
            attribution_targets=targets,
            max_n_logits=job["max_n_logits"],
            desired_logit_prob=job["desired_logit_prob"],
            batch_size=job["batch_size"],
            max_feature_nodes=job.get("max_feature_nodes"),
        )
        pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
        create_graph_files(graph, slug=job["slug"], output_path=job["json_dir"], scan="test")
        save_file(
            {
                "node_mask": pruned.node_mask.to(torch.uint8).contiguous(),
                "edge_mask": pruned.edge_mask.to(torch.uint8).contiguous(),
                "cumulative_scores": pruned.cumulative_scores.float().contiguous(),
                "adjacency_matrix": graph.adjacency_matrix.float().contiguous(),
                "active_features": graph.active_features.long().contiguous(),
                "activation_values": graph.activation_values.float().contiguous(),
                "selected_features": graph.selected_features.long().contiguous(),
                "logit_ids": graph.logit_token_ids.long().contiguous(),
                "logit_probabilities": graph.logit_probabilities.float().contiguous(),
                "input_tokens": graph.input_tokens.long().contiguous(),
            },
            job["out"],
        )


if __name__ == "__main__":
    main()
