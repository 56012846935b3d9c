"""Input validation shared by the ops: errors name the bad value and what was expected."""

from __future__ import annotations

import torch

from kernels.rules import RULES


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {tuple(RULES)}")


def check_pre(pre: torch.Tensor) -> None:
    if pre.dim() != 2:
        raise ValueError(f"pre-activations must be [batch, n_latents], got shape {tuple(pre.shape)}")
    if pre.shape[0] == 0:
        raise ValueError("empty batch: pre-activations have 0 rows")
    if not pre.is_floating_point():
        raise TypeError(f"pre-activations must be floating point, got {pre.dtype}")


def check_k(k: int | None, n: int, rule: str) -> int:
    if k is None:
        raise ValueError(f"rule {rule!r} needs k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1 or k > n:
        raise ValueError(f"k={k} out of range: expected 1 <= k <= n_latents={n}")
    return k


def check_code(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> None:
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(f"code values {tuple(values.shape)} and indices {tuple(indices.shape)} must both be [batch, width]")
    if values.shape[0] == 0:
        raise ValueError("empty batch: the code has 0 rows")
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be [n_latents, d], got shape {tuple(W_dec.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"code indices must be int64 or int32, got {indices.dtype}")
    if values.dtype != W_dec.dtype:
        raise TypeError(f"code values dtype {values.dtype} does not match W_dec dtype {W_dec.dtype}")
    if values.device != W_dec.device:
        raise ValueError(f"code on {values.device} but W_dec on {W_dec.device}")


def check_target(target: torch.Tensor, B: int, W_dec: torch.Tensor) -> None:
    if target.shape != (B, W_dec.shape[1]):
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not fit the code and W_dec: expected [{B}, {W_dec.shape[1]}]"
        )
    if target.device != W_dec.device:
        raise ValueError(f"target on {target.device} but W_dec on {W_dec.device}")


def check_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None, dead: torch.Tensor | None, b_pre: torch.Tensor | None = None
) -> None:
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and W_enc {tuple(W_enc.shape)} do not fit: expected [B, d] @ [d, n]")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has 0 rows")
    if x.dtype != W_enc.dtype:
        raise TypeError(f"x dtype {x.dtype} does not match W_enc dtype {W_enc.dtype}")
    if x.device != W_enc.device:
        raise ValueError(f"x on {x.device} but W_enc on {W_enc.device}")
    n = W_enc.shape[1]
    if b_enc is not None:
        if b_enc.shape != (n,):
            raise ValueError(f"b_enc of shape {tuple(b_enc.shape)} does not fit W_enc: expected [{n}]")
        if b_enc.dtype != W_enc.dtype:
            raise TypeError(f"b_enc dtype {b_enc.dtype} does not match W_enc dtype {W_enc.dtype}")
    if b_pre is not None and (b_pre.shape != (x.shape[1],) or b_pre.dtype != x.dtype):
        raise ValueError(f"b_pre must be a [{x.shape[1]}] tensor of x's dtype {x.dtype}, got {b_pre.dtype} {tuple(b_pre.shape)}")
    if dead is not None and (dead.shape != (n,) or dead.dtype != torch.bool):
        raise ValueError(f"dead must be a bool [{n}] mask, got {dead.dtype} {tuple(dead.shape)}")
