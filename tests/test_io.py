"""Atomic writes leave nothing half-written; weights are safetensors data, never unpickled."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
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
    write_safetensors,
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


def test_outputs_are_0644_even_under_a_private_umask_and_after_safetensors_replaced_the_file(tmp_path):
    before = os.umask(0o077)
    try:
        save_weights(tmp_path / "w.safetensors", nn.Linear(3, 2), {"in": 3})
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(before)
    assert oct((tmp_path / "w.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == oct(0o644)


def test_safetensors_files_are_the_same_bytes_for_the_same_tensors_and_metadata(tmp_path):
    tensors = {"b": torch.arange(3), "a": torch.ones(2, 2)}
    metadata = {"format": "x", "meta": json.dumps({"step": 1}), "zz": "1"}
    # safetensors alone writes the metadata keys in a hash map's order, which varies between calls
    assert len({safetensors_bytes(tensors, metadata=metadata) for _ in range(20)}) > 1
    for i in range(8):
        write_safetensors(tmp_path / f"{i}.safetensors", tensors, metadata)
    contents = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(8)}
    assert len(contents) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("a"), tensors["a"]) and torch.equal(f.get_tensor("b"), tensors["b"])


def _earlier(folder):
    folder.mkdir(exist_ok=True)
    (folder / "m.json").write_text("earlier")
    return folder / "m.json"


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_earlier_file(tmp_path):
    target = _earlier(tmp_path / "out")
    with pytest.raises(DataError) as err, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what the write raises on a full disk
    assert str(err.value) == f"{target}: cannot write (No space left on device); the earlier file is kept"
    assert target.read_text() == "earlier" and list(target.parent.iterdir()) == [target]


def test_an_error_of_the_writer_itself_is_not_taken_for_a_disk_error(tmp_path):
    target = _earlier(tmp_path / "out")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        (tmp_path / "some input").read_text()
    assert target.read_text() == "earlier" and list(target.parent.iterdir()) == [target]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder all the same")
def test_a_read_only_output_folder_is_one_line_naming_the_file(tmp_path):
    target = _earlier(tmp_path / "out")
    target.parent.chmod(0o555)
    try:
        with pytest.raises(DataError) as err:
            save_weights(target.parent / "w.safetensors", nn.Linear(3, 2), {"in": 3})
        assert str(err.value) == f"{target.parent}/w.safetensors: cannot write (Permission denied)"
        with pytest.raises(DataError, match="cannot write .Permission denied.; the earlier file is kept$"):
            write_json(target, {"a": 1})
    finally:
        target.parent.chmod(0o755)
    assert target.read_text() == "earlier" and list(target.parent.iterdir()) == [target]


def test_an_output_folder_that_is_a_file_is_one_line_naming_the_file(tmp_path):
    # root too cannot make a folder where a file is: this case holds under any user
    (tmp_path / "models").write_text("a file")
    with pytest.raises(DataError) as err:
        write_json(tmp_path / "models" / "cgan" / "run.json", {})
    assert str(err.value) == (
        f"{tmp_path}/models/cgan/run.json: cannot write (Not a directory: {tmp_path}/models/cgan)"
    )
    assert (tmp_path / "models").read_text() == "a file"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", "its 'config' metadata is not valid JSON (Expecting property name"),
        ("[1, 2]", "its 'config' metadata is not a JSON object, found [1, 2]"),
    ],
)
def test_weights_with_malformed_config_metadata_are_one_line(tmp_path, config, message):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"config": config})
    with pytest.raises(DataError) as err:
        load_weights(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)
