"""The backbones a run may name: torchvision's ResNet family. Torch-free, so that the config checks `model.arch`
before torch loads."""

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")


def arch_name(text: str) -> str:
    """An --arch option's type: one of RESNETS (argparse tells anything else at once, before torch loads)."""
    if text not in RESNETS:
        import argparse
        raise argparse.ArgumentTypeError(f"unknown arch {text!r}; expected one of {', '.join(RESNETS)}")
    return text
