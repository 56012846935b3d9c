"""Train a small TopK dictionary on the embedded default and watch its curves (= notebooks/01_train.ipynb).

python examples/01_train.py      # writes runs/notebook/ (and runs/notebook/curves.html)
"""

# %% [markdown]
# # 01 · Train a sparse autoencoder
#
# Harvest MiniLM's layer-3 residual stream on the embedded corpus (Python's own documentation), train a
# small TopK dictionary on it, plot the training curves from `log.jsonl`, and score the dictionary on
# held-out text. The settings are tiny so it runs in a minute or two on a CPU (the dictionary is rough);
# `python -m sae demo` trains the full-size demo dictionary (3072 latents, 1.6M tokens).

# %%
import json
from pathlib import Path

import torch
from plotly.subplots import make_subplots

from activations import ActivationStream, load_model
from sae import SAEConfig, SparseAutoencoder, TrainConfig, train
from sae.analysis.evaluate import reconstruction_metrics
from sae.analysis.static_figure import show_figure
from sae.data import TensorBatches

OUT = Path("runs/notebook")
HOOK = "blocks.3.hook_resid_pre"
model = load_model("minilm")

# %% [markdown]
# Harvest 16,384 activation vectors once (kept on disk in `runs/acts` for notebook 02) and hold them in memory.

# %%
stream = ActivationStream(model, hook=HOOK, batch_size=4096, total_tokens=16_384, seed=0, cache_dir="runs/acts")
acts = torch.cat(list(stream))
print("activations:", tuple(acts.shape))

# %% [markdown]
# Train 512 latents with k = 16 for two passes over them (32 steps of 1024); the trainer writes `log.jsonl` and checkpoints.

# %%
cfg = SAEConfig(d_in=acts.shape[1], n_latents=512, k=16, hook_name=HOOK, model_name="minilm")
sae = SparseAutoencoder(cfg, seed=0)
tcfg = TrainConfig(tokens=2 * acts.shape[0], batch_size=1024, dead_window_tokens=16_384, log_every=2, checkpoint_every=1000)
result = train(sae, TensorBatches(acts, tcfg.batch_size, seed=0), tcfg, out_dir=OUT)
sae.fold_input_scale()
sae.save(OUT)
print(f"{result.steps} steps, {result.tokens} tokens, {result.seconds:.1f} s")

# %% [markdown]
# The curves: reconstruction error (FVU) and the number of active latents per token (L0) against tokens seen.

# %%
log = [json.loads(line) for line in (OUT / "log.jsonl").read_text().splitlines()]
fig = make_subplots(rows=1, cols=2, subplot_titles=("FVU", "L0"))
fig.add_scatter(x=[r["tokens"] for r in log], y=[r["fvu"] for r in log], name="fvu", row=1, col=1)
fig.add_scatter(x=[r["tokens"] for r in log], y=[r["l0"] for r in log], name="l0", row=1, col=2)
fig.update_layout(height=300, showlegend=False)
fig.write_html(OUT / "curves.html", include_plotlyjs=True)  # plotly.js bundled: opens offline
if "get_ipython" in globals():  # in a notebook: inline, with a static PNG for viewers without plotly
    show_figure(fig, OUT / "curves.png")

# %% [markdown]
# Held-out score: FVU and L0 on 4,096 tokens of the test split (documents never trained on).

# %%
held_out = ActivationStream(model, hook=HOOK, split="test", batch_size=4096, total_tokens=4096, seed=0)
metrics = reconstruction_metrics(SparseAutoencoder.load(OUT), held_out)
print({k: round(v, 4) for k, v in metrics.items()})
