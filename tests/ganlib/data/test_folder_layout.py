"""Issue #22 item 14: a folder dataset says what it took and what it did not, in the manifest and one line.

Before: one class sub-folder became a labelled dataset of one class (every domain metric NaN, one
warning); a symlinked folder silently became a class; top-level images were skipped with a line
saying they "could not be read"."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ganlib.config import DataConfig
from ganlib.data.store import load_store, prepare_dataset
from ganlib.evaluation.evaluate import evaluate_run
from ganlib.training.loop import train


def prepare(tmp_path, root, **spec):
    messages: list[str] = []
    path = prepare_dataset(DataConfig(dataset="folder", data_root=root, image_size=32, **spec), tmp_path / "out",
                           log=messages.append)
    return load_store(path), [m for m in messages if m.startswith(f"dataset: folder {root}: ")]


def test_one_class_sub_folder_is_read_as_unlabelled_and_the_line_says_so(tmp_path, class_folder):
    root = tmp_path / "only"
    root.mkdir()
    (class_folder / "cat").rename(root / "cat")
    store, lines = prepare(tmp_path, root)
    m = store.manifest
    assert store.labels is None and m["num_classes"] == 0 and m["class_names"] is None and m["count"] == 6
    assert m["source"]["layout"] == "one class sub-folder"
    assert lines == [f"dataset: folder {root}: took 6 image files of its one class sub-folder 'cat' as unlabelled "
                     "images (one class gives no labels to learn or score by: evaluation reads the self-supervised "
                     "ssl_* space); not taken: nothing (manifest.json: source)"]
    assert m["source"]["summary"] == lines[0].removeprefix("dataset: ")
    # Naming the one class keeps its label, by request (evaluation then reads the ssl_* space too).
    store, _ = prepare(tmp_path / "named", root, classes=["cat"])
    assert store.manifest["class_names"] == ["cat"] and store.labels.tolist() == [0] * 6


def test_the_line_and_the_manifest_name_top_level_images_links_and_other_files(tmp_path, class_folder, make):
    make.save(make.pattern(32, 32, 3, 1), class_folder / "loose.png")
    (class_folder / "notes.txt").write_text("not an image")
    birds = tmp_path / "elsewhere" / "bird"
    for i in range(3):
        make.save(make.pattern(32, 32, 3, 30 + i), birds / f"b{i}.png")
    (class_folder / "bird").symlink_to(birds, target_is_directory=True)     # followed, and said
    (class_folder / "kitten").symlink_to(class_folder / "cat", target_is_directory=True)  # a class twice
    (class_folder / "all").symlink_to(class_folder, target_is_directory=True)  # data_root itself
    (class_folder / "gone").symlink_to(tmp_path / "missing", target_is_directory=True)
    store, lines = prepare(tmp_path, class_folder)
    m = store.manifest
    assert m["class_names"] == ["bird", "cat", "dog"] and m["count"] == 13
    assert m["source"]["symlinked_class_folders"] == {"bird": str(birds.resolve())}
    assert [(e["path"], e["reason"].split(",")[0]) for e in m["source"]["not_taken"]] == [
        ("all", f"a symlink to {class_folder.resolve()}"),
        ("kitten", "a symlink into class folder 'cat' (taken already: its images would count twice); not followed"),
        ("gone", "a symlink whose target does not exist")]
    assert [s["file"] for s in m["skipped"]] == ["loose.png"]
    assert len(lines) == 1
    line = lines[0]
    assert "took 13 image files in 3 classes, one per sub-folder: bird (3), cat (6), dog (4)" in line
    assert f"followed symlinked class folders bird -> {birds.resolve()}" in line
    assert ("not taken: 1 image files at the top level, outside the class sub-folders (e.g. loose.png; listed "
            "under 'skipped')") in line
    assert "kitten (a symlink into class folder 'cat'" in line and "gone (a symlink whose target" in line
    assert "1 files that are not images (e.g. notes.txt)" in line


def test_a_one_class_folder_run_scores_finite_numbers_in_the_self_supervised_space(tiny, tmp_path):
    """Before: the one class was a label, so the run 'succeeded' with every metric NaN."""
    root = tmp_path / "shapes" / "squares"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(300):
        image = np.full((32, 32, 3), 20, np.uint8)
        y, x = rng.integers(0, 20, 2)
        image[y: y + 12, x: x + 12] = rng.integers(60, 255, 3)
        Image.fromarray(image).save(root / f"img{i:03d}.png")
    cfg = tiny(run_id="one", data__dataset="folder", data__data_root=str(root.parent), data__image_size=32)
    store = prepare_dataset(cfg.data, cfg.out)
    assert json.loads((store / "manifest.json").read_text())["num_classes"] == 0
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert np.isfinite(table[["ssl_fd", "ssl_kid_mean", "ssl_precision", "ssl_recall"]].to_numpy()).all()
    assert (table["select_metric"] == "ssl_fd").all() and table["best"].sum() == 1
