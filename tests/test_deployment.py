"""The library's transactional writer of a protected model (cloud folder + device secret) and the model.pt
checks: two writers of one folder exclude each other, nothing is half-written, a damaged model.pt is one line."""

from __future__ import annotations

import fcntl
import os
import zipfile

import pytest
import torch

from fakegradient import FakeGradientError, ModelFileError, load_secret, protect
from fakegradient.cli import main
from fakegradient.deployment import save_deployment
from fakegradient.modelfile import read_info


@pytest.fixture
def protected(tiny, tiny_input):
    return protect(tiny, example_input=tiny_input)


def test_a_second_writer_of_the_same_folder_fails_at_once(protected, tmp_path):
    served, key = protected
    out = tmp_path / "cloud"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # another `protect` holding the folder
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(FakeGradientError, match="another `fakegradient protect` is writing"):
            save_deployment(out, tmp_path / "k.key", served, key, input_size=[3, 16, 16])
    finally:
        os.close(fd)
    assert list(out.iterdir()) == [] and not (tmp_path / "k.key").exists()  # nothing written, nothing lost
    deployed = save_deployment(out, tmp_path / "k.key", served, key, input_size=[3, 16, 16])
    assert [p.name for p in deployed.cloud] == ["model.onnx"] and load_secret(deployed.secret).n_real == 10


def test_a_second_deployment_into_a_taken_folder_is_refused_and_keeps_the_first(protected, tiny, tiny_input,
                                                                                 tmp_path):
    served, key = protected
    save_deployment(tmp_path / "cloud", tmp_path / "a.key", served, key, input_size=[3, 16, 16])
    before = (tmp_path / "cloud" / "model.onnx").read_bytes()
    other_served, other = protect(tiny, example_input=tiny_input)
    with pytest.raises(FakeGradientError, match="refusing to overwrite"):
        save_deployment(tmp_path / "cloud", tmp_path / "b.key", other_served, other, input_size=[3, 16, 16])
    assert (tmp_path / "cloud" / "model.onnx").read_bytes() == before and not (tmp_path / "b.key").exists()


def test_the_secret_inside_the_cloud_folder_is_refused(protected, tmp_path):
    served, key = protected
    with pytest.raises(FakeGradientError, match="goes to the cloud"):
        save_deployment(tmp_path / "cloud", tmp_path / "cloud" / "k.key", served, key, input_size=[3, 16, 16])


# pickles torch's weights-only unpickler rejects with an exception of another family than UnpicklingError
BAD_PICKLES = {"IndexError": b".", "KeyError": b"h\x05.", "struct.error": b"J\x01\x00"}


@pytest.mark.parametrize("damage", [*BAD_PICKLES, "not a dict", "truncated"])
def test_a_damaged_model_pt_is_one_line_never_a_traceback(tmp_path, capsys, damage):
    path = tmp_path / "model.pt"
    if damage == "not a dict":
        torch.save([1, 2, 3], path)
    elif damage == "truncated":
        torch.save({"format": "fakegradient-model"}, path)
        path.write_bytes(path.read_bytes()[:40])
    else:  # a well-formed archive whose pickle is damaged
        torch.save({"x": torch.zeros(3)}, path)
        with zipfile.ZipFile(path) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, BAD_PICKLES[damage] if name.endswith("data.pkl") else data)
    with pytest.raises(ModelFileError):
        read_info(path)
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
