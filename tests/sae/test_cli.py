import dataclasses
import typing

import pytest

from sae.cli import build_parser, main
from sae.cli.args import dataclass_kwargs
from sae.config import RunConfig, SAEConfig, TrainConfig


def _leaf_fields(cls):
    """The fields of `cls`, a nested dataclass's (a TextSource, HookPoints) in its place."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name])
        elif f.init:
            yield f


def test_every_config_field_is_an_option():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    dests = {a.dest for a in train._actions}  # noqa: SLF001
    for cls in (RunConfig, SAEConfig, TrainConfig):
        for f in _leaf_fields(cls):
            # the run reads 'train' and 'test'; it fills in the widths and a transcoder's hooks and layers itself
            if f.name not in ("d_in", "hook_name", "model_name", "split", "d_out", "target_hook", "first_layer"):
                assert f.name in dests, f"--{f.name} missing"


def test_options_parse_to_typed_config_values():
    args = build_parser().parse_args(
        [
            "train",
            "--k",
            "16",
            "--n-latents",
            "512",
            "--lr",
            "1e-3",
            "--betas",
            "0.9",
            "0.99",
            "--resume",
            "--options",
            '{"m": 3}',
            "--dataset",
            "corpus.txt",
        ]
    )
    assert dataclass_kwargs(args, SAEConfig) == {"k": 16, "n_latents": 512, "options": {"m": 3}}
    assert dataclass_kwargs(args, TrainConfig) == {"lr": 1e-3, "betas": (0.9, 0.99)}
    assert dataclass_kwargs(args, RunConfig) == {"resume": True, "dataset": "corpus.txt"}


def test_help_text_comes_from_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Active latents per token for the top-k families" in out
    assert "A latent that has not fired for this many tokens is dead" in out


def test_unknown_family_fails_fast_with_a_clear_message(capsys, tmp_path):
    code = main(["train", "--family", "topq", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown SAE family 'topq'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batch-size", "1"], "batch_size=1 is below the minimum of 8"),
        (["--tokens", "1", "--batch-size", "1"], "batch_size=1 is below the minimum of 8"),
        (["--lr", "-1"], "lr must be a finite number > 0"),
        (["--lr", "nan"], "lr must be a finite number > 0"),
    ],
)
def test_absurd_training_values_are_refused_before_the_model_loads(capsys, tmp_path, args, expected):
    code = main(["train", "--model", "no/such-model", "--out", str(tmp_path / "run"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
