"""A read-only and a full disk: a tmpfs mounted by the test (skipped where mounting is not allowed).

Nothing already saved is lost: the run folder keeps its last complete state, no temporary file
is left, and once the disk is fixed the same command resumes and ends bit-identical.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from aegpo.config import load_params
from aegpo.io_utils import WriteError
from aegpo.run_lock import RunFolderError
from aegpo.trainer import Trainer

TRAIN = ["a red circle", "two blue squares"]


def _params(base, *extra):
    return load_params(None, [f"model.checkpoint={base}", "train.out_dir=run", "train.rounds=2",
                              "train.prompts_per_round=2", "train.group_size=2", "sampler.num_steps=3",
                              "train.eval_every=0", "train.eval_base=false", "model.lora.rank=4",
                              "entropy.layers=[0]", "train.strategy=grpo", "train.save_every=1", *extra])


@contextlib.contextmanager
def tmpfs(path, size="4m"):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder) -> object:
    """Write a file until the disk is full; returns its path."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def _litter(run):
    return sorted(str(p) for p in run.rglob("*") if p.name.endswith((".tmp", ".old")))


def _weights(run):
    return load_file(str(run / "state" / "trainable.safetensors"))


@pytest.fixture(scope="module")
def reference(tiny_base, tmp_path_factory):
    project = tmp_path_factory.mktemp("reference")
    trainer = Trainer(_params(tiny_base), TRAIN, None, project_dir=project, progress=False)
    trainer.run()
    trainer.close()
    return _weights(project / "run")


def test_full_disk_during_a_save_loses_nothing_and_resumes_bit_identical(tiny_base, tmp_path, reference):
    with tmpfs(tmp_path / "disk") as disk:
        first = Trainer(_params(tiny_base, "train.rounds=1"), TRAIN, None, project_dir=disk, progress=False)
        first.run()
        first.close()
        saved = (disk / "run" / "state" / "state.json").read_bytes()
        trainer = Trainer(_params(tiny_base), TRAIN, None, project_dir=disk, progress=False)
        filler = _fill(disk)
        with pytest.raises(WriteError) as info:
            trainer.run()
        trainer.close()
        assert info.value.errno == errno.ENOSPC and "resume" in str(info.value) and str(disk / "run") in str(info.value)
        assert (disk / "run" / "state" / "state.json").read_bytes() == saved  # the last complete state
        assert _litter(disk / "run") == []
        filler.unlink()
        resumed = Trainer(_params(tiny_base), TRAIN, None, project_dir=disk, progress=False)
        assert resumed.round == 1
        resumed.run()
        resumed.close()
        got = _weights(disk / "run")
        assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def test_full_disk_at_start_is_one_clear_error(tiny_base, tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        (disk / "run").mkdir()
        _fill(disk)
        with pytest.raises(RunFolderError, match=r"train.out_dir .*run is not writable \(No space left on device\)"):
            Trainer(_params(tiny_base), TRAIN, None, project_dir=disk, progress=False)


def test_read_only_disk_fails_at_start_and_keeps_the_run(tiny_base, tmp_path, capsys):
    from aegpo.cli import main

    with tmpfs(tmp_path / "disk") as disk:
        first = Trainer(_params(tiny_base, "train.rounds=1"), TRAIN, None, project_dir=disk, progress=False)
        first.run()
        first.close()
        before = {p: p.read_bytes() for p in (disk / "run").rglob("*") if p.is_file()}
        remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
        try:
            with pytest.raises(RunFolderError, match=r"is not writable \(Read-only file system\)"):
                Trainer(_params(tiny_base), TRAIN, None, project_dir=disk, progress=False)
            (tmp_path / "t.txt").write_text("\n".join(TRAIN) + "\n")
            (tmp_path / "p.yaml").write_text("seed: 0\n")
            code = main(["train", "--params", str(tmp_path / "p.yaml"), "-S", f"model.checkpoint={tiny_base}",
                         "-S", f"train.out_dir={disk / 'run'}",
                         "-S", f"train.prompts={tmp_path / 't.txt'}", "-S", f"eval.prompts={tmp_path / 't.txt'}"])
            err = capsys.readouterr().err
            assert code == 2 and "is not writable (Read-only file system)" in err and "Traceback" not in err
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=False)
        assert {p: p.read_bytes() for p in (disk / "run").rglob("*") if p.is_file()} == before
