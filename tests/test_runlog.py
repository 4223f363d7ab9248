"""Step records read device scalars without stalling: at once on the CPU, one log interval later on CUDA."""
import pytest
import torch

from msf_fast.runlog import DeferredScalars


def test_cpu_records_complete_at_once():
    scalars = DeferredScalars(torch.device("cpu"))
    record = scalars.stage({"step": 10}, loss=torch.tensor(0.5), purity=torch.tensor(0.25))
    assert record == {"step": 10, "loss": 0.5, "purity": 0.25}
    assert scalars.flush() is None


@pytest.mark.cuda
def test_cuda_records_arrive_one_interval_later():
    scalars = DeferredScalars(torch.device("cuda"))
    assert scalars.stage({"step": 10}, loss=torch.tensor(0.5, device="cuda")) is None
    assert scalars.stage({"step": 20}, loss=torch.tensor(0.75, device="cuda")) == {"step": 10, "loss": 0.5}
    assert scalars.flush() == {"step": 20, "loss": 0.75} and scalars.flush() is None
