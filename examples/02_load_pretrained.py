"""Load a dictionary in a published layout with load_pretrained and compare it with ours
(= notebooks/02_load_pretrained.ipynb). Run examples/01_train.py first: it writes runs/notebook and runs/acts.

    python examples/02_load_pretrained.py
"""

# %% [markdown]
# # 02 · Load a published dictionary and compare it with ours
#
# Published dictionaries (SAELens releases and others) are folders with one sub-folder per hook, each holding
# `cfg.json` and `sae_weights.safetensors`; `load_pretrained` reads such a folder from disk or a Hub repo id.
# This notebook runs offline, so it makes its own "published" dictionary: a second one trained on the same
# activations with another seed, written in SAELens layout. It then loads it back with `load_pretrained`
# and compares it with ours from notebook 01 (run 01 first): held-out FVU and L0, and how many of our
# latents have a close match (decoder cosine) in the other dictionary.

# %%
import json
from pathlib import Path

import torch

from activations import ActivationStream, load_model
from sae import SparseAutoencoder, TrainConfig, load_pretrained, train
from sae.analysis.evaluate import reconstruction_metrics
from sae.data import TensorBatches

RUN, PUBLISHED = Path("runs/notebook"), Path("runs/published")
if not (RUN / "cfg.json").exists():
    raise FileNotFoundError(f"{RUN} holds no dictionary: run 01_train first")
ours = SparseAutoencoder.load(RUN)
HOOK = ours.cfg.hook_name

# %% [markdown]
# The "published" dictionary: same configuration, seed 1, trained on the activations notebook 01 cached.

# %%
acts = torch.cat(list(ActivationStream.from_cache("runs/acts", batch_size=4096, seed=0)))
other = SparseAutoencoder(ours.cfg, seed=1)
train(
    other,
    TensorBatches(acts, 1024, seed=1),
    TrainConfig(tokens=2 * acts.shape[0], batch_size=1024, dead_window_tokens=16_384, seed=1),
)
other.fold_input_scale()  # saved dictionaries act on raw activations
other.save(PUBLISHED / HOOK)  # one sub-folder per hook, as SAELens releases are laid out
cfg = json.loads((PUBLISHED / HOOK / "cfg.json").read_text())
print({k: cfg[k] for k in ("d_in", "d_sae", "architecture", "k", "hook_name", "model_name", "dtype")})

# %% [markdown]
# Load it back by folder and hook, as one would a downloaded release; the weights must come back unchanged.

# %%
published = load_pretrained(PUBLISHED, hook=HOOK)
assert all(torch.equal(a, b) for a, b in zip(published.state_dict().values(), other.state_dict().values()))
print(published.cfg)

# %% [markdown]
# Compare on the same held-out tokens: reconstruction (FVU), sparsity (L0), and latent matching. For each of
# our latents, the best cosine similarity between its decoder row and any decoder row of the other dictionary.

# %%
model = load_model(ours.cfg.model_name)
held_out = torch.cat(list(ActivationStream(model, hook=HOOK, split="test", batch_size=4096, total_tokens=4096, seed=0)))
for name, d in (("ours", ours), ("published", published)):
    m = reconstruction_metrics(d, held_out.split(1024))
    print(f"{name:>10}: FVU {m['fvu']:.3f}  L0 {m['l0']:.1f}")
cos = torch.nn.functional.normalize(ours.W_dec, dim=1) @ torch.nn.functional.normalize(published.W_dec, dim=1).T
best = cos.max(1).values.detach()
print(f"median best cosine {best.median():.3f}; latents matched above 0.7: {(best > 0.7).float().mean():.1%}")
