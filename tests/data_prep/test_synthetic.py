"""The synthetic NYU-style generator: deterministic, consistent across modalities, genuinely cross-modal."""
from __future__ import annotations

import h5py
import numpy as np

from crossmodal.data.codecs import read_physical
from crossmodal.data.format import read_layout
from crossmodal.data.synthetic import CLASS_NAMES, SEG_CLASS_NAMES, generate


def test_layout_and_splits(synthetic_file):
    layout = read_layout(synthetic_file)
    assert set(layout.modalities) == {"rgb", "depth", "raw_depth"}
    assert layout.modalities["depth"].units == "m"
    assert layout.labels["label"].class_names == CLASS_NAMES and len(CLASS_NAMES) == 10
    assert layout.labels["seg"].class_names == SEG_CLASS_NAMES and len(SEG_CLASS_NAMES) == 13
    assert layout.splits["train"] + layout.splits["test"] == 48
    with h5py.File(synthetic_file, "r") as handle:
        train, test = handle["splits/train"][()], handle["splits/test"][()]
        assert not set(train) & set(test)
        depth, raw = read_physical(handle["modalities/depth"]), read_physical(handle["modalities/raw_depth"])
        assert depth.min() > 0 and depth.max() < 10
        holes = raw == 0
        assert 0 < holes.mean() < 0.3
        np.testing.assert_allclose(raw[~holes], depth[~holes], atol=0.25)  # sensor noise, not another scene
        seg, label = handle["labels/seg"][()], handle["labels/label"][()]
        # the main object's category is visible in its image: seg id = 3 + class id
        visible = [(seg[i] == 3 + label[i]).any() for i in range(len(label))]
        assert np.mean(visible) > 0.95


def test_deterministic_whatever_the_worker_count(tmp_path):
    generate(str(tmp_path / "one.h5"), num=40, size=24, seed=3, workers=1)
    generate(str(tmp_path / "two.h5"), num=40, size=24, seed=3, workers=2)
    generate(str(tmp_path / "other.h5"), num=40, size=24, seed=4, workers=1)
    with h5py.File(tmp_path / "one.h5", "r") as one, h5py.File(tmp_path / "two.h5", "r") as two, \
            h5py.File(tmp_path / "other.h5", "r") as other:
        for name in ("modalities/rgb", "modalities/raw_depth", "labels/seg", "labels/label", "splits/test"):
            np.testing.assert_array_equal(one[name][()], two[name][()])
        assert not np.array_equal(one["modalities/rgb"][()], other["modalities/rgb"][()])


def test_depth_edges_follow_label_edges(synthetic_file):
    """Object boundaries in the label map are depth discontinuities in the clean depth map."""
    with h5py.File(synthetic_file, "r") as handle:
        depth, seg = handle["modalities/depth"][:, :, :, 0], handle["labels/seg"][()]
    object_edge = (seg[:, :, 1:] >= 3) != (seg[:, :, :-1] >= 3)
    jump = np.abs(depth[:, :, 1:] - depth[:, :, :-1])
    assert np.median(jump[object_edge]) > 5 * np.median(jump[~object_edge])


def test_the_task_is_cross_modal(tmp_path):
    """Depth tells shapes apart but not the five same-shape cabinets; RGB tells the cabinets apart."""
    from sklearn.linear_model import LogisticRegression

    generate(str(tmp_path / "task.h5"), num=600, size=32, seed=5, workers=2)
    with h5py.File(tmp_path / "task.h5", "r") as handle:
        rgb = handle["modalities/rgb"][()].astype(np.float32) / 255
        depth = handle["modalities/depth"][()]
        labels = handle["labels/label"][()]
    pool = lambda x: x.reshape(len(x), 8, 4, 8, 4, -1).mean(axis=(2, 4)).reshape(len(x), -1)  # noqa: E731
    cabinets = labels >= 5
    scores = {}
    for name, features in (("rgb", pool(rgb)), ("depth", pool(depth))):
        features = (features - features[:450].mean(0)) / (features[:450].std(0) + 1e-6)
        model = LogisticRegression(max_iter=2000, C=0.1).fit(features[:450][cabinets[:450]],
                                                             labels[:450][cabinets[:450]])
        scores[name] = model.score(features[450:][cabinets[450:]], labels[450:][cabinets[450:]])
        group = LogisticRegression(max_iter=2000, C=0.1).fit(features[:450], cabinets[:450])
        scores[name + "_group"] = group.score(features[450:], cabinets[450:])
    assert scores["rgb"] > 0.6 and scores["depth"] < 0.4  # chance among five cabinets is 0.2
    assert scores["depth_group"] > 0.75  # shape is visible in depth


def _spawned_workers(pid: int) -> list[int]:
    """The generator's rendering processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    import os

    found = []
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except FileNotFoundError:  # the generator has already exited
        return []
    for child in children:
        try:
            command = open(f"/proc/{child}/cmdline", "rb").read()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(int(child))
    return found if os.path.isdir(f"/proc/{pid}") else []


def _generating(out, num: int, size: int):
    """``crossmodal prepare synthetic`` with 2 workers, started in a process, once both workers run:
    ``(process, worker pids)``."""
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "crossmodal", "prepare", "synthetic", "--out", str(out),
                                "--num", str(num), "--size", str(size), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_spawned_workers(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _spawned_workers(process.pid)
    if len(workers) < 2:
        process.kill()
        raise AssertionError(f"the generator did not start its 2 workers: {process.communicate()[1][-2000:]}")
    return process, workers


def test_a_worker_killed_mid_way_is_one_line_not_a_hang(tmp_path):
    import os
    import signal

    out = tmp_path / "scenes.h5"
    process, workers = _generating(out, 4000, 96)
    try:
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        _, stderr = process.communicate(timeout=60)  # multiprocessing.Pool waited here for ever
    finally:
        process.kill()
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and "a worker process rendering the scenes died" in lines[0] and str(out) in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file, no lock left


def test_ctrl_c_stops_the_workers_at_once_not_after_their_chunks(tmp_path):
    import os
    import signal
    import time

    # 64 scenes of 512 x 512 per chunk: tens of seconds each; waiting for the running chunks would show
    process, _ = _generating(tmp_path / "scenes.h5", 400, 512)
    try:
        time.sleep(1.0)  # the workers are rendering
        os.kill(process.pid, signal.SIGINT)  # to the parent alone
        started = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        seconds = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert seconds < 10, f"took {seconds:.1f} s to stop (the old pool waited for the running chunks: 34 s)"
    assert list(tmp_path.iterdir()) == []
