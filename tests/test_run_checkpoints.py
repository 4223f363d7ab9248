"""When and where a run writes its checkpoints: latest.pt once per step at most, epoch snapshots that keep their
bytes after latest.pt moves on, nothing on a rank that does not write, and only our checkpoints to resume from."""
import torch
import pytest

from msf_fast.checkpoint import atomic_save
from msf_fast.run_checkpoints import RunCheckpoints, read_training_state


class States:
    """A state function that counts its calls and records the step it was asked at."""

    def __init__(self):
        self.calls = 0
        self.step = 0

    def __call__(self):
        self.calls += 1
        return {"format": "msf-fast", "step": self.step}


def test_latest_is_written_once_per_step(tmp_path):
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=0), States()
    assert checkpoints.save(3, states) == tmp_path / "checkpoints" / "latest.pt"
    checkpoints.save(3, states)
    assert states.calls == 1
    states.step = 4
    checkpoints.save(4, states)
    assert states.calls == 2 and torch.load(checkpoints.latest)["step"] == 4


def test_epoch_ends_follow_the_intervals_and_snapshots_keep_their_bytes(tmp_path):
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=2, snapshot_every=3), States()
    checkpoints.save(0, states, snapshot_epoch=0)
    assert torch.load(checkpoints.snapshot_path(0))["step"] == 0
    written = {}
    for epoch in range(1, 7):
        states.step = 10 * epoch
        before = states.calls
        if checkpoints.due_at_epoch_end(epoch):
            checkpoints.save(states.step, states, epoch if checkpoints.snapshot_due(epoch) else None)
        written[epoch] = states.calls - before
    assert written == {1: 0, 2: 1, 3: 1, 4: 1, 5: 0, 6: 1}  # every 2nd epoch, and the snapshots of 3 and 6
    names = sorted(path.name for path in checkpoints.folder.iterdir())
    assert names == ["epoch_0000.pt", "epoch_0003.pt", "epoch_0006.pt", "latest.pt", "previous.pt"]
    assert torch.load(checkpoints.snapshot_path(3))["step"] == 30  # latest.pt was replaced since
    assert torch.load(checkpoints.latest)["step"] == 60 and torch.load(checkpoints.previous)["step"] == 40


def test_a_rank_that_does_not_write_writes_nothing(tmp_path):
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=1, writer=False), States()
    assert checkpoints.save(0, states, snapshot_epoch=0) is None
    assert checkpoints.save(5, states) is None and states.calls == 0 and not (tmp_path / "checkpoints").exists()


def test_only_a_training_checkpoint_can_be_resumed(tmp_path):
    atomic_save({"conv1.weight": torch.zeros(1)}, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="backbone.pth: a torchvision backbone .as msf_fast.export writes., not an "
                                         "msf-fast training checkpoint: it holds no heads, bank or optimizer"):
        read_training_state(tmp_path / "backbone.pth", "cpu")
    # any dict of tensors was taken for a backbone
    atomic_save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: a torch file holding a dict \(a\), neither an msf-fast nor an "
                                         "original MSF checkpoint nor a torchvision backbone"):
        read_training_state(tmp_path / "other.pt", "cpu")
    atomic_save({"state_dict": {"encoder_q.conv1.weight": torch.zeros(1)}}, tmp_path / "original.pth")
    with pytest.raises(ValueError, match="original.pth: a checkpoint of the original MSF code, not an msf-fast"):
        read_training_state(tmp_path / "original.pth", "cpu")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: .*not"):
        read_training_state(tmp_path / "notes.txt", "cpu")


def test_after_a_fallback_the_next_save_keeps_the_good_previous(tmp_path):
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=0), States()
    for step in (10, 20):
        states.step = step
        checkpoints.save(step, states)
    with open(checkpoints.latest, "r+b") as handle:
        handle.truncate(100)
    warnings = []
    resumed = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=0)
    path, state = resumed.resumable("cpu", warnings.append)
    assert (path, state["step"]) == (resumed.previous, 10) and "kept until a new latest.pt" in warnings[0]
    for step in (11, 12):  # the damaged latest.pt must never become previous.pt
        states.step = step
        resumed.save(step, states)
        assert torch.load(resumed.previous)["step"] == {11: 10, 12: 11}[step]
    assert torch.load(resumed.latest)["step"] == 12


def test_a_second_ctrl_c_during_a_save_waits_for_the_files(tmp_path, monkeypatch):
    """Raised inside torch.save it read as a failed write (exit 1); between the renames it left .partial files."""
    import os
    import signal
    from msf_fast import run_checkpoints

    def interrupted_save(content, path):
        os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt at the next bytecode
        atomic_save(content, path)
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=1), States()
    states.step = 1
    checkpoints.save(1, states)
    states.step = 2
    monkeypatch.setattr(run_checkpoints, "atomic_save", interrupted_save)
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoints.save(2, states, snapshot_epoch=2)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    assert torch.load(checkpoints.latest)["step"] == 2 and torch.load(checkpoints.previous)["step"] == 1
    assert torch.load(checkpoints.snapshot_path(2))["step"] == 2
    assert sorted(path.name for path in checkpoints.folder.iterdir()) == ["epoch_0002.pt", "latest.pt", "previous.pt"]


def test_a_snapshot_already_linked_to_latest_leaves_no_temporary_file(tmp_path):
    """Resumed from the step-0 checkpoint, the run linked latest.pt to epoch_0000.pt again, the same file: the
    rename onto it did nothing and left .epoch_0000.pt.partial-PID in the folder."""
    checkpoints, states = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=1), States()
    checkpoints.save(0, states, snapshot_epoch=0)
    resumed = RunCheckpoints(tmp_path, checkpoint_every=1, snapshot_every=1)
    resumed.saved_step = 0  # resumed from latest.pt at step 0
    resumed.save(0, states, snapshot_epoch=0)
    assert sorted(path.name for path in checkpoints.folder.iterdir()) == ["epoch_0000.pt", "latest.pt"]
