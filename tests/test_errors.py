"""The one-line error of a stage, and what it adds under `dvc repro`."""

from __future__ import annotations

import pytest

from gan_pipeline.errors import DataError, ParamsError, exit_on_error


def _fail(exc):
    @exit_on_error
    def main():
        raise exc

    return main


def test_an_error_is_one_line_and_exit_status_1(capsys, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(SystemExit) as stop:
        _fail(DataError("x.npz: truncated"))()
    assert stop.value.code == 1
    assert capsys.readouterr().err == "error: x.npz: truncated\n"


def test_under_dvc_a_mid_run_failure_says_how_to_get_the_previous_outputs_back(capsys, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "train@cgan")
    with pytest.raises(SystemExit):
        _fail(DataError("training diverged at step 3: loss_d is nan"))()
    err = capsys.readouterr().err
    assert err == (
        "error: training diverged at step 3: loss_d is nan [train@cgan: the previous outputs stay; "
        "`dvc checkout train@cgan` restores any this run replaced]\n"
    )


def test_under_dvc_a_params_error_needs_no_way_back(capsys, monkeypatch):
    # params errors stop dvc repro in the check stage, before any output is touched
    monkeypatch.setenv("DVC_STAGE", "check")
    with pytest.raises(SystemExit):
        _fail(ParamsError("params.yaml: experiments.cgan.train.lr: expected a float, got 'fast'"))()
    assert "dvc checkout" not in capsys.readouterr().err
