"""Train a TopK dictionary on MiniLM's layer-3 residual stream from Python, then inspect a few latents.

    python examples/train_topk.py --tokens 400000 --out runs/example
"""

from __future__ import annotations

import argparse

import torch

from activations import ActivationStream, load_model
from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()

    model = load_model("minilm")
    hook = "blocks.3.hook_resid_pre"
    stream = ActivationStream(model, hook=hook, batch_size=4096, total_tokens=args.tokens, seed=0)
    sae = SparseAutoencoder(SAEConfig(d_in=stream.d_in, n_latents=3072, k=32, hook_name=hook, model_name="minilm"))
    train(sae, stream, TrainConfig(tokens=args.tokens, batch_size=4096, dead_window_tokens=200_000), out_dir=args.out)
    sae.fold_input_scale()
    sae.save(args.out)

    held_out = ActivationStream(model, hook=hook, split="test", batch_size=4096, total_tokens=32_768, seed=0)
    print(reconstruction_metrics(sae, held_out))
    x = next(iter(held_out))
    dense = sae.encode_dense(x)
    freq = (dense > 0).float().mean(0)
    print("most frequent latents:", torch.topk(freq, 5).indices.tolist())


if __name__ == "__main__":
    main()
