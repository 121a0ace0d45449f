import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _fp32_on_cpu():
    """The suite runs in fp32: ``--amp auto`` would switch to bf16 on CPUs that run it natively (a measured
    verdict, see ``unetkit.device.cpu_has_native_bf16``), and tests comparing exact numbers between runs or
    machines must not silently change with the CPU. Session-wide (module fixtures that train included, and
    subprocesses through the environment); a test opts in with ``monkeypatch.setenv("UNETKIT_CPU_BF16", "1")``
    (or ``delenv`` to measure)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNETKIT_CPU_BF16", "0")
        yield


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is as fast, and immune to OpenMP stalls when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
