from __future__ import annotations

import pytest

from shared.config import DeviceSpec, default_compute_threads, format_size, parse_devices, parse_size
from shared.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "n"), [("512MiB", 512 << 20), ("2GiB", 2 << 30), ("1.5 GiB", 3 << 29), ("4096", 4096), ("1gb", 10**9)]
)
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "lots", "12 parsecs", "-1MiB"])
def test_parse_size_rejects_with_the_option_name(text: str) -> None:
    with pytest.raises(InvalidInput, match="--device-memory"):
        parse_size(text, "--device-memory")


def test_parse_devices() -> None:
    assert parse_devices("cpu:2") == (DeviceSpec("cpu", 0), DeviceSpec("cpu", 1))
    assert parse_devices("cpu") == (DeviceSpec("cpu", 0),)
    for bad in ("cpu:0", "tpu:1", "cpu:x"):
        with pytest.raises(InvalidInput, match="--devices"):
            parse_devices(bad)


def test_cuda_devices_fail_clearly_without_a_gpu() -> None:
    from gpuworker.backends import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidInput, match="no CUDA device"):
        parse_devices("cuda")


def test_compute_threads_leave_the_copy_thread_a_core() -> None:
    assert default_compute_threads(1, cores=2) == 1  # 1 compute + 1 copy
    assert default_compute_threads(2, cores=2) == 1
    assert default_compute_threads(1, cores=8) == 7
    assert default_compute_threads(4, cores=8) == 1
    assert format_size(512 << 20) == "512.0 MiB"
