"""Automatic precision: bf16 mixed where the hardware computes bf16 natively (GPU or CPU), fp32 on CPUs
that would emulate it, each branch reached by faking what PyTorch reports."""

import logging

import pytest
import torch

from cifar_lightning import precision
from cifar_lightning.precision import auto_precision

from cli_runner import BASE, run_in_process


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (True, True, "bf16-mixed"), (False, False, "32-true"),
])
def test_cpu_gets_bf16_only_where_it_is_native(monkeypatch, cpu_only, avx512_bf16, amx, expected):
    fake_cpu(monkeypatch, avx512_bf16, amx)
    chosen, why = auto_precision("auto")
    assert chosen == expected
    assert ("natively" in why) == (expected == "bf16-mixed")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_cuda_gets_mixed_precision(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # Emulated bf16 (V100, T4) must not count: answer True only when the caller excludes emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    fake_cpu(monkeypatch, False, False)
    assert auto_precision("auto")[0] == expected
    assert auto_precision("gpu")[0] == expected
    assert auto_precision("cpu")[0] == "32-true"  # a CPU run on a GPU machine follows the CPU's rule


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cli_applies_the_rule_and_says_so_in_one_line(monkeypatch, tmp_path, caplog, cpu_only, native, expected):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.chdir(tmp_path)
    cli = run_in_process(monkeypatch, "--config", BASE, run=False)
    assert cli.trainer.precision == expected
    lines = [message for message in caplog.messages if message.startswith("Precision ")]
    assert len(lines) == 1 and lines[0].startswith(f"Precision {expected}: ")
    assert "--trainer.precision" in lines[0]


def test_precision_in_the_config_wins(monkeypatch, tmp_path, cpu_only):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.chdir(tmp_path)
    cli = run_in_process(monkeypatch, "--config", BASE, "--trainer.precision", "32-true", run=False)
    assert cli.trainer.precision == "32-true"
