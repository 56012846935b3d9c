"""Configuration dataclasses: one per concern. The CLI is generated from their fields."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from activations.hooks import HookPoints
from activations.source import TextSource
from sae.families import DEFAULT_AUX_COEF, DEFAULT_K_AUX, get_family
from sae.sparsity_target import check_coefficient

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
NORMALIZATIONS = ("dataset_scalar", "none", "layer_norm", "unit_norm", "layer_norm_std", "constant_norm_rescale")
DEFAULT_K = 32  # k of the top-k families when not given
DEFAULT_EXPANSION = 8  # n_latents = 8 * d_in when neither n_latents nor expansion is given
MIN_BATCH_SIZE = 8  # rows per training batch: the FVU's denominator is the batch's variance
# the default lr's budget rule (TrainConfig.learning_rate): from the study in docs/results/recipe.md
LR_SHORT_RUN = 4e-3  # the best swept rate at every 400-step point, 4x to 64x, three layers
LR_FULL_RATE_STEPS = 3200  # LR_SHORT_RUN up to this many steps, then falling as 1 / sqrt(steps)
# a centred transcoder's default lr is this many times the rule's: its encoder and decoder start unrelated (an SAE's
# start tied); on MiniLM's block-3 MLP at 98 steps 4x trained the lowest held-out FVU of 1x, 2x, 4x and 8x (the
# skip transcoder: of 1x and 4x); other budgets not measured (docs/results/transcoders.md)
TRANSCODER_LR_FACTOR = 4
# the default dead-latent window (TrainConfig.dead_window): this many firings of an average latent (k / n of the
# tokens each); from the window study in docs/results/recipe.md
DEAD_WINDOW_FIRINGS = 32


@dataclass
class SAEConfig:
    """What a dictionary is: saved beside its weights in cfg.json."""

    d_in: int
    """Width of the activations the dictionary reads."""
    n_latents: int | None = None
    """Number of latents (dictionary size; a CLT's per layer); or give `expansion`."""
    expansion: int | None = None
    """n_latents = expansion * d_in when n_latents is not given (8 when neither is given)."""
    family: str = "topk"
    """SAE family (see sae.families.FAMILIES)."""
    k: int | None = None
    """Active latents per token for the top-k families (32 when not given; a CLT's per layer; families that choose
    k themselves refuse an explicit k)."""
    dtype: str = "float32"
    """Parameter dtype: float32, float64, bfloat16 or float16."""
    normalize: str = "dataset_scalar"
    """Input normalisation: dataset_scalar (one scale with E|x|^2 = d_in, folded on save), none,
    layer_norm (per token), unit_norm (per token centring and unit norm); for loaded dictionaries also
    layer_norm_std (OpenAI's and SAELens's LN: divide by unbiased std + 1e-5) and constant_norm_rescale
    (per token x * sqrt(d_in) / |x|, SAELens)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Family-specific options (validated by the family)."""
    hook_name: str = ""
    """Hook point the dictionary was trained on."""
    model_name: str = ""
    """Model the dictionary was trained on."""
    d_out: int | None = None
    """Width of the target a transcoder predicts; None: an SAE, which reconstructs its input. Set even when
    d_out == d_in (an MLP of a residual model) to make a transcoder."""
    target_hook: str = ""
    """Hook point a transcoder predicts ("" for an SAE); for a CLT a template with one {} for the layer."""
    skip: bool = False
    """A transcoder's linear skip term x W_skip^T, W_skip [d_out, d_in] (skip transcoders)."""
    layers: int = 1
    """Above 1: a cross-layer transcoder (CLT) over this many consecutive layers from `first_layer`, one
    encoder per layer, decoders from each layer to it and every later one; hook_name and target_hook are then
    templates with one {} for the layer number. n_latents is per layer."""
    first_layer: int = 0
    """The first layer of a CLT (the number its hook templates are formatted with for its layer 0)."""

    def __post_init__(self) -> None:
        _check_types(self)
        if self.d_in < 1:
            raise ValueError(f"d_in must be a positive int, got {self.d_in!r}")
        if self.n_latents is None:
            if self.expansion is None:
                self.expansion = DEFAULT_EXPANSION
            if self.expansion < 1:
                raise ValueError(f"expansion must be >= 1, got {self.expansion}")
            self.n_latents = self.expansion * self.d_in
        if self.n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {self.n_latents}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {tuple(DTYPES)}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {self.normalize!r}; expected one of {NORMALIZATIONS}")
        _check_transcoder(self)
        family = get_family(self.family)
        if self.k is None and family.uses_k:
            self.k = DEFAULT_K  # the default; an explicit k is what families without one refuse
        try:
            family.validate(self)
        except (TypeError, KeyError, AttributeError, OverflowError) as e:  # an option of the wrong type
            raise ValueError(f"family {self.family!r}: options {self.options!r} do not fit it ({e})") from e
        if not family.uses_k and self.k is not None:
            how = f"its {family.penalty.upper()} penalty (--sparsity-coef, --target-l0)" if family.penalty else "its rule"
            raise ValueError(f"family {self.family!r} does not use k (its L0 is set by {how}); got k={self.k}, expected none")
        _check_family_as_transcoder(self, family)

    @property
    def latents(self) -> int:
        """n_latents as an int: __post_init__ resolves it (from `expansion` when not given), so it is never None.
        Per layer for a CLT (see `n_features`)."""
        assert self.n_latents is not None
        return self.n_latents

    @property
    def n_features(self) -> int:
        """Features of the whole dictionary: layers * n_latents (a CLT's feature l * n + f is latent f of layer l)."""
        return self.layers * self.latents

    @property
    def is_transcoder(self) -> bool:
        """Whether the dictionary predicts a target (d_out given) rather than reconstructing its input."""
        return self.d_out is not None

    @property
    def is_clt(self) -> bool:
        """Whether the dictionary is a cross-layer transcoder (layers > 1)."""
        return self.layers > 1

    @property
    def out_width(self) -> int:
        """Width of what the dictionary predicts: d_out for a transcoder, d_in for an SAE."""
        return self.d_in if self.d_out is None else self.d_out

    def input_hooks(self) -> list[str]:
        """The hook names the dictionary reads: one (a CLT: one per layer, from the hook_name template)."""
        if not self.is_clt:
            return [self.hook_name]
        return [self.hook_name.format(self.first_layer + i) for i in range(self.layers)]

    def target_hooks(self) -> list[str]:
        """The hook names the dictionary predicts: its input's for an SAE, target_hook for a transcoder (a CLT:
        one per layer, from the template)."""
        if not self.is_transcoder:
            return [self.hook_name]
        if not self.is_clt:
            return [self.target_hook]
        return [self.target_hook.format(self.first_layer + i) for i in range(self.layers)]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Build from a dict (cfg.json); unknown keys (such as the AuxK settings older files hold, now
        TrainConfig's) are ignored, a missing d_in is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"a dictionary config must be a JSON object, got {type(d).__name__}")
        if "d_in" not in d:
            raise ValueError(f"a dictionary config needs d_in; got keys {sorted(map(str, d))}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_types(cfg: SAEConfig) -> None:
    """Refuse a field of the wrong type (as from a hand-edited cfg.json) with its name, before any arithmetic.

    Integers of other types (numpy, torch) become Python ints, so the config stays JSON-serialisable."""
    kinds = {
        "d_in": (numbers.Integral,),
        "n_latents": (numbers.Integral, None),
        "expansion": (numbers.Integral, None),
        "family": (str,),
        "k": (numbers.Integral, None),
        "dtype": (str,),
        "normalize": (str,),
        "options": (dict,),
        "hook_name": (str,),
        "model_name": (str,),
        "d_out": (numbers.Integral, None),
        "target_hook": (str,),
        "skip": (bool,),
        "layers": (numbers.Integral,),
        "first_layer": (numbers.Integral,),
    }
    _check_kinds(cfg, kinds)
    bad_keys = [k for k in cfg.options if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"SAEConfig.options keys must be strings, got {bad_keys!r}")


# normalisations a transcoder may use: one dataset-wide scale per side (per-token statistics of the target would
# be needed to undo a per-token normalisation of the prediction, and a transcoder never sees its target at use)
TRANSCODER_NORMALIZATIONS = ("dataset_scalar", "none")


def _check_transcoder(cfg: SAEConfig) -> None:
    """Refuse transcoder and CLT settings that do not fit together, naming the value."""
    if cfg.d_out is not None and cfg.d_out < 1:
        raise ValueError(f"d_out must be a positive int (or None for an SAE), got {cfg.d_out}")
    if cfg.layers < 1:
        raise ValueError(f"layers must be >= 1, got {cfg.layers}")
    if cfg.first_layer < 0:
        raise ValueError(f"first_layer must be >= 0, got {cfg.first_layer}")
    if cfg.d_out is None:
        for name, value in (("skip", cfg.skip), ("target_hook", cfg.target_hook), ("layers", cfg.layers > 1)):
            if value:
                raise ValueError(
                    f"{name}={getattr(cfg, name)!r} is for a transcoder, which predicts a target: give d_out "
                    "(the target's width); an SAE reconstructs its input"
                )
        return
    if cfg.normalize not in TRANSCODER_NORMALIZATIONS:
        raise ValueError(
            f"normalize={cfg.normalize!r} is per token: undoing it on the prediction needs the target's own "
            f"statistics, which a transcoder never sees; expected one of {TRANSCODER_NORMALIZATIONS}"
        )
    if cfg.is_clt:
        for name in ("hook_name", "target_hook"):
            template = getattr(cfg, name)
            if template and (template.count("{}") != 1 or "{" in template.replace("{}", "") or "}" in template.replace("{}", "")):
                raise ValueError(
                    f"{name}={template!r}: a CLT's hook names are templates with exactly one {{}} for the layer "
                    "number, e.g. 'blocks.{}.hook_mlp_in'"
                )
    if cfg.options.get("apply_b_dec_to_input") is True:
        raise ValueError(
            "apply_b_dec_to_input=True subtracts the decoder bias from the input, but a transcoder's decoder bias "
            "lives in the target's space; leave the option out"
        )


def _check_family_as_transcoder(cfg: SAEConfig, family: Any) -> None:
    """Refuse a family that cannot be a transcoder (or a skip transcoder, or a CLT), with its reason."""
    if cfg.d_out is None:
        return
    if family.transcoder_unsupported:
        raise ValueError(f"family {cfg.family!r} cannot be a transcoder: {family.transcoder_unsupported}")
    if cfg.skip and not family.recon_loss_takes_base():
        raise ValueError(
            f"family {cfg.family!r} cannot be a skip transcoder: its recon_loss takes no base= (the part of the "
            "prediction no latent contributes: b_dec plus the skip term), which its partial reconstructions need"
        )
    if cfg.is_clt and family.has_own_loss():
        raise ValueError(
            f"family {cfg.family!r} cannot be a CLT: its own loss terms are written for one dictionary "
            "reconstructing one target, and a CLT's loss is the sum over layers of each layer's FVU; "
            "use a selection-only family (topk, batchtopk, abstopk, jumprelu, ...)"
        )


def _check_kinds(cfg: Any, kinds: dict[str, tuple]) -> None:
    """Refuse a field whose value is not of its allowed types (None where allowed), naming the field; ints and
    reals of other types (numpy, torch) become Python ints and floats."""
    for name, allowed in kinds.items():
        v = getattr(cfg, name)
        if v is None and None in allowed:
            continue
        if (isinstance(v, bool) and allowed[0] is not bool) or not isinstance(v, allowed[0]):
            names = " or ".join(
                "None" if t is None else {"Integral": "int", "Real": "float"}.get(t.__name__, t.__name__) for t in allowed
            )
            raise ValueError(f"{type(cfg).__name__}.{name} must be {names}, got {v!r}")
        if allowed[0] is numbers.Integral:
            setattr(cfg, name, int(v))
        elif allowed[0] is numbers.Real:
            setattr(cfg, name, float(v))


# training settings that older dictionary configs (in cfg.json files and checkpoints) still hold
TRAINING_KEYS_IN_OLD_SAE_CONFIGS = ("k_aux", "aux_coef")


def move_training_keys(sae_cfg: dict[str, Any], train_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's (dictionary, training) config dicts with the AuxK settings an older dictionary config holds
    moved into the training config (where the training config already has them, it wins)."""
    sae_cfg, train_cfg = dict(sae_cfg), dict(train_cfg)
    for key in TRAINING_KEYS_IN_OLD_SAE_CONFIGS:
        if key in sae_cfg:
            train_cfg.setdefault(key, sae_cfg.pop(key))
    return sae_cfg, train_cfg


SKIP_INITS = ("zero", "lstsq")


def with_defaults(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """`d` (a saved config dict) with the fields it lacks at `cls`'s defaults: a field added after the file was
    written reads as its default, so an older checkpoint compares equal to a run that leaves the field alone."""
    out = dict(d)
    for f in dataclasses.fields(cls):
        if f.name in out:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@dataclass
class TrainConfig:
    """How a dictionary is trained."""

    tokens: int = 2_000_000
    """Training tokens (steps = tokens // batch_size)."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float | None = None
    """Adam learning rate; default from the dictionary's size and the run's length, 4x for a centred transcoder
    (`learning_rate`)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 6.25e-10
    """Adam epsilon (Gao et al.)."""
    warmup_frac: float = 0.02
    """Fraction of steps of linear lr warm-up."""
    decay_frac: float = 0.2
    """Fraction of steps, at the end, of linear lr decay to zero."""
    dead_window_tokens: int | None = None
    """A latent that has not fired for this many tokens is dead (AuxK trains it); default: the tokens in which an
    average latent fires 32 times (32 n / k), at least one batch, at most a quarter of the run (`dead_window`)."""
    k_aux: int = DEFAULT_K_AUX
    """AuxK: dead latents each token may use to reconstruct the residual."""
    aux_coef: float = DEFAULT_AUX_COEF
    """AuxK loss coefficient."""
    init_tokens: int = 32_768
    """Tokens used to initialise b_dec (geometric median) and the input scale (a transcoder: of the target, and
    both scales)."""
    skip_init: str = "zero"
    """A skip transcoder's W_skip at the start: zero (sparsify, SAELens) or lstsq (the least-squares fit of the
    target on the input over the init_tokens, b_dec then the geometric median of what it leaves)."""
    sparsity_coef: float | None = None
    """The sparsity penalty's coefficient of a penalty family (jumprelu: L0, gated and standard: L1); default: the
    family's (standard: its l1_coef option)."""
    sparsity_warmup_frac: float = 0.05
    """Fraction of steps over which that coefficient rises linearly from 0 (penalty families only)."""
    target_l0: float | None = None
    """Adapt the sparsity coefficient during training so the dictionary lands at this mean L0 (penalty families
    only; sae.sparsity_target states the controller)."""
    seed: int = 0
    """Random seed for initialisation and sampling."""
    checkpoint_every: int = 100
    """Steps between checkpoints (written atomically)."""
    log_every: int = 10
    """Steps between log.jsonl lines."""
    wandb_project: str = ""
    """Log to this wandb project when wandb is installed."""
    device: str = "cpu"
    """Device to train on."""

    def __post_init__(self) -> None:
        _check_kinds(self, {"k_aux": (numbers.Integral,), "aux_coef": (numbers.Real,), "skip_init": (str,)})
        if self.skip_init not in SKIP_INITS:
            raise ValueError(f"skip_init must be one of {SKIP_INITS}, got {self.skip_init!r}")
        if self.k_aux < 0:
            raise ValueError(f"k_aux must be >= 0, got {self.k_aux}")
        if not math.isfinite(self.aux_coef) or self.aux_coef < 0:
            raise ValueError(f"aux_coef must be a finite float >= 0, got {self.aux_coef!r}")
        for name in ("tokens", "batch_size", "checkpoint_every", "log_every", "init_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < MIN_BATCH_SIZE:
            raise ValueError(
                f"batch_size={self.batch_size} is below the minimum of {MIN_BATCH_SIZE}: the loss divides by the batch's "
                "variance, which a batch of a few rows hardly has"
            )
        if self.lr is not None and (not isinstance(self.lr, numbers.Real) or not math.isfinite(self.lr) or self.lr <= 0):
            raise ValueError(f"lr must be a finite number > 0 (or None for the default rule), got {self.lr!r}")
        if not all(0 <= b < 1 for b in self.betas) or not self.eps > 0:
            raise ValueError(f"Adam's betas must lie in [0, 1) and eps be > 0, got betas={self.betas}, eps={self.eps}")
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch of {self.batch_size}")
        if self.dead_window_tokens is not None and self.dead_window_tokens < 1:
            raise ValueError(f"dead_window_tokens must be >= 1 (or None for the default), got {self.dead_window_tokens}")
        check_coefficient("sparsity_coef", self.sparsity_coef)
        if not 0 <= self.sparsity_warmup_frac < 1:
            raise ValueError(f"sparsity_warmup_frac must lie in [0, 1), got {self.sparsity_warmup_frac!r}")
        if self.target_l0 is not None and (
            isinstance(self.target_l0, bool)
            or not isinstance(self.target_l0, (int, float))
            or not (math.isfinite(self.target_l0) and self.target_l0 > 0)
        ):
            raise ValueError(f"target_l0={self.target_l0!r}; expected a number > 0 (and at most n_latents)")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.decay_frac <= 1:
            raise ValueError(f"warmup_frac and decay_frac must lie in [0, 1), got {self.warmup_frac}, {self.decay_frac}")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def dead_window(self, n_latents: int, k: int | None = None) -> int:
        """Tokens without firing after which a latent is dead: given, or the tokens in which a latent of average
        frequency (k / n) fires DEAD_WINDOW_FIRINGS times, so a latent of average frequency is almost never taken
        for dead (e^-32), while a silent one gets AuxK's gradient within a few batches; at least one batch, at most
        a quarter of the run. k: the dictionary's active latents per token (DEFAULT_K where it has none)."""
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        expected = DEAD_WINDOW_FIRINGS * n_latents // max(1, k or DEFAULT_K)
        return max(self.batch_size, min(expected, self.tokens // 4))

    def learning_rate(self, n_latents: int, transcoder: bool = False) -> float:
        """The given lr, or max(Gao et al.'s 2e-4 / sqrt(n / 2^14), LR_SHORT_RUN * min(1, sqrt(LR_FULL_RATE_STEPS /
        steps))). Gao's rate was fitted on runs of billions of tokens; on runs of hundreds to tens of thousands of
        steps it under-trains, and the best rate measured there did not depend on n (docs/results/recipe.md).
        `transcoder`: a centred transcoder's (`SparseAutoencoder.centres_input`), TRANSCODER_LR_FACTOR times that."""
        if self.lr is not None:
            return self.lr
        gao = 2e-4 / math.sqrt(n_latents / 2**14)
        rate = max(gao, LR_SHORT_RUN * min(1.0, math.sqrt(LR_FULL_RATE_STEPS / self.steps)))
        return rate * TRANSCODER_LR_FACTOR if transcoder else rate


@dataclass
class RunConfig:
    """Where activations come from and where a run's files go (the CLI's harvesting options).

    A run trains on the text's 'train' split and scores metrics.json on its 'test' split."""

    model: str = "minilm"
    """Model: 'minilm' (the embedded default), a hub name or a local path."""
    hooks: HookPoints = field(default_factory=HookPoints)
    """The hook points (with their targets, for transcoders): one dictionary each, or one CLT over all layers."""
    text: TextSource = field(default_factory=TextSource)
    """The text the activations are harvested from."""
    cache_dir: str = ""
    """Harvest into this folder first (safetensors shards + manifest, one subfolder per split and size) and read
    batches back from it; a later run with the same model, hook and data reuses it. Empty: no disk cache."""
    harvest_tokens: int = 0
    """Hold this many training activations in memory and reuse them epoch after epoch; 0 streams all tokens."""
    eval_tokens: int | None = None
    """Held-out tokens (the dataset's test split) for metrics.json; default: all the split holds, up to 65,536 (a
    number given and not met is warned about)."""
    pca_tokens: int = 262_144
    """Training tokens the PCA baseline is fitted on when activations are streamed."""
    out: str = "runs/sae"
    """Output folder: cfg.json, sae_weights.safetensors, metrics.json, log.jsonl."""
    resume: bool = False
    """Continue from out/checkpoints/latest.pt."""
    overwrite: bool = False
    """Replace the run already in out (without it, and without --resume, a non-empty out is refused)."""

    def __post_init__(self) -> None:
        for name, least in (("eval_tokens", 1), ("pca_tokens", 1), ("harvest_tokens", 0)):
            v = getattr(self, name)
            if v is None and name == "eval_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name} must be an int >= {least}, got {v!r}")
        if not isinstance(self.hooks, HookPoints) or not isinstance(self.text, TextSource):
            raise ValueError(f"hooks must be HookPoints and text a TextSource, got {self.hooks!r} and {self.text!r}")
        if not self.out:
            raise ValueError("out must name a folder for the run's files")
