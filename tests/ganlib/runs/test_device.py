"""ganlib.runs.device: batches that fit a GPU's memory, where float64 work runs, what ran out."""

import logging

import pytest
import torch

from ganlib.errors import DeviceMemoryError
from ganlib.runs.device import device_memory_detail, fitting_batches, float64_device, is_out_of_device_memory

CUDA_OOM = ("CUDA out of memory. Tried to allocate 9.00 GiB. GPU 1 has a total capacity of 23.64 GiB of which 1.2 GiB "
            "is free.")
MPS_OOM = "MPS backend out of memory (MPS allocated: 17.1 GB, other allocations: 1.2 GB, max allowed: 18.1 GB)."


def _runs_out_above(most: int, message: str):
    """work(start, stop) as on a device whose memory holds ``most`` images at once (CUDA's or MPS's error)."""
    def work(start, stop):
        if stop - start > most:
            raise (torch.cuda.OutOfMemoryError if message.startswith("CUDA") else RuntimeError)(message)
        return list(range(start, stop))
    return work


@pytest.mark.parametrize("message", [CUDA_OOM, MPS_OOM])
def test_a_batch_that_does_not_fit_is_halved_until_it_does(caplog, message):
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        batches = list(fitting_batches(23, 10, _runs_out_above(3, message), "generating 23 images", "--batch-size {n}"))
    assert [i for batch in batches for i in batch] == list(range(23)) and max(map(len, batches)) == 2
    where = "cuda:1, asking for 9.00 GiB more" if message is CUDA_OOM else "mps"
    assert [r.getMessage() for r in caplog.records] == [
        f"generating 23 images: out of memory on {where} in a batch of {n}; going on in batches of {n // 2} "
        f"(to start there: --batch-size {n // 2})" for n in (10, 5)]


def test_the_batch_that_failed_is_halved_and_what_fitted_is_kept_for_the_next_call(caplog):
    """Fewer images than the batch size: the batch that ran is halved (100 -> 50), not the size asked for (500)."""
    fitted: dict[str, int] = {}
    sizes: list[int] = []

    def work(start, stop):
        sizes.append(stop - start)
        return _runs_out_above(60, CUDA_OOM)(start, stop)

    with caplog.at_level(logging.WARNING, logger="ganlib"):
        assert sum(map(len, fitting_batches(100, 500, work, "evaluation", "--batch-size {n}", fitted))) == 100
        assert sizes == [100, 50, 50] and fitted == {"batch_size": 50}
        sizes.clear()
        assert sum(map(len, fitting_batches(100, 500, work, "evaluation", "--batch-size {n}", fitted))) == 100
        assert sizes == [50, 50]  # the next seed or checkpoint starts where the last one fitted
    assert [r.getMessage().split(" (to")[0] for r in caplog.records] == [
        "evaluation: out of memory on cuda:1, asking for 9.00 GiB more in a batch of 100; going on in batches of 50"]


def test_an_error_in_the_consumer_of_a_batch_is_not_taken_for_the_batchs(caplog):
    batches = fitting_batches(10, 4, _runs_out_above(4, CUDA_OOM), "x", "--batch-size {n}")
    next(batches)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        batches.throw(torch.cuda.OutOfMemoryError(CUDA_OOM))  # raised where the consumer uses the batch
    assert caplog.records == []


def test_one_image_that_does_not_fit_is_one_line_and_another_error_is_raised_as_it_is():
    with pytest.raises(DeviceMemoryError, match=r"^evaluation: step 3 samples: out of memory on cuda:1, asking "
                                                r"for 9.00 GiB more even one image at a time: free the GPU .* "
                                                r"--device cpu$"):
        list(fitting_batches(5, 4, _runs_out_above(0, CUDA_OOM), "evaluation: step 3 samples", "--batch-size {n}"))

    def bug(start, stop):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="^a bug$"):
        list(fitting_batches(5, 4, bug, "x", "--batch-size {n}"))


def test_what_counts_as_out_of_device_memory_and_where_float64_runs():
    assert is_out_of_device_memory(torch.cuda.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_device_memory(RuntimeError(MPS_OOM))
    assert not is_out_of_device_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_device_memory(MemoryError())  # the host's: not a batch size the GPU can fix
    assert device_memory_detail(torch.cuda.OutOfMemoryError("CUDA out of memory.")) == "cuda"
    assert device_memory_detail(RuntimeError(MPS_OOM), torch.device("mps")) == "mps"
    assert float64_device("mps") == torch.device("cpu") and float64_device("cuda:1") == torch.device("cuda", 1)
    assert float64_device(torch.device("cpu")) == torch.device("cpu")
