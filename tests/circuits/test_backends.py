"""attribute() on the transformer-lens backends gives the graph it gives on the plain Hugging Face model of the same
weights (itself checked against circuit-tracer 0.5.0 in test_against_circuit_tracer.py): a TransformerBridge
(transformer-lens >= 4) over tiny saved Llama-, GPT-2- and BERT-style models, and, in .venv-interop
(transformer-lens 3.9), a HookedTransformer converted from a tiny GPT-2 and Llama. Graphs match when their node
tables are equal and their matrices agree within 1e-6 (bridge) or 1e-5 (HookedTransformer) of the largest entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from backend_cases import HOOKS, N_LAYERS, PROMPT, RESID_MID, D, assert_same_graph, transcoders  # noqa: E402

from activations import load_model  # noqa: E402
from activations.models import transformer_lens_major  # noqa: E402
from sae.circuits import attribute, validate  # noqa: E402
from sae.circuits.backends import traceable_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
needs_bridge = pytest.mark.skipif((transformer_lens_major() or 0) < 4, reason="TransformerBridge needs transformer-lens >= 4")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny Llama, GPT-2 and BERT (MiniLM's tokenizer) saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from activations.models import minilm_path

    root = tmp_path_factory.mktemp("backends")
    bert = root / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(
        BertConfig(
            hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=2 * D, max_position_embeddings=32
        )
    ).save_pretrained(bert)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(bert)
    return {"llama": tm.save_llama(root / "llama", N_LAYERS, D), "gpt2": tm.save_gpt2(root / "gpt2", N_LAYERS, D), "bert": bert}


@needs_bridge
@pytest.mark.parametrize(
    ("arch", "hooks", "kind"), [("llama", HOOKS, "per-layer"), ("gpt2", RESID_MID, "clt"), ("bert", HOOKS, "per-layer")]
)
def test_bridge_graph_is_the_hugging_face_graph(folders, arch, hooks, kind):
    hf = load_model(str(folders[arch]), backend="hf")
    bridge = load_model(str(folders[arch]), backend="transformer_lens")
    assert bridge.backend == "transformer_lens" and bridge.is_causal == (arch != "bert")
    tcs = transcoders(hooks, kind=kind)
    ours = attribute(bridge, tcs, PROMPT, batch_size=32, progress=False)
    theirs = attribute(hf, tcs, PROMPT, batch_size=32, progress=False)
    assert ours.n_features > 0
    assert_same_graph(ours, theirs, rel=1e-6)
    if arch == "bert":
        torch.testing.assert_close(ours.target_vectors, theirs.target_vectors)
    else:  # validate takes the bridge too, and measures what it measures on the Hugging Face model
        ours_v = validate(theirs, bridge, tcs, top=3, progress=False, store=False)
        theirs_v = validate(theirs, hf, tcs, top=3, progress=False, store=False)
        for name in ("nodes", "predicted_direct", "frozen_total", "measured"):
            torch.testing.assert_close(getattr(ours_v, name), getattr(theirs_v, name), rtol=1e-4, atol=1e-5)


@needs_bridge
def test_bridge_refusals(folders):
    bridge = load_model(str(folders["llama"]), backend="transformer_lens")
    with pytest.raises(ValueError, match="longer than the 32-token context"):
        attribute(bridge, transcoders(), " ".join(["cat"] * 32), progress=False)
    narrow = tm.our_transcoder(tm.random_transcoder(D // 2, 8, skip=False, jumprelu=False, seed=0), 1, *HOOKS)
    with pytest.raises(ValueError, match=rf"transcoder of layer 1 reads d_in={D // 2}, but 'blocks.1.mlp.hook_in' is {D} wide"):
        attribute(bridge, [transcoders()[0], narrow], "the cat", progress=False)
    view = traceable_model(bridge.model)  # the TransformerBridge itself is taken too
    assert type(view).__name__ == "HFAdapter"
    shared = {p.data_ptr() for p in bridge.model.parameters()}
    assert all(p.data_ptr() in shared for p in view.model.parameters())  # the bridge's tensors, not copies
    # a bridge that no longer computes what its Hugging Face weights do (here: a hook left on it) is not traced
    other = load_model(str(folders["gpt2"]), backend="transformer_lens")
    handle = other.model.hook_dict["blocks.0.hook_resid_post"].register_forward_hook(lambda m, a, out: 2 * out)
    try:
        with pytest.raises(ValueError, match="does not compute what its GPT2LMHeadModel weights do"):
            attribute(other, transcoders(), "the cat", progress=False)
    finally:
        handle.remove()


_HOOKED_SIDE = """
import sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import tiny_models as tm
from backend_cases import HOOKS, N_LAYERS, RESID_MID, D, PROMPT, assert_same_graph, transcoders
from transformers import AutoTokenizer
from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights
from activations import load_model
from sae.circuits import attribute, validate

root = Path(sys.argv[2])
common = dict(n_layers=N_LAYERS, d_model=D, d_head=D // 4, n_heads=4, device="cpu", dtype=torch.float32)
cases = (("gpt2", convert_gpt2_weights, HOOKS, "per-layer"), ("llama", convert_llama_weights, RESID_MID, "clt"))
for arch, convert, hooks, kind in cases:
    path = (tm.save_gpt2 if arch == "gpt2" else tm.save_llama)(root / arch, N_LAYERS, D)
    hf = load_model(str(path), backend="hf")
    c = hf.model.config
    if arch == "gpt2":
        cfg = HookedTransformerConfig(d_mlp=4 * D, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
                                      eps=c.layer_norm_epsilon, normalization_type="LN", model_name="tiny-gpt2", **common)
    else:
        cfg = HookedTransformerConfig(d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
                                      act_fn=c.hidden_act, eps=c.rms_norm_eps, normalization_type="RMS", final_rms=True,
                                      n_key_value_heads=c.num_key_value_heads, positional_embedding_type="rotary",
                                      rotary_dim=D // 4, rotary_base=c.rope_parameters["rope_theta"], gated_mlp=True,
                                      model_name="tiny-llama", **common)
    built = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(str(path)))
    missing, unexpected = built.load_state_dict(convert(hf.model, cfg), strict=False)  # no weight processing
    assert not unexpected and all(k.endswith(("mask", "IGNORE", "b_U", "rotary_sin", "rotary_cos")) for k in missing)
    hooked = load_model(built)
    assert hooked.backend == "transformer_lens<4"
    tcs = transcoders(hooks, kind=kind)
    ours = attribute(hooked, tcs, PROMPT, batch_size=32, progress=False)
    assert ours.n_features > 0
    assert_same_graph(ours, attribute(hf, tcs, PROMPT, batch_size=32, progress=False), rel=1e-5)
    for call, match in (
        (lambda: attribute(hooked, tcs, " ".join(["cat"] * 32), progress=False), "longer than the 32-token context"),
        (lambda: validate(ours, hooked, tcs, progress=False), "circuit validation runs on a plain Hugging Face model"),
    ):
        try:
            call()
            raise AssertionError(f"accepted: {match}")
        except (TypeError, ValueError) as e:
            assert match in str(e), e
enc = HookedEncoder(HookedTransformerConfig(model_name="enc", attention_dir="bidirectional", d_mlp=2 * D, d_vocab=30522,
                                            n_ctx=16, act_fn="gelu", **common), tokenizer=hf.tokenizer)
try:
    attribute(load_model(enc), transcoders(), [1, 2, 3], progress=False)
    raise AssertionError("a HookedEncoder was traced")
except ValueError as e:
    assert "takes a HookedTransformer causal LM, not the HookedEncoder 'enc'" in str(e), e
print("ok")
"""


@pytest.mark.slow
def test_hooked_transformer_graph_is_the_hugging_face_graph(tmp_path):
    """In .venv-interop (transformer-lens 3.9): a GPT-2 HookedTransformer with per-layer transcoders at the MLP, a
    Llama one with a CLT at the residual before it; refusals of a long prompt, of validate() and of a HookedEncoder."""
    env_python = os.environ.get("SAEKIT_INTEROP_PYTHON")
    python = Path(env_python) if env_python else REPO / ".venv-interop" / "bin" / "python"
    if not python.exists():
        if os.environ.get("SAEKIT_REQUIRE_INTEROP") == "1":
            pytest.fail(f"SAEKIT_REQUIRE_INTEROP is set but there is no interop python at {python}")
        pytest.skip("no .venv-interop (transformer-lens < 4): set SAEKIT_INTEROP_PYTHON")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [str(python), "-c", _HOOKED_SIDE, here, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
