"""Interruption, exact resumption and DDP.

The fault tests run the real CLI in subprocesses (SIGTERM, SIGINT and SIGKILL land mid-epoch,
where ``fault_points.PauseMidEpoch`` waits for them). Everything trains a few batches of tiny
synthetic data. Bad input is ``test_bad_input.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cifar_lightning.cli import cli_main
from cifar_lightning.training.checkpoint_io import AtomicCheckpointIO

from cli_runner import STEPS, fit_args, start_fit, subprocess_env


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            out, err = process.communicate(timeout=30)
            pytest.fail(f"{path.name} never appeared (exit {process.returncode}):\n{err[-3000:]}")
        time.sleep(0.1)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- interruption and resumption -------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_ctrl_c_and_sigkill_mid_epoch_then_resume_finishes(data: Path, tmp_path: Path) -> None:
    """Each fault mid-epoch leaves a loadable last.ckpt; resuming after the last one finishes every epoch."""
    args = fit_args(data, tmp_path / "cache", "--trainer.max_epochs", "4")
    resume = [*args, "--ckpt_path", "last"]
    last = tmp_path / "checkpoints" / "base" / "last.ckpt"

    for epoch, signum, pause_at in ((1, signal.SIGTERM, []), (2, signal.SIGINT, resume), (3, signal.SIGKILL, resume)):
        marker = tmp_path / f"paused{epoch}"
        pause = f'{{"class_path": "fault_points.PauseMidEpoch", "init_args": {{"epoch": {epoch}, "marker": "{marker.name}"}}}}'
        process = start_fit(tmp_path, [*(pause_at or args), f"--trainer.callbacks+={pause}"])
        wait_for(marker, process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        saved = load(last)
        if signum == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL
            # Nothing runs on SIGKILL: last.ckpt is the one written at the end of the previous epoch.
            assert saved["epoch"] == epoch - 1 and saved["global_step"] == STEPS * epoch
        else:
            assert process.returncode == 128 + signum, err[-3000:]
            assert "Traceback" not in err
            # Saved mid-epoch, two batches into the epoch, and the notice says how to go on.
            step = STEPS * epoch + 2
            assert saved["global_step"] == step
            assert f"Training stopped by {signum.name} at epoch {epoch}, step {step}. Saved {last}." in err
            assert "Resume with:\n  python -m cifar_lightning fit --config" in err
            assert err.rstrip().endswith("--ckpt_path last")

    process = start_fit(tmp_path, resume)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    final = load(last)
    assert final["epoch"] == 3 and final["global_step"] == 4 * STEPS  # no batch lost or repeated
    assert "Test accuracy of the best checkpoint" in out


def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process killed halfway through writing last.ckpt leaves the previous last.ckpt intact."""
    script = textwrap.dedent(
        """
        import os, signal, sys, torch
        from cifar_lightning.training.checkpoint_io import AtomicCheckpointIO

        io, path = AtomicCheckpointIO(), sys.argv[1]
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "epoch": 1}, path)
        real_save = torch.save

        def save_half_then_die(obj, file, *args, **kwargs):
            real_save(obj, file, *args, **kwargs)
            file.flush()
            file.truncate(file.tell() // 2)  # half of the new checkpoint is on disk ...
            os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed

        torch.save = save_half_then_die
        io.save_checkpoint({"state_dict": {"w": torch.ones(100_000)}, "epoch": 2}, path)
        """
    )
    last = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", script, str(last)], env=subprocess_env(), timeout=120)
    assert result.returncode == -signal.SIGKILL
    survivor = load(last)
    assert survivor["epoch"] == 1 and torch.equal(survivor["state_dict"]["w"], torch.zeros(100_000))
    (partial,) = tmp_path.glob(".last.ckpt.*.tmp")  # the half-written file never took the real name
    with pytest.raises(Exception):
        load(partial)


@pytest.fixture
def deterministic_restored():
    yield
    torch.use_deterministic_algorithms(False)


def test_two_runs_are_identical_and_resuming_at_an_epoch_boundary_changes_nothing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deterministic_restored
) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar_lightning"])

    def fit(name: str, *extra: str):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / name)
        cli = cli_main(fit_args(data, tmp_path / "cache", "--trainer.deterministic", "true",
                                "--trainer.callbacks+=fault_points.RecordRank", *extra))
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
        record = json.loads((tmp_path / name / "rank0.json").read_text())  # metrics at the end of fit
        return record["metrics"], load(tmp_path / name / "checkpoints" / "base" / "last.ckpt")

    metrics_a, ckpt_a = fit("a", "--trainer.max_epochs", "2")
    metrics_b, ckpt_b = fit("b", "--trainer.max_epochs", "2")
    fit("c", "--trainer.max_epochs", "1")
    metrics_c, ckpt_c = fit("c", "--trainer.max_epochs", "2", "--ckpt_path", "last")

    assert {"val/acc", "val/loss", "train/loss"} <= metrics_a.keys()
    assert metrics_a == metrics_b == metrics_c
    for run, other in (("b", ckpt_b), ("c", ckpt_c)):
        assert other["global_step"] == ckpt_a["global_step"] == 2 * STEPS
        for name, weight in ckpt_a["state_dict"].items():
            assert torch.equal(weight, other["state_dict"][name]), name
        assert str(other["optimizer_states"]) == str(ckpt_a["optimizer_states"])
        # Early stopping, checkpoint and RNG state alike, up to the run's own folder name and
        # ModelCheckpoint's current_score, which Lightning does not restore (it is never read back).
        for key, state in ckpt_a["callbacks"].items():
            state, resumed = dict(state), dict(other["callbacks"][key])
            state.pop("current_score", None), resumed.pop("current_score", None)
            assert str(resumed).replace(f"{tmp_path}/{run}/", f"{tmp_path}/a/") == str(state), key


# --- distributed ------------------------------------------------------------------------------


def assert_two_ranks_trained_as_one_run(folder: Path, printed: str) -> None:
    """What ``fault_points.RecordRank`` wrote for ranks 0 and 1 of a 2-process ``fit`` in ``folder``."""
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["train_sampler"] == "DistributedSampler" for r in ranks)
    # Metrics are synchronised: every rank ends with the same numbers.
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "val/acc" in ranks[0]["metrics"]
    # The same seeded validation split on both ranks; the samplers split both sets without overlap.
    assert ranks[0]["val_labels"] == ranks[1]["val_labels"]
    for key, size in (("train_indices", 90), ("val_indices", 10)):
        first, second = (set(r[key]) for r in ranks)
        assert not first & second and first | second == set(range(size))
    # Rank zero alone wrote checkpoints, logs and the test result.
    best, last = sorted(p.name for p in (folder / "checkpoints" / "base").iterdir())
    assert best.startswith("epoch") and last == "last.ckpt"
    assert [p.name for p in (folder / "lightning_logs" / "base").iterdir()] == ["version_0"]
    assert printed.count("Test accuracy of the best checkpoint") == 1


@pytest.mark.slow
def test_ddp_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    """fit then predict with 2 gloo processes: synchronised metrics, disjoint shards, rank 0 writes."""
    args = fit_args(
        data, tmp_path / "cache", "--trainer.max_epochs", "2", "--trainer.strategy", "ddp",
        "--trainer.devices", "2", "--trainer.callbacks+=fault_points.RecordRank",
    )
    process = start_fit(tmp_path, args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert_two_ranks_trained_as_one_run(tmp_path, out)

    # predict under DDP: each process predicts a shard, one CSV holds every test image once.
    predict = [a for a in args if a != "--trainer.callbacks+=fault_points.RecordRank"]
    predict[0] = "predict"
    process = start_fit(tmp_path, [*predict, "--ckpt_path", str(tmp_path / "checkpoints" / "base" / "last.ckpt")])
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    (csv_file,) = (tmp_path / "predictions").iterdir()
    rows = csv_file.read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[0]) for row in rows) == list(range(20))


@pytest.mark.slow
def test_two_nodes_of_one_process_each_train_as_one_run(data: Path, tmp_path: Path) -> None:
    """The same ``fit`` across two machines, as ``docs/reliability.md`` runs it: two torchrun launches
    on localhost (``--nnodes 2 --node_rank 0|1``, one process each, gloo), sharing one folder as
    machines share a file system. Lightning sees TorchElastic's environment, the two ranks train on
    disjoint shards with synchronised metrics, and one set of checkpoints is written, by rank 0."""
    from serving import free_port

    port = free_port()
    args = fit_args(data, tmp_path / "cache", "--trainer.max_epochs", "2", "--trainer.strategy", "ddp",
                    "--trainer.num_nodes", "2", "--trainer.devices", "1",
                    "--trainer.callbacks+=fault_points.RecordRank")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
             "-m", "cifar_lightning", *args],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert_two_ranks_trained_as_one_run(tmp_path, "".join(out for out, _ in outputs))

