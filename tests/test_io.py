"""Atomic writes leave nothing half-written; weights are safetensors data, never unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from gan_pipeline.errors import DataError
from gan_pipeline.io import (
    atomic_path,
    load_module,
    load_weights,
    read_json,
    save_weights,
    write_csv,
    write_json,
)


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert list(target.parent.iterdir()) == [target]
    assert target.stat().st_mode & 0o044  # readable by others like any output, not mkstemp's 0600


def test_atomic_path_keeps_the_earlier_file_when_the_write_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("earlier")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "earlier"
    assert list(tmp_path.iterdir()) == [target]


def test_json_round_trip_and_missing_file_message(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": [1.5]})
    assert read_json(tmp_path / "m.json") == {"a": [1.5], "b": 1}
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        read_json(tmp_path / "nope.json")


def test_weights_round_trip_with_their_config(tmp_path):
    model = nn.Linear(3, 2)
    save_weights(tmp_path / "w.safetensors", model, {"in": 3, "out": 2})
    state, config = load_weights(tmp_path / "w.safetensors")
    assert config == {"in": 3, "out": 2}
    assert torch.equal(state["weight"], model.weight.detach())
    rebuilt, _ = load_module(tmp_path / "w.safetensors", lambda c: nn.Linear(c["in"], c["out"]))
    assert torch.equal(rebuilt.bias, model.bias)
    assert not rebuilt.training


def test_a_pickle_carrying_code_is_refused_and_never_executed(tmp_path, code_carrying_pickle):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(code_carrying_pickle(marker)))
    with pytest.raises(DataError, match=r"evil\.safetensors: not a safetensors weights file"):
        load_weights(evil)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path):
    save_weights(tmp_path / "w.safetensors", nn.Linear(3, 2), {"in": 3, "out": 2})
    with pytest.raises(DataError, match="weights do not fit the model"):
        load_module(tmp_path / "w.safetensors", lambda c: nn.Linear(4, 2))


def test_write_csv_has_a_header_and_one_row_per_dict(tmp_path):
    write_csv(tmp_path / "log.csv", [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
    assert (tmp_path / "log.csv").read_text() == "step,loss\n1,0.5\n2,0.25\n"
