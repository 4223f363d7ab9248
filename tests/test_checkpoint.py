"""Atomic checkpoints, exact resume, import of original MSF checkpoints, backbone export."""
import argparse
from pathlib import Path

import pytest
import torch
import torchvision

from msf_fast import checkpoint as ckpt
from msf_fast import export
from msf_fast.config import load_config
from msf_fast.model import MSF
from msf_fast.trainer import Trainer
from msf_fast.reference import OriginalMeanShift, data_parallel_state_dict


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.atomic_save({"step": 1}, path)

    def crash(obj, handle):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def run_config(root, folder, max_steps, resume=""):
    args = [f"--data.train_path={root / 'train'}", "--model.arch=resnet18", "--data.resolution=32",
            "--train.batch_size=8", "--msf.bank_size=32", "--train.epochs=2", "--data.workers=0",
            f"--train.max_steps={max_steps}", f"--logging.folder={folder}", "--logging.progress=0",
            "--eval.knn_final=0", "--train.threads=1"]
    if resume:
        args.append(f"--train.resume={resume}")
    return load_config(args)


def test_resume_reproduces_an_uninterrupted_run(tiny_imagefolder, tmp_path):
    # 96 images / batch 8 = 12 steps per epoch: stop at 9 (mid-epoch), resume to 18 (crossing an epoch).
    straight = Trainer(run_config(tiny_imagefolder, tmp_path / "a", 18))
    straight.train()
    first = Trainer(run_config(tiny_imagefolder, tmp_path / "b", 9))
    first.train()
    resumed = Trainer(run_config(tiny_imagefolder, tmp_path / "b", 18, resume=first.checkpoints.latest))
    assert resumed.step == 9
    resumed.train()
    assert resumed.step == straight.step == 18
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    state_a, state_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for key in state_a["state"]:
        assert torch.equal(state_a["state"][key]["momentum_buffer"], state_b["state"][key]["momentum_buffer"])


def test_checkpoint_holds_the_training_state(tiny_imagefolder, tmp_path):
    trainer = Trainer(run_config(tiny_imagefolder, tmp_path, 3))
    trainer.train()
    state = ckpt.read_checkpoint(trainer.checkpoints.latest).content
    assert {"model", "optimizer", "scaler", "epoch", "step", "rng", "config", "model_args"} <= set(state)
    assert state["step"] == 3 and state["config"]["msf"]["bank_size"] == 32
    assert {"bank.embeddings", "bank.labels", "bank.pointer", "online.conv1.weight", "target.fc.3.weight",
            "predictor.0.weight"} <= set(state["model"])
    assert int(state["model"]["bank.pointer"]) == 24


def save_original(tmp_path, model, data_parallel: bool):
    state = data_parallel_state_dict(model) if data_parallel else model.state_dict()
    path = tmp_path / f"original_{data_parallel}.pth"
    opt = argparse.Namespace(topk=3, momentum=0.995, arch="resnet18")
    torch.save({"opt": opt, "state_dict": state, "optimizer": {}, "epoch": 10}, path)
    return path


@pytest.mark.parametrize("data_parallel", [False, True])
def test_load_original_checkpoint(tmp_path, data_parallel):
    torch.manual_seed(0)
    original = OriginalMeanShift("resnet18", mem_bank_size=64, topk=3)
    original.queue_ptr[0] = 16
    original.labels[:16] = 4
    with torch.no_grad():
        for p in original.encoder_q.parameters():  # online and target differ in a real checkpoint
            p.add_(0.01)
    model = ckpt.read_checkpoint(save_original(tmp_path, original, data_parallel)).model()
    assert (model.arch, model.topk, model.momentum, model.bank.size, model.proj_dim) == ("resnet18", 3, 0.995, 64, 128)
    pairs = [(original.encoder_q, model.online), (original.encoder_t, model.target),
             (original.predict_q, model.predictor)]
    for theirs, ours in pairs:
        for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values()):
            assert torch.equal(a, b), name
    assert torch.equal(model.bank.embeddings, original.queue)
    assert torch.equal(model.bank.labels, original.labels)
    assert model.bank._pointer == 16
    # the imported model computes the original's loss on the same inputs (EMA first, as the original does)
    original.eval(), model.eval()
    online, target, labels = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.arange(4)
    loss_a, purity_a = original(online, target, labels)
    from msf_fast.ema import ForeachEMA
    ForeachEMA(model.online, model.target).update(0.99)
    out = model(online, target, labels)
    torch.testing.assert_close(out.loss, loss_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.purity, purity_a)


@pytest.mark.parametrize("arch", ["resnet50", "resnet34", "wide_resnet50_2", "resnext50_32x4d", "resnet101"])
def test_infer_arch_from_tensors(arch):
    state = {f"encoder_q.{k}": v for k, v in torchvision.models.__dict__[arch]().state_dict().items()}
    assert ckpt.infer_arch(state) == (arch, False)


def test_export_backbone_loads_into_torchvision(tmp_path, tiny_imagefolder):
    torch.manual_seed(0)
    original = OriginalMeanShift("resnet18", mem_bank_size=64)
    sources = {"original": save_original(tmp_path, original, True)}
    trainer = Trainer(run_config(tiny_imagefolder, tmp_path / "run", 1))
    trainer.train()
    sources["ours"] = trainer.checkpoints.latest
    for name, source in sources.items():
        out = tmp_path / f"{name}.pth"
        assert export.main([str(source), str(out)]) == 0
        net = torchvision.models.resnet18()
        missing, unexpected = net.load_state_dict(torch.load(out), strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
        model = ckpt.read_checkpoint(source).model()
        assert torch.equal(net.layer4[1].conv2.weight, model.online.layer4[1].conv2.weight)
        assert export.main([str(source), str(out)]) == 2  # refuses to overwrite (a user mistake: exit 2)
        assert export.main([str(source), str(out), "--overwrite", "--num-classes", "10"]) == 0
        torchvision.models.resnet18(num_classes=10).load_state_dict(torch.load(out))  # strict


def test_export_reports_a_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert export.main([str(bad), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert "bad.pth" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pth").exists()


def test_msf_rejects_topk_beyond_bank():
    with pytest.raises(ValueError, match="topk"):
        MSF(arch="resnet18", bank_size=4, topk=5)


def test_compiling_keeps_parameter_names_and_checkpoints():
    from msf_fast.model import MSF
    from msf_fast.trainer import compile_encoders

    model = MSF("resnet18", bank_size=64, topk=2, small_input=True)
    names = list(model.state_dict())
    compile_encoders(model)
    assert list(model.state_dict()) == names  # in-place compile: checkpoints and the EMA's lists still match
    assert all(module._compiled_call_impl is not None for module in (model.online, model.predictor, model.target))


@pytest.mark.parametrize("content, kind, label", [
    ({"epoch": 3, "step": 36, "steps_per_epoch": 12}, ckpt.OURS, "epoch 3"),
    ({"epoch": 0, "step": 5, "steps_per_epoch": 12}, ckpt.OURS, "epoch 0, step 5"),  # was "epoch 0", as epoch_0000
    ({"epoch": 0, "step": 12_345, "steps_per_epoch": 20_000}, ckpt.OURS, "epoch 0, step 12,345"),
    ({"epoch": 199}, ckpt.ORIGINAL, "epoch 199"),
    ({}, ckpt.BACKBONE, "backbone")])
def test_a_figure_panel_names_a_checkpoint_saved_mid_epoch_by_its_step(content, kind, label):
    assert ckpt.Checkpoint(Path("runs/x/backbone.pth"), content, kind).label == label
