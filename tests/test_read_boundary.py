"""The read boundary (errors.parsing): what a reader's parse raises becomes one line naming the
file; the disk's faults keep `cannot read`; rmp's own errors after the read still surface."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest
import torch

from rmp_cli.commands.resume import read_done
from rmp_cli.errors import FileFault, ParseFault, RmpError, parsing
from rmp_cli.report.results import COLUMNS, read_results, write_csv
from rmp_cli.runs.signals import Interrupted
from rmp_cli.training import checkpoint


def test_any_parse_failure_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    for exc in (IndexError("pop from empty list"), ValueError("a\nb"), RecursionError(), KeyError):
        with pytest.raises(ParseFault) as info, parsing(path, "not an x file", "replace it"):
            raise exc
        message = str(info.value)
        assert message.startswith(f"{path} is not an x file (") and message.endswith("; replace it")
        assert "\n" not in message and info.value.path == path


def test_the_disks_refusal_keeps_its_cannot_read_line(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    eio = rf"^cannot read {path}: Input/output error$"
    with pytest.raises(FileFault, match=eio), parsing(path, "not an x file"):
        raise OSError(errno.EIO, "Input/output error")
    # ... also when a library reports it as its own error raised while handling the OSError
    with pytest.raises(FileFault, match="Permission denied"), parsing(path, "not an x file"):
        try:
            raise PermissionError(errno.EACCES, "Permission denied")
        except OSError:
            raise RuntimeError("failed reading zip archive") from None
    # An OSError without an errno is the library's word about the contents (PIL, gzip).
    with pytest.raises(ParseFault, match="image file is truncated"), parsing(path, "not x"):
        raise OSError("image file is truncated")


def test_rmp_errors_and_signals_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(RmpError, match=r"^the reader's own check$"), parsing(tmp_path, "not x"):
        raise RmpError("the reader's own check")
    with pytest.raises(Interrupted), parsing(tmp_path, "not x"):
        raise Interrupted(15)


def test_a_bug_after_the_read_still_surfaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_checkpoint is the boundary; building the net from what it read is rmp's own code."""
    model = torch.nn.Linear(2, 2)
    payload = {"format": checkpoint.FORMAT, "state_dict": model.state_dict(), "kind": "model"}
    payload |= {"config": {"model": {"name": "x"}, "dataset": {"name": "d"}}}
    payload |= {"num_classes": 2, "input_shape": [1, 1, 2]}
    torch.save(payload, tmp_path / "model.pt")
    data = checkpoint.load_checkpoint(tmp_path / "model.pt")

    def broken(*_: object) -> None:
        raise TypeError("a bug in a model builder")

    monkeypatch.setattr(checkpoint, "build_model", broken)
    with pytest.raises(TypeError, match="a bug in a model builder"):
        checkpoint.load_model(data)


def test_a_csv_given_as_a_checkpoint_or_weights(tmp_path: Path) -> None:
    """The issue's case: torch's unpickler fails on it with IndexError: pop from empty list."""
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,test_acc\n1,2.28,0.51\n")
    with pytest.raises(RmpError) as info:
        checkpoint.load_checkpoint(csv)
    assert str(info.value).startswith(f"checkpoint {csv} is corrupt or not a torch file (")
    assert "expected a model.pt or last.pt written by `rmp train`" in str(info.value)
    with pytest.raises(RmpError, match=rf"^weights file {csv} is corrupt or not a torch file"):
        checkpoint.read_state_dict(csv)


def _results(tmp_path: Path) -> Path:
    rows = [
        {
            **{"dataset": "digits", "model": "m", "reset": reset, "balance": "rmp"},
            **{"scale": 1.0, "v_init": 0.0, "encoding": "direct", "activation": "relu"},
            **{"timesteps": t, "accuracy": 0.5, "ann_accuracy": 0.9, "seconds": 1.0},
            **{"spikes_per_image": 1.0, "synops_per_image": 2.0},
        }
        for reset in ("hard", "soft")
        for t in (1, 2)
    ]
    write_csv(tmp_path / "results.csv", pd.DataFrame(rows, columns=COLUMNS))
    return tmp_path / "results.csv"


def test_a_shifted_row_names_its_line_and_column(tmp_path: Path) -> None:
    """The issue's second case: a damaged row put 'direct' under scale (`could not convert
    string to float: 'direct'` from deep inside the resume)."""
    path = _results(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("rmp,1,0,", "rmp,")
    path.write_text("".join(lines))
    with pytest.raises(RmpError, match=r"line 3: scale is 'direct', not a number"):
        read_results(path)


def test_a_cut_last_line_is_refused_by_readers_and_repaired_by_a_resume(tmp_path: Path) -> None:
    path = _results(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    with pytest.raises(RmpError, match="ends in a cut line"):
        read_results(path)
    told: list[tuple] = []
    done, partial = read_done(tmp_path, [1, 2], say=lambda *a: told.append(a))
    assert len(done) == 3 and list(done["timesteps"]) == [1, 2, 1]
    assert list(partial.values()) == [{1}] and "reset=soft" in next(iter(partial))
    assert told and "kept all %d complete rows" in told[0][0] and told[0][3] == 3
    assert path.read_bytes() == whole[:-10]  # reading repairs nothing on disk


def test_a_damaged_resume_file_says_nothing_was_changed(tmp_path: Path) -> None:
    path = _results(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"0.5", b"0.\xff"))
    with pytest.raises(RmpError) as info:
        read_done(tmp_path, [1, 2], say=print)
    message = str(info.value)
    assert message.startswith(f"{path} is not UTF-8 text")
    assert f"nothing in {tmp_path} was changed: move it away" in message


def test_an_empty_results_table_is_a_table_with_no_rows(tmp_path: Path) -> None:
    """Cut at its first byte: no complete row to keep, every point is computed."""
    (tmp_path / "results.csv").write_bytes(b"")
    done, partial = read_done(tmp_path, [1], say=lambda *a: None)
    assert done.empty and partial == {}


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_imagenet_image_read_in_a_worker_is_one_line(
    tmp_path: Path, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """ImageNet's JPEGs are decoded lazily, in DataLoader workers, which send an exception back
    as its message plus the worker's traceback: the CLI prints the message alone."""
    from rmp_cli.commands.stopping import exit_code
    from rmp_cli.data import build_data, make_loader
    from tests.test_data import class_color, write_jpeg

    for split in ("train", "val"):
        for label, wnid in enumerate(["n01", "n02"]):
            write_jpeg(tmp_path / split / wnid / "0.JPEG", class_color(label), size=40)
    damaged = tmp_path / "val" / "n02" / "0.JPEG"
    damaged.write_bytes(damaged.read_bytes()[:60])
    bundle = build_data({"name": "imagenet", "root": str(tmp_path), "calib_size": 2}, seed=0)
    loader = make_loader(bundle.test, 2, shuffle=False, seed=0, num_workers=workers)
    with pytest.raises(RmpError) as info:
        next(iter(loader))
    assert exit_code(info.value) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"rmp: error: cannot decode {damaged} (")


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_weights_of_the_wrong_kind_are_refused_not_cast(dtype: torch.dtype) -> None:
    """torch would load a complex weight with a warning, dropping its imaginary part."""
    model = torch.nn.Linear(3, 2)
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    with pytest.raises(RmpError, match=rf"1 dtype: weight {dtype}|2 dtype: weight {dtype}"):
        checkpoint.load_weights(model, state, "w.pt")
