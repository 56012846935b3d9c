"""The run folder: a run is never clobbered, two writers never share a folder, a failed run leaves no empty folder."""

import os

import pytest

from sae.cli.run_folder import LOCK_FILE, RunFolderError, run_folder


def _finished_run(path):
    path.mkdir()
    for name in ("cfg.json", "metrics.json", "log.jsonl"):
        (path / name).write_text(name)
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "latest.pt").write_text("ckpt")
    return path


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = _finished_run(tmp_path / "run")
    with pytest.raises(
        RunFolderError,
        match=r"not empty \(it holds cfg.json, checkpoints, log.jsonl, metrics.json\)"
        r": pass --resume .* --overwrite",
    ):
        with run_folder(out):
            pass
    assert (out / "metrics.json").read_text() == "metrics.json" and not (out / LOCK_FILE).exists()
    with run_folder(out, resume=True) as got:  # resume keeps what is there
        assert (got / "checkpoints" / "latest.pt").exists()


def test_overwrite_deletes_a_runs_files_but_never_anything_else(tmp_path):
    out = _finished_run(tmp_path / "run")
    with run_folder(out, overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    home = _finished_run(tmp_path / "home")
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match=r"not a run's \(thesis.tex\); refusing to delete them"):
        with run_folder(home, overwrite=True):
            pass
    assert (home / "thesis.tex").exists() and (home / "cfg.json").exists()
    with pytest.raises(RunFolderError, match="give one of them"):
        with run_folder(tmp_path / "x", resume=True, overwrite=True):
            pass


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    with run_folder(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with run_folder(out, resume=True):
                pass
        (out / "log.jsonl").write_text("the first run's log")
    with run_folder(out, resume=True):  # released at the end of the first run
        assert (out / "log.jsonl").read_text() == "the first run's log"


def test_a_failed_run_leaves_no_empty_folder_it_created_and_keeps_what_it_wrote(tmp_path):
    made, kept, existing = tmp_path / "a" / "new", tmp_path / "kept", tmp_path / "existing"
    existing.mkdir()
    for out in (made, existing):
        with pytest.raises(KeyError):
            with run_folder(out):
                raise KeyError("failed before writing anything")
    assert not made.exists() and existing.is_dir()
    with pytest.raises(KeyError):
        with run_folder(kept):
            (kept / "log.jsonl").write_text("step 1")
            raise KeyError("failed after writing")
    assert (kept / "log.jsonl").exists()


def test_an_out_that_is_a_file_or_unwritable_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunFolderError, match=r"--out '.*f' is a file"):
        with run_folder(tmp_path / "f"):
            pass
    with pytest.raises(RunFolderError, match="cannot create the run folder"):
        with run_folder(tmp_path / "f" / "run"):
            pass
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="cannot create the run folder .*Permission denied"):
            with run_folder(locked / "run"):
                pass
    finally:
        locked.chmod(0o700)


def test_overwrite_replaces_the_evaluation_browser_and_per_hook_runs_but_not_a_foreign_sub_folder(tmp_path):
    out = _finished_run(tmp_path / "run")
    for extra in ("eval", "browser"):
        (out / extra).mkdir()
        (out / extra / "x.html").write_text("x")
    (out / "feature_stats.safetensors").write_text("stats")
    _finished_run(out / "blocks.2.hook_resid_pre")
    with run_folder(out, overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    out = _finished_run(tmp_path / "again")
    (out / "papers").mkdir()
    (out / "papers" / "draft.tex").write_text("mine")
    with pytest.raises(RunFolderError, match=r"not a run's \(papers\)"):
        with run_folder(out, overwrite=True):
            pass
