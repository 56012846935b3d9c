"""`python -m sae pretrained list|download`: the release registry on the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from sae.cli.args import add_dataclass_args, dataclass_kwargs


@dataclass
class ListConfig:
    """Options of `python -m sae pretrained list`."""

    model: str = ""
    """Only releases for this model (substring, case-insensitive)."""
    all: bool = False
    """Also SAELens's registry (when sae_lens is installed)."""
    kind: str = ""
    """Only releases of this kind: sae, transcoder or clt."""


@dataclass
class DownloadConfig:
    """Options of `python -m sae pretrained download`."""

    id: str = field(metadata={"positional": True})
    """A release id (see `list`) or a Hub repo id."""
    hook: str = ""
    """Hook point (or the repo's folder name) to fetch."""
    sae_id: str = ""
    """The release's sae_id to fetch."""


def add_pretrained_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pretrained list` and `pretrained download` under the main parser."""
    p = sub.add_parser("pretrained", help="list or download published dictionaries")
    cmds = p.add_subparsers(dest="pretrained_command", required=True)
    add_dataclass_args(cmds.add_parser("list", help="print the release registry"), ListConfig)
    add_dataclass_args(
        cmds.add_parser("download", help="fetch one dictionary (or a whole repo) into the Hugging Face cache"), DownloadConfig
    )


def run_pretrained(args: argparse.Namespace) -> int:
    """Run a `pretrained` subcommand; errors are printed in one line with exit status 2."""
    from sae.pretrained import fetch, list_releases, load_path

    try:
        if args.pretrained_command == "list":
            ls = ListConfig(**dataclass_kwargs(args, ListConfig))
            releases = [r for r in list_releases(ls.model or None, include_saelens=ls.all) if ls.kind in ("", r.kind)]
            if not releases:
                print(f"no release for model {ls.model!r}{f' of kind {ls.kind!r}' if ls.kind else ''}", file=sys.stderr)
                return 1
            print(f"{'id':52s} {'kind':10s} {'format':24s} {'model':28s} {'d_in':>5s} {'width':>7s}  repo")
            for r in releases:
                print(f"{r.id:52s} {r.kind:10s} {r.format:24s} {r.model:28s} {r.d_in or '':>5} {r.width or '':>7}  {r.repo}")
            return 0
        dl = DownloadConfig(**dataclass_kwargs(args, DownloadConfig))
        hook = dl.hook or None
        root, release, sae_id = fetch(dl.id, hook, sae_id=dl.sae_id or None)
        if release is not None or dl.hook or dl.sae_id:
            from sae.pretrained import choose

            target = root if release is not None else choose(root / sae_id if sae_id else root, hook)
            sae = load_path(target, release=release, sae_id=sae_id)
            pair = f" d_out={sae.cfg.d_out} target={sae.cfg.target_hook!r}" if sae.cfg.is_transcoder else ""
            layers = f" layers={sae.cfg.layers}" if sae.cfg.is_clt else ""
            print(
                f"{target}: {sae.cfg.family} d_in={sae.cfg.d_in} latents={sae.cfg.n_latents} hook={sae.cfg.hook_name!r}"
                f"{pair}{layers}"
            )
        else:
            print(root)
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
