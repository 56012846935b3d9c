"""Training past one device on torch.distributed (NCCL on GPUs, gloo on CPU), launched by torchrun.

Modes: `ddp` (each rank its share of every batch, gradients averaged: `comm`), `shard` (the latents
split across ranks, distributed top-k selection: `shard`), `layers` (one dictionary per hook point,
hook points spread over ranks: `sae.cli.run`). The trainer sees one `Communicator`; the single-process one
does nothing. Submodules are imported where used: `batch` sits under the model's loss, below the rest.
"""
