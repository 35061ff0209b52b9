"""Per-image predictions: from the one simulation that scores every T, exact for any chunking and
any sharding, kept in predictions.npz per grid point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from rmp_cli.commands.pipeline import dataset_indices, interleave
from rmp_cli.errors import RmpError
from rmp_cli.report.predictions import (
    Predictions,
    keep_points,
    read_predictions,
    upsert_point,
)
from rmp_cli.snn import simulate
from rmp_cli.snn.simulator import label_rank, predicted_class
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture
from tests.test_simulator import calibrated, labelled, reference_run


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_predictions_equal_step_by_step_simulation_for_every_chunking(reset: str) -> None:
    net = calibrated("resnet")
    net.reset_mode = reset
    x = snn_nets.images(6, seed=2)
    labels = torch.arange(6) % 10
    wanted = [1, 5, 8, 23]
    potentials, _ = reference_run(net, x, wanted[-1], channels_last=True)
    expected = torch.stack([potentials[t - 1].argmax(-1) for t in wanted])
    for chunk in [1, 7, 23, "auto"]:
        result = simulate(net, [(x[:3], labels[:3]), (x[3:], labels[3:])], wanted, chunk=chunk)
        assert result.predictions is not None and result.predictions.dtype == torch.int16
        assert torch.equal(result.predictions.long(), expected), chunk
        # Predictions and counts tell the same story.
        right = (result.predictions.long() == labels).sum(1).tolist()
        assert right == result.correct[1], chunk


def test_predicted_class_follows_label_rank_ties() -> None:
    scores = torch.tensor([[[2.0, 5.0, 5.0, 1.0], [3.0, 3.0, 0.0, 3.0]]])
    tiebreak = torch.tensor([[[0.0, 0.1, 0.2, 0.0], [1.0, 1.0, 0.0, 1.0]]])
    assert predicted_class(scores).tolist() == [[1, 0]]  # ties -> lower index
    assert predicted_class(scores, tiebreak).tolist() == [[2, 0]]
    for tb in (None, tiebreak):
        pred = predicted_class(scores, tb)
        assert (label_rank(scores, pred, tb) == 0).all()


def test_spike_readout_predictions_match_its_counts() -> None:
    net = calibrated("vgg")
    net.output_threshold = 0.05
    data = labelled()
    result = simulate(net, data, [16, 64], chunk=16, readout="spikes")
    labels = torch.cat([y for _, y in data])
    assert (result.predictions.long() == labels).sum(1).tolist() == result.correct[1]


def test_shards_interleaved_back_equal_one_process() -> None:
    """Under torchrun rank r simulates test images r, r + world, ...; interleave restores the
    test-set order, so the merged predictions equal one process's."""
    net = calibrated("resnet")
    x, y = snn_nets.images(9, seed=5), torch.arange(9) % 10
    whole = simulate(net, [(x, y)], [2, 9], chunk=4)
    shards = [simulate(net, [(x[r::2], y[r::2])], [2, 9], chunk=4) for r in range(2)]
    assert torch.equal(interleave([s.predictions for s in shards]), whole.predictions)
    merged = shards[0].merge(shards[1])
    assert merged.predictions.shape == whole.predictions.shape


def test_dataset_indices_keep_the_real_indices_of_a_subset() -> None:
    data = TensorDataset(torch.zeros(10, 1), torch.zeros(10))
    assert dataset_indices(data) == list(range(10))
    assert dataset_indices(Subset(data, [7, 2, 5])) == [7, 2, 5]
    assert dataset_indices(Subset(Subset(data, [9, 8, 7, 6]), [3, 0])) == [6, 9]


def test_predictions_file_upserts_points_and_keeps_the_finished_ones(tmp_path: Path) -> None:
    path = tmp_path / "predictions.npz"
    index, label = np.array([4, 0, 7]), np.array([1, 2, 3])
    snn = np.array([[1, 2, 0], [1, 2, 3]])
    upsert_point(path, "a", [4, 8], index, label, snn, np.array([1, 2, 3]))
    upsert_point(path, "b", [4, 8], index, label, snn[::-1], np.array([1, 2, 2]))
    upsert_point(path, "a", [4, 8], index, label, snn[::-1], np.array([1, 2, 3]))  # redone
    p = read_predictions(path)
    assert p.points == ["b", "a"] and p.snn.dtype == np.int16 and p.index.dtype == np.int32
    assert p.index.tolist() == [4, 0, 7] and p.timesteps == [4, 8]
    assert p.right("a").tolist() == [[True, True, True], [True, True, False]]
    assert p.ann_right("b").tolist() == [True, True, False]
    keep_points(path, {"a"})
    assert read_predictions(path).points == ["a"]
    with pytest.raises(RmpError, match="other images"):
        upsert_point(path, "c", [4, 8], index + 1, label, snn, label)
    # Size: 6 N + 2 P N (nT + 1) bytes of arrays plus small headers.
    assert path.stat().st_size < 6 * 3 + 2 * 1 * 3 * 3 + 6 * 400
    path.write_bytes(b"not a zip")
    with pytest.raises(RmpError, match="not a predictions file of `rmp sweep`"):
        read_predictions(path)


def test_predictions_arrays_must_agree(tmp_path: Path) -> None:
    from rmp_cli.report.predictions import write_predictions

    p = Predictions(["a"], [1], np.arange(3), np.zeros(3), np.zeros((1, 1, 3)), np.zeros((1, 3)))
    write_predictions(tmp_path / "p.npz", p)
    assert read_predictions(tmp_path / "p.npz").snn.shape == (1, 1, 3)
    with pytest.raises(RmpError, match="beyond int16"):
        write_predictions(
            tmp_path / "q.npz",
            Predictions(["a"], [1], np.arange(1), np.array([40000]), np.zeros((1, 1, 1)), p.ann),
        )
