"""Feature statistics, the offline browser, and inline panels for our dictionary
(= notebooks/03_explore_features.ipynb). Run examples/01_train.py first: it writes runs/notebook.

    python examples/03_explore_features.py
"""

# %% [markdown]
# # 03 · Explore features
#
# One streaming pass over held-out text gathers, per latent: how often it fires, its activation histogram,
# its top-activating contexts with every token's activation, samples from each activation quantile, the
# latents it fires with, and the vocabulary tokens nearest its decoder direction. The pass writes
# `feature_stats.safetensors` (an interrupted pass resumes); the browser is written from that file and
# opens from disk; `show` and `show_text` draw the same panels here; `steer` pushes a latent's direction
# into the model. Uses the dictionary of notebook 01.

# %%
from pathlib import Path

import torch
import torch.nn.functional as F

from activations import load_model
from sae import SparseAutoencoder
from sae.analysis import feature_stats, show, show_text, steer, write_browser

RUN = Path("runs/notebook")
if not (RUN / "cfg.json").exists():
    raise FileNotFoundError(f"{RUN} holds no dictionary: run 01_train first")
sae = SparseAutoencoder.load(RUN)
model = load_model(sae.cfg.model_name)

# %%
stats = feature_stats(sae, model, tokens=8192, top_n=8, quantiles=4, out=RUN)
alive = int((stats["count"] > 0).sum())
print(f"{stats.meta['tokens']} tokens; {alive} of {stats.n_latents} latents fired")
print("vocabulary view:", stats.meta["tokens_kind"])  # MiniLM is an encoder: nearest input embeddings

# %% [markdown]
# The browser: open the printed `index.html` in any web browser (no server, no network).

# %%
index = write_browser(stats, RUN / "browser")
print(index.resolve())

# %% [markdown]
# The same panels inline: the most frequent latent, then the one with the largest activation.

# %%
show(sae, int(stats["count"].argmax()), stats)

# %%
show(sae, int(stats["max"].argmax()), stats)

# %% [markdown]
# Your own text: each row is one of the latents most active on it, colouring the tokens it fires on.

# %%
show_text(sae, model, "A dictionary maps keys to values; a list keeps its items in order.", top=6)


# %% [markdown]
# Steering: inside `steer(model, sae, latent, alpha)` the hook's activation gets `alpha * |x| * W_dec[latent]`
# added at every token; leaving the block restores the model exactly. MiniLM's output is a sentence embedding
# (mean-pooled final hidden states), so we watch how far steering with the largest-activation latent moves a
# sentence's embedding from its clean one as alpha grows.

# %%
latent = int(stats["max"].argmax())
tokens = model.tokenizer("A dictionary maps keys to values.", return_tensors="pt")["input_ids"]


def sentence_embedding() -> torch.Tensor:
    return F.normalize(model.forward(tokens).mean(dim=1), dim=-1)


clean = sentence_embedding()
for alpha in (0.25, 0.5, 1.0, 2.0):
    with steer(model, sae, latent, alpha):
        moved = sentence_embedding()
    print(f"latent {latent}, alpha {alpha}: cosine with the clean embedding {float((moved * clean).sum()):.4f}")
assert torch.equal(sentence_embedding(), clean)  # the block left the model as it was
