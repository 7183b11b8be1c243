"""Pretext workers of seed 004 (tympan.methods.workers, tympan.objectives.regression): label
gathering under crops, losses against hand computations, the weighted sum, the shared pass."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.fft
import torch

from tympan.augment.pipeline import Views
from tympan.config import load_recipe
from tympan.data.dataset import fit_length
from tympan.errors import ConfigError, TympanError
from tympan.methods.workers import (
    FrameLabels,
    PASETask,
    PretextWorkersTask,
    WorkerHeads,
    gather_frame_labels,
    read_selection,
    resample_frames,
)
from tympan.objectives.regression import (
    dct_matrix,
    multitask_ssl_loss,
    weighted_workers,
    worker_l1,
)
from tympan.training.module import PretrainModule

HOP = 16  # label hop in samples (hop_seconds 0.01 at 1600 Hz)


def _write_labels(path: Path, paths: list[str], lengths: list[int], names: list[str],
                  seed: int = 0) -> np.ndarray:
    """A labels file in the format of ``tympan pretext labels`` (written with numpy)."""
    rng = np.random.default_rng(seed)
    frames = rng.normal(size=(sum(lengths), len(names))).astype(np.float32) * 3 + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    means = np.stack([frames[a:b].mean(0) for a, b in zip(offsets[:-1], offsets[1:])])
    np.savez(path, paths=np.array(paths), names=np.array(names), clip_means=means,
             frames=frames, offsets=offsets, hop_seconds=np.float64(0.01),
             sample_rate=np.int64(1600))
    return frames


# -- gathering ------------------------------------------------------------------------------------


def test_gather_matches_a_per_clip_reference_with_tiling_and_offsets() -> None:
    rng = np.random.default_rng(1)
    # file lengths in samples: long, short (tiled, not a multiple of the hop), exact, long
    file_len = np.array([400, 50, 160, 1000])
    lengths = file_len // HOP  # frames per file, as tympan pretext labels counts them
    frames = torch.from_numpy(rng.normal(size=(int(lengths.sum()), 3)).astype(np.float32))
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    crop = 160
    index = torch.tensor([0, 1, 2, 3, 3, 1])
    start = torch.tensor([37, 0, 0, 840, 0, 0])  # non-zero starts; short clips start at 0
    got = gather_frame_labels(frames, offsets, torch.from_numpy(lengths), index, start,
                              torch.from_numpy(file_len[index.numpy()]), crop, float(HOP))
    assert got.shape == (6, crop // HOP, 3)
    for b in range(6):
        i, s = int(index[b]), int(start[b])
        # the crop's source samples, exactly as the dataset cuts (and tiles) it
        source = fit_length(np.arange(file_len[i]), crop, s)
        own = frames[int(offsets[i]): int(offsets[i]) + int(lengths[i])]
        for j in range(crop // HOP):
            frame = min(int(source[j * HOP]) // HOP, int(lengths[i]) - 1)
            assert torch.equal(got[b, j], own[frame]), (b, j)
    # the tiled short clip (50 samples = 3 frames + 2 samples): slot 3 (sample 48) reads the
    # last frame, slot 4 (sample 64 = 50 + 14) wraps around to the first
    own1 = frames[int(offsets[1]): int(offsets[1]) + 3]
    assert torch.equal(got[1, 3], own1[2]) and torch.equal(got[1, 4], own1[0])
    # without file lengths, files are taken as lengths * hop samples long
    approx = gather_frame_labels(frames, offsets, torch.from_numpy(lengths), index, start, None,
                                 crop, float(HOP))
    assert torch.equal(approx[0], got[0])


def test_resample_frames_averages_over_time() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)  # frames (0,1), (2,3), ...
    y = resample_frames(x, 3)
    assert torch.allclose(y[0], torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))
    assert resample_frames(x, 6) is x
    up = resample_frames(x[:, :2], 4)  # upsampling repeats
    assert torch.allclose(up[0, :, 0], torch.tensor([0.0, 0.0, 2.0, 2.0]))


def test_frame_labels_reorder_standardise_and_name_missing_files(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{c}.wav") for c in "abc"]
    frames = _write_labels(tmp_path / "labels.npz", paths, [4, 2, 3], ["f0", "loudness", "zcr"])
    items = [paths[2], paths[0]]  # dataset order differs from the file's, b is unused
    table = FrameLabels.from_file(tmp_path / "labels.npz", ["zcr", "f0"], items)
    assert table.names == ("zcr", "f0") and table.lengths.tolist() == [3, 4]
    assert table.offsets.tolist() == [0, 3]
    raw = np.concatenate([frames[6:9], frames[0:4]])[:, [2, 0]]
    np.testing.assert_allclose(table.mean, raw.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table.frames.numpy(), (raw - raw.mean(0)) / raw.std(0), atol=1e-5)
    assert torch.allclose(table.frames.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(table.frames.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert table.hop_seconds == pytest.approx(0.01)
    with pytest.raises(TympanError, match=r"d\.wav.*tympan pretext labels"):
        FrameLabels.from_file(tmp_path / "labels.npz", ["f0"], [paths[0], str(tmp_path / "d.wav")])
    with pytest.raises(TympanError, match="no label 'hnr'"):
        FrameLabels.from_file(tmp_path / "labels.npz", ["hnr"], paths)


def test_read_selection(tmp_path: Path) -> None:
    sel = tmp_path / "sel" / "weights.json"
    sel.parent.mkdir()
    (sel.parent / "labels.npz").write_bytes(b"")
    sel.write_text(json.dumps({"method": "sparsemax", "weights": {"f0": 0.75, "zcr": 0, "hnr": 0.25},
                               "ranking": ["f0", "hnr", "zcr"], "ci": {},
                               "settings": {"labels_file": "labels.npz"}}))
    weights, labels = read_selection(sel)
    assert weights == {"f0": 0.75, "zcr": 0.0, "hnr": 0.25}
    assert labels == str(sel.parent / "labels.npz")  # relative to the selection's folder
    sel.write_text(json.dumps({"weights": {"f0": -1}}))
    with pytest.raises(TympanError, match="f0"):
        read_selection(sel)
    with pytest.raises(TympanError, match="tympan pretext select"):
        read_selection(tmp_path / "none.json")


# -- losses ---------------------------------------------------------------------------------------


def test_weighted_workers_hand_computed() -> None:
    pred = torch.tensor([[[1.0, 0.0], [2.0, 4.0]]])  # [B=1, T=2, K=2]
    target = torch.tensor([[[0.0, 1.0], [4.0, 4.0]]])
    per = worker_l1(pred, target)
    assert torch.allclose(per, torch.tensor([1.5, 0.5]))  # (1 + 2) / 2 and (1 + 0) / 2
    loss, _ = weighted_workers(pred, target, torch.tensor([0.2, 2.0]))
    assert loss.item() == pytest.approx(0.2 * 1.5 + 2.0 * 0.5)
    # eq. 11 on top: MSE_mel ((1 - 0)^2 + (0 - 2)^2) / 2 = 2.5, MSE_mfcc 0
    mel, mel_t = torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[0.0], [2.0]]])
    total, parts = multitask_ssl_loss(mel, mel_t, mel, mel, pred, target, torch.tensor([0.2, 2.0]))
    assert parts["mse_mel"].item() == pytest.approx(2.5) and parts["mse_mfcc"].item() == 0.0
    assert total.item() == pytest.approx(2.5 + 1.3)
    only, parts = multitask_ssl_loss(mel, mel_t, mel, mel)
    assert only.item() == pytest.approx(2.5) and "workers" not in parts


def test_dct_matrix_is_the_orthonormal_dct_ii() -> None:
    x = torch.randn(5, 16, dtype=torch.float64)
    ref = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)[:, :6]
    got = x.float() @ dct_matrix(16, 6)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    full = dct_matrix(8, 8)
    assert torch.allclose(full.T @ full, torch.eye(8), atol=1e-6)


def test_worker_heads_equal_separate_mlps() -> None:
    torch.manual_seed(0)
    heads = WorkerHeads(6, 3, hidden_dim=4, num_layers=2)
    x = torch.randn(2, 5, 6)
    out = heads(x)
    assert out.shape == (2, 5, 3)
    for k in range(3):
        h = torch.nn.functional.leaky_relu(x @ heads.weights[0][k] + heads.biases[0][k], 0.01)
        ref = h @ heads.weights[1][k] + heads.biases[1][k]
        assert torch.allclose(out[..., k], ref.squeeze(-1), atol=1e-6)


# -- tasks ----------------------------------------------------------------------------------------

WEIGHTS = {"f0": 1.5, "zcr": 0.0, "loudness": 0.5}


def _recipe(name: str = "simclr", **over):
    base = {"model.width": 8, "augment.ops": ["white_noise"], "pretext.weights": WEIGHTS,
            "audio.sample_rate": 1600, "frontend.n_fft": 64, "frontend.hop_length": 16,
            "frontend.n_mels": 16}
    if name == "pase_quick":
        base = {**base, "model.options": {"channels": [4, 4], "lstm_layers": 1, "lstm_hidden": 4,
                                          "mlp_hidden": 8, "out_dim": 8},
                "tasks": [{"name": "pase", "objective": "pase", "head": {"hidden_dim": 8},
                           "params": {"n_mfcc": 5}}]}
        base.pop("augment.ops")
    return load_recipe(name, {**base, **over})


def _table(n_items: int = 4, frames_per_item: int = 20, k: int = 3, seed: int = 0) -> FrameLabels:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((n_items,), frames_per_item)
    return FrameLabels(
        names=tuple(WEIGHTS)[:k], frames=torch.randn(n_items * frames_per_item, k, generator=g),
        offsets=torch.arange(n_items) * frames_per_item, lengths=lengths, hop_seconds=0.01,
        mean=np.zeros(k), std=np.ones(k),
    )


def _views(module: PretrainModule, b: int = 4, samples: int = 160, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(b, samples, generator=g)
    views = module.views(wav, g)
    views.clean, views.index = wav, torch.arange(b)
    views.start = torch.tensor([0, 16, 40, 100])[:b]
    views.length = torch.full((b,), 320)
    return views


def test_workers_task_is_the_weighted_l1_of_its_heads() -> None:
    torch.manual_seed(0)
    module = PretrainModule(_recipe(tasks=[{"name": "workers", "objective": "pretext_workers"}]),
                            frame_labels=_table())
    task = module.tasks["workers"]
    assert isinstance(task, PretextWorkersTask) and task.names == tuple(WEIGHTS)
    views = _views(module)
    out = task(module.encoder, views)
    frames = module.encoder.frames(torch.cat([views.view1, views.view2]), "workers")
    target = resample_frames(
        _table().gather(views.index, views.start, views.length, 160, 1600), frames.shape[1]
    ).repeat(2, 1, 1)
    per = (task.label_heads(frames) - target).abs().mean(dim=(0, 1))
    assert out.loss.item() == pytest.approx(1.5 * per[0].item() + 0.5 * per[2].item(), rel=1e-5)
    assert out.logs["l1_zcr"].item() == pytest.approx(per[1].item(), rel=1e-5)
    # lambda = 0: the zcr worker adds nothing and gets no gradient
    out.loss.backward()
    w = task.label_heads.weights[0].grad
    assert w[1].abs().max() == 0 and w[0].abs().max() > 0 and w[2].abs().max() > 0
    table = _table()
    table.frames[:, 1] += 100.0  # zcr targets far off: the loss does not move
    task.use_labels(table)
    again = task(module.encoder, views)
    assert again.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert again.logs["l1_zcr"].item() > 50


def test_workers_share_the_backbone_pass_with_a_two_view_objective() -> None:
    recipe = _recipe(tasks=[
        {"name": "contrastive", "objective": "nt_xent", "head": {"hidden_dim": 8, "out_dim": 4}},
        {"name": "workers", "objective": "pretext_workers", "weight": 1.0},
    ])
    module = PretrainModule(recipe, frame_labels=_table())
    assert module.task_order == ["workers", "contrastive"]
    calls = []
    module.encoder.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = {"audio": torch.randn(4, 160), "index": torch.arange(4),
             "start": torch.zeros(4, dtype=torch.long), "length": torch.full((4,), 160)}
    module.log_dict = lambda *a, **k: None
    module.log = lambda *a, **k: None
    with mock.patch.object(module, "optimizers") as opt:
        opt.return_value.param_groups = [{"lr": 0.1}]
        total = module.training_step(batch, 0)
    assert calls == [8]  # one pass over both views of 4 clips serves both tasks
    assert torch.isfinite(total) and total.requires_grad


def test_pase_task_eq11_parts() -> None:
    torch.manual_seed(0)
    module = PretrainModule(_recipe("pase_quick"), frame_labels=_table()).eval()  # no dropout
    task = module.tasks["pase"]
    assert isinstance(task, PASETask)
    views = _views(module)
    assert torch.equal(views.view1, views.clean)  # no augmentation in the pase recipe
    out = task(module.encoder, views)
    frames = module.encoder.frames(views.view1, "pase")
    assert frames.shape[1] == 1 + 160 // 16
    logmel = module.encoder.frontend(views.clean)[:, 0].transpose(1, 2)  # [B, T, 16]
    mel_t = resample_frames(logmel, frames.shape[1])
    mse_mel = ((task.mel_head(frames) - mel_t) ** 2).mean()
    mfcc_t = torch.from_numpy(scipy.fft.dct(mel_t.detach().numpy(), type=2, norm="ortho",
                                            axis=-1)[..., :5])
    mse_mfcc = ((task.mfcc_head(frames) - mfcc_t) ** 2).mean()
    assert out.logs["mse_mel"].item() == pytest.approx(mse_mel.item(), rel=1e-5)
    assert out.logs["mse_mfcc"].item() == pytest.approx(mse_mfcc.item(), rel=1e-4)
    workers = 1.5 * out.logs["l1_f0"] + 0.0 * out.logs["l1_zcr"] + 0.5 * out.logs["l1_loudness"]
    assert out.loss.item() == pytest.approx(mse_mel.item() + mse_mfcc.item() + workers.item(),
                                            rel=1e-5)
    # without pretext weights: the PASE-like model with its mel and MFCC workers only
    plain = PretrainModule(_recipe("pase_quick", **{"pretext.weights": {}}))
    res = plain.tasks["pase"](plain.encoder, _views(plain))
    assert set(res.logs) >= {"mse_mel", "mse_mfcc"} and not any(k.startswith("l1_") for k in res.logs)


def test_task_errors() -> None:
    with pytest.raises(ConfigError, match="pretext.weights"):
        PretrainModule(_recipe(**{"pretext.weights": {},
                                  "tasks": [{"name": "w", "objective": "pretext_workers"}]}))
    with pytest.raises(ConfigError, match=r"tasks\[w\]\.params\.views"):
        PretrainModule(_recipe(tasks=[{"name": "w", "objective": "pretext_workers",
                                       "params": {"views": 3}}]))
    with pytest.raises(ConfigError, match="n_mfcc"):
        PretrainModule(_recipe("pase_quick", tasks=[
            {"name": "pase", "objective": "pase", "params": {"n_mfcc": 17}}]))
    with pytest.raises(ConfigError, match="pretext.weights.f0"):
        _recipe(**{"pretext.weights": {"f0": -0.5}})
    module = PretrainModule(_recipe(tasks=[{"name": "w", "objective": "pretext_workers"}]))
    views = _views(module)
    with pytest.raises(TympanError, match="--pretext-weights"):  # no labels table given
        module.tasks["w"](module.encoder, views)
    module.tasks["w"].use_labels(_table())
    views.start = None  # e.g. same-track pairs
    with pytest.raises(TympanError, match="same_track"):
        module.tasks["w"](module.encoder, views)
    with pytest.raises(TympanError, match="pretext.weights"):
        module.tasks["w"].use_labels(_table(k=2))
