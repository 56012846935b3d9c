"""MLP input and output hooks on every backend: the vectors are the MLP's own, checked against forward hooks
registered here on the Hugging Face modules, and `mlp(x) == y` where the module can be called."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from activations import ActivationStream, load_model
from activations.models import minilm_path

L = 1  # the layer checked
NAMES = [f"blocks.{L}.{n}" for n in ("hook_mlp_in", "mlp.hook_in", "mlp.hook_out", "hook_mlp_out")]
SMALL = dict(
    vocab_size=30522,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random GPT-2, Llama and Gemma 1-3 models saved with save_pretrained, and the embedded MiniLM (BERT).

    Their norms get random weights (Hugging Face starts them at 1), so a norm's output before and after its
    weight differ."""
    tok = AutoTokenizer.from_pretrained(minilm_path())
    out = {"bert": minilm_path()}
    gpt2 = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=30522, bos_token_id=None, eos_token_id=None)
    for name, cls, cfg in (
        ("gpt2", GPT2LMHeadModel, gpt2),
        ("llama", LlamaForCausalLM, LlamaConfig(**SMALL)),
        ("gemma", GemmaForCausalLM, GemmaConfig(head_dim=16, **SMALL)),
        ("gemma2", Gemma2ForCausalLM, Gemma2Config(head_dim=16, **SMALL)),
        ("gemma3", Gemma3ForCausalLM, Gemma3TextConfig(head_dim=16, **SMALL)),
    ):
        path = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        model = cls(cfg)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "ln" in pname or "norm" in pname:
                    p.add_(torch.randn_like(p) * 0.5)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = str(path)
    return out


def _reference(arch, folder, ids):
    """The MLP's input and output, the residual before its norm and the sublayer's output, by hooks set here."""
    hf = (AutoModel if arch == "bert" else AutoModelForCausalLM).from_pretrained(folder).eval()
    got = {}

    def pre(key):
        return lambda mod, args: got.__setitem__(key, args[0])

    def post(key):
        return lambda mod, args, out: got.__setitem__(key, out[0] if isinstance(out, tuple) else out)

    if arch == "bert":
        layer = hf.encoder.layer[L]
        layer.intermediate.register_forward_pre_hook(pre("x"))
        layer.output.dense.register_forward_hook(post("y"))
        mlp = lambda x: layer.output.dense(layer.intermediate(x))  # noqa: E731 - BERT splits its MLP in two
        sublayer_in, sublayer_out = "x", "y"
    else:
        layer = hf.transformer.h[L] if arch == "gpt2" else hf.model.layers[L]
        layer.mlp.register_forward_pre_hook(pre("x"))
        layer.mlp.register_forward_hook(post("y"))
        norm = {"gpt2": "ln_2", "llama": "post_attention_layernorm", "gemma": "post_attention_layernorm"}.get(
            arch, "pre_feedforward_layernorm"
        )
        getattr(layer, norm).register_forward_pre_hook(pre("resid"))
        mlp, sublayer_in, sublayer_out = layer.mlp, "resid", "y"
        if arch in ("gemma2", "gemma3"):
            layer.post_feedforward_layernorm.register_forward_hook(post("added"))
            sublayer_out = "added"
    with torch.no_grad():
        hf(ids)
        y_from_x = mlp(got["x"])
    return {
        NAMES[0]: got[sublayer_in],
        NAMES[1]: got["x"],
        NAMES[2]: got["y"],
        NAMES[3]: got[sublayer_out],
    }, y_from_x


@pytest.mark.parametrize("backend", ["transformer_lens", "hf"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma", "gemma2", "gemma3", "bert"])
def test_mlp_hooks_are_the_mlp_input_and_output(folders, arch, backend):
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 101
    ref, y_from_x = _reference(arch, folders[arch], ids)
    model = load_model("minilm" if arch == "bert" else folders[arch], backend=backend)
    assert model.backend == backend and set(NAMES) <= set(model.hook_names())
    out = model.run(ids, NAMES)
    for name in NAMES:
        torch.testing.assert_close(out[name], ref[name], atol=2e-5, rtol=1e-5, msg=f"{arch} {backend} {name}")
    torch.testing.assert_close(out[NAMES[2]], y_from_x, atol=2e-5, rtol=1e-5)  # y == mlp(x)


@pytest.mark.parametrize("backend", ["transformer_lens", "hf"])
def test_edits_at_mlp_hooks_change_the_forward(tiny_gpt2_path, backend):
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(1))
    hf = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path).eval()
    handle = hf.transformer.h[L].mlp.register_forward_hook(lambda mod, args, out: out * 0)
    with torch.no_grad():
        no_mlp = hf(ids).logits
    handle.remove()
    model = load_model(tiny_gpt2_path, backend=backend)
    for hook in (f"blocks.{L}.mlp.hook_out", f"blocks.{L}.hook_mlp_out"):
        torch.testing.assert_close(model.forward(ids, {hook: lambda a: a * 0}), no_mlp, atol=1e-4, rtol=1e-4)
    clean = model.forward(ids)
    with model.edit(f"blocks.{L}.mlp.hook_in", lambda a: a * 0):  # an input edit reaches the MLP only
        assert not torch.allclose(model.forward(ids), clean)
    torch.testing.assert_close(model.forward(ids), clean)


def test_unknown_mlp_hook_gets_close_matches(minilm_hf):
    with pytest.raises(ValueError, match=r"unknown hook point 'blocks\.2\.mlp\.hook_ot'.*blocks\.2\.mlp\.hook_out"):
        minilm_hf.check_hooks("blocks.2.mlp.hook_ot")


_IN, _OUT = "blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out"


@pytest.mark.parametrize(
    "hook, target, stack, message",
    [
        ("blocks.1.mlp.hook_out", "blocks.1.mlp.hook_in", False, r"target hook 'blocks\.1\.mlp\.hook_in' runs before"),
        ("blocks.2.hook_resid_pre", "blocks.1.hook_mlp_out", False, "runs before its input hook 'blocks.2.hook_resid_pre'"),
        (["blocks.1.hook_mlp_in", "blocks.0.hook_mlp_in"], ["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out"], True, "in order"),
        (
            ["blocks.0.hook_mlp_in", "blocks.2.hook_mlp_in"],
            ["blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"],
            True,
            "consecutive",
        ),
    ],
)
def test_a_target_before_its_input_is_refused(minilm_hf, hook, target, stack, message):
    with pytest.raises(ValueError, match=message):
        ActivationStream(minilm_hf, hook=hook, target=target, stack=stack, context_len=16, progress=False)
    with pytest.raises(ValueError, match="runs before"):
        minilm_hf.check_pairs([("blocks.1.hook_mlp_out", "blocks.1.hook_mlp_in")])


_HOOKED_SIDE = """
import sys, torch
from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer
from activations import ActivationStream, load_model

torch.set_grad_enabled(False)  # the blocks are called by hand below, on inference-mode tensors
tok = AutoTokenizer.from_pretrained(sys.argv[1])
kw = dict(d_model=64, d_head=16, n_heads=4, d_mlp=256, n_layers=2, n_ctx=64, d_vocab=30522, act_fn="gelu")
torch.manual_seed(0)
ids = torch.randint(1000, 2000, (2, 10))
for built in (
    HookedTransformer(HookedTransformerConfig(model_name="dec", normalization_type="LN", **kw), tokenizer=tok),
    HookedEncoder(HookedTransformerConfig(model_name="enc", attention_dir="bidirectional", **kw), tokenizer=tok),
):
    for p in built.parameters():  # HookedEncoder leaves its weights uninitialised
        p.normal_(0, 0.1)
    model = load_model(built)
    assert model.backend == "transformer_lens<4"
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in", "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out",
             "blocks.1.hook_mlp_out"]
    out = model.run(ids, names)
    x, y = out["blocks.1.mlp.hook_in"], out["blocks.1.mlp.hook_out"]
    torch.testing.assert_close(built.blocks[1].mlp(x), y)  # y == mlp(x)
    torch.testing.assert_close(out["blocks.1.hook_mlp_out"], y)
    torch.testing.assert_close(out["blocks.1.hook_mlp_in"], out["blocks.1.hook_resid_mid"])  # transformer-lens's own
    norm = built.blocks[1].ln2 if built.cfg.model_name == "dec" else built.blocks[1].ln1  # the encoder's is ln1
    torch.testing.assert_close(norm(out["blocks.1.hook_mlp_in"]), x)  # the MLP's input: its norm of hook_mlp_in
    with model.edit("blocks.1.mlp.hook_out", lambda a: a * 0):
        assert torch.equal(model.run(ids, ["blocks.1.hook_mlp_out"])["blocks.1.hook_mlp_out"], torch.zeros_like(y))
    data = [{"text": " ".join(["alpha beta gamma delta"] * 40)}] * 8
    from datasets import Dataset
    s = ActivationStream(model, hook="blocks.1.mlp.hook_in", target="blocks.1.mlp.hook_out", source=Dataset.from_list(data),
                         context_len=16, batch_size=32, total_tokens=96, progress=False)
    bx, by = next(iter(s))
    torch.testing.assert_close(built.blocks[1].mlp(bx), by, atol=1e-5, rtol=1e-5)
    try:
        ActivationStream(model, hook="blocks.1.mlp.hook_out", target="blocks.1.mlp.hook_in", source=Dataset.from_list(data),
                         context_len=16, progress=False)
        raise AssertionError("a target before its input was accepted")
    except ValueError as e:
        assert "runs before" in str(e), e
print("ok")
"""


@pytest.mark.slow
def test_transformer_lens_below_4_mlp_hooks():
    """In .venv-interop (transformer-lens 3.9): the same names on HookedTransformer and HookedEncoder."""
    env_python = os.environ.get("SAEKIT_INTEROP_PYTHON")
    repo = Path(__file__).resolve().parents[2]
    python = Path(env_python) if env_python else repo / ".venv-interop" / "bin" / "python"
    if not python.exists():
        if os.environ.get("SAEKIT_REQUIRE_INTEROP") == "1":
            pytest.fail(f"SAEKIT_REQUIRE_INTEROP is set but there is no interop python at {python}")
        pytest.skip("no .venv-interop (transformer-lens < 4): set SAEKIT_INTEROP_PYTHON")
    env = {**os.environ, "PYTHONPATH": str(repo), "TRITON_INTERPRET": "1"}
    done = subprocess.run([str(python), "-c", _HOOKED_SIDE, minilm_path()], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
