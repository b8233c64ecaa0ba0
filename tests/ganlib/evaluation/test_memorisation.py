"""ganlib.evaluation.memorisation: nearest training images, the fraction closer than held-out images, the pairs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ganlib.evaluation.memorisation import memorisation_scores, nearest_training, pixel_vectors, save_closest_pairs


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_nearest_training_finds_copies_at_distance_zero_and_measures_exactly():
    training = _images(50, 0)
    copies = training[[7, 3, 41]]
    distances, index = nearest_training(pixel_vectors(copies), pixel_vectors(training))
    assert index.tolist() == [7, 3, 41] and distances.tolist() == [0.0, 0.0, 0.0]
    other = _images(5, 1)
    distances, index = nearest_training(pixel_vectors(other), pixel_vectors(training))
    exact = (other.double().flatten(1)[:, None] - training.double().flatten(1)[None]).norm(dim=2)
    assert distances.dtype == torch.float64 and torch.equal(index, exact.argmin(dim=1))
    assert torch.allclose(distances, exact.min(dim=1).values, rtol=0, atol=1e-9)


def test_a_copying_generator_is_caught_and_a_new_sample_set_is_not():
    training, held_out = _images(200, 2), _images(200, 3)
    real_distances, _ = nearest_training(pixel_vectors(held_out), pixel_vectors(training))
    copied = memorisation_scores(nearest_training(pixel_vectors(training[:100]), pixel_vectors(training))[0],
                                 real_distances)
    assert copied["memorisation_fraction"] == 1.0 and copied["memorisation_median_distance"] == 0.0
    fresh = memorisation_scores(nearest_training(pixel_vectors(_images(200, 4)), pixel_vectors(training))[0],
                                real_distances)
    assert 0.3 < fresh["memorisation_fraction"] < 0.7  # new images of the same kind: about half
    assert fresh["memorisation_real_median_distance"] == float(real_distances.median())


def test_closest_pairs_picture_shows_sixteen_pairs(tmp_path):
    training = _images(40, 5)
    generated = training[:20].float() / 127.5 - 1
    distances, index = nearest_training(pixel_vectors(training[:20]), pixel_vectors(training))
    path = save_closest_pairs(generated, training, distances, index, tmp_path / "eval" / "pairs.png", "step 1")
    with Image.open(path) as picture:
        # 8 cells (4 pairs) across, 4 rows, each 8 px enlarged x7 with 2 px padding, plus the caption strip.
        assert picture.width == 8 * (8 * 7 + 2 * 7) + 2 * 7 and picture.height > 4 * 8 * 7


def test_the_picture_of_uint8_samples_is_the_picture_of_the_float_ones(tmp_path):
    """Evaluation keeps only the uint8 samples; their picture must be the one the float samples made."""
    training = _images(40, 5)
    generated = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2.2 - 1.1  # some clamped
    quantised = ((generated.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    distances, index = nearest_training(pixel_vectors(quantised), pixel_vectors(training))
    from_float = save_closest_pairs(generated, training, distances, index, tmp_path / "float.png", "step 1")
    from_uint8 = save_closest_pairs(quantised, training, distances, index, tmp_path / "uint8.png", "step 1")
    assert from_float.read_bytes() == from_uint8.read_bytes()


def test_on_apples_mps_the_search_runs_on_the_cpu():
    """MPS has no float64 (the search keeps a float64 running minimum): asked for MPS, it searches on the CPU.
    (Where there is no MPS, as here, anything sent there fails: the test shows nothing is.)"""
    query, training = pixel_vectors(_images(30, 1)), pixel_vectors(_images(50, 2))
    (cpu_distances, cpu_index), (mps_distances, mps_index) = (nearest_training(query, training, device)
                                                              for device in ("cpu", torch.device("mps")))
    assert torch.equal(cpu_distances, mps_distances) and torch.equal(cpu_index, mps_index)


def _float_search(query: torch.Tensor, training: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The search as it was, on float32 copies of every vector (what the uint8 search must reproduce)."""
    from ganlib.evaluation.metrics import nearest_neighbours

    q, t = query.to(torch.float32), training.to(torch.float32)
    _, index = nearest_neighbours(q, t)
    return (q.double() - t[index].double()).norm(dim=1), index


def test_pixel_vectors_stay_uint8_and_the_search_in_parts_gives_the_same_pairs(monkeypatch):
    """Kept uint8 (a quarter of the memory: 10,000 images of 256 px were 7.9 GB a side in float32) and searched
    against at most SEARCH_BYTES of float32 training vectors at a time: the same pairs and distances, bit for
    bit, whether the training vectors fit one part (the same arithmetic as before) or take several."""
    from ganlib.evaluation import memorisation

    training = torch.randint(0, 256, (300, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    query = torch.randint(0, 256, (70, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    query[5], query[9] = training[123], training[299]  # copies: distance 0, found in a later part too
    q, t = pixel_vectors(query), pixel_vectors(training)
    assert q.dtype == torch.uint8 and q.shape == (70, 768)
    expected = _float_search(q, t)
    for per_part in (300, 64, 7, 1):  # one part; several; one training vector at a time
        monkeypatch.setattr(memorisation, "SEARCH_BYTES", per_part * 4 * 768)
        distances, index = nearest_training(q, t)
        assert torch.equal(index, expected[1]) and torch.equal(distances, expected[0]), per_part
    monkeypatch.setattr(memorisation, "_rows_per_block", lambda columns: 3)  # many query blocks, in both stages
    for per_part in (300, 7):
        monkeypatch.setattr(memorisation, "SEARCH_BYTES", per_part * 4 * 768)
        distances, index = nearest_training(q, t)
        assert torch.equal(index, expected[1]) and torch.equal(distances, expected[0]), per_part
    assert index[5] == 123 and index[9] == 299 and distances[5] == distances[9] == 0
    ties = torch.cat([t[:4], t[:4]])  # the same vectors twice: the lower index wins, in one part or across two
    monkeypatch.setattr(memorisation, "SEARCH_BYTES", 4 * 4 * 768)
    assert nearest_training(t[:4], ties)[1].tolist() == [0, 1, 2, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_pixel_search_on_a_gpu_finds_the_pairs_the_cpu_finds():
    training = torch.randint(0, 256, (500, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    query = torch.randint(0, 256, (200, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    q, t = pixel_vectors(query), pixel_vectors(training)
    on_cpu, on_gpu = nearest_training(q, t), nearest_training(q, t, device="cuda")
    assert torch.equal(on_gpu[1], on_cpu[1]) and on_gpu[0].device.type == "cpu"
    torch.testing.assert_close(on_gpu[0], on_cpu[0], rtol=0, atol=1e-9)  # exact float64 recomputation on both
