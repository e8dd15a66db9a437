"""GPU fine-tuning throughput: transferlab (TransferModule + Lightning Trainer) against a plain PyTorch loop.

resnet50 and vit_small_patch16_224 (random init) at 224 px, batch 128, bf16-mixed autocast, AdamW, full
fine-tuning, eager and torch.compile'd. Both sides train on the same batches already on the GPU, so the figure is
the model's and the framework's, not the loader's (transferlab reports the loader's rate separately in every run).
For each: images per second over the timed steps (after warm-up, synchronised), peak GPU memory, and the model
FLOP utilisation: 3 x forward FLOPs (forward + backward) per image x images/s / the GPU's peak bf16 FLOP/s.
Needs a CUDA GPU; run from the repo root:
  python benchmarks/gpu_throughput.py [--batch 128] [--warmup 20] [--steps 50] [--peak-tflops 989]
(989: H100 SXM dense bf16; 756 for H100 PCIe.)
"""

from __future__ import annotations

import argparse
import functools
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from transferlab.backbones import create_backbone
from transferlab.heads import LinearHead
from transferlab.module import TransferModule

MODELS = ("resnet50", "vit_small_patch16_224")
CLASSES = 100


def batches(args) -> DataLoader:
    """warmup + steps batches, already on the GPU (batch_size=None: the loader yields them as they are)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, device="cuda", generator=g)
    labels = torch.randint(0, CLASSES, (args.batch,), device="cuda", generator=g)
    return DataLoader([(images, labels)] * (args.warmup + args.steps), batch_size=None)


def forward_flops(name: str) -> int:
    model = create_backbone(name).model
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops()


def plain(name: str, compile_: bool, data, args) -> float:
    """The loop a user writes by hand; returns images/s over the timed steps."""
    backbone = create_backbone(name)
    model = nn.Sequential(backbone.model, nn.Linear(backbone.num_features, CLASSES)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compile_ else model
    start = 0.0
    for i, (images, labels) in enumerate(data):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(step_model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - start)


class StepClock(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.end = time.perf_counter()


def transferlab(name: str, compile_: bool, data, args) -> float:
    backbone = create_backbone(name)
    module = TransferModule(
        backbone,
        LinearHead(backbone.num_features, CLASSES),
        class_names=[str(i) for i in range(CLASSES)],
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )
    if compile_:
        module.compile()  # what trainer.compile=true does
    clock = StepClock(args.warmup)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=len(data),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=data)
    return args.steps * args.batch / (clock.end - clock.start)


def measure(run, name: str, compile_: bool, data, args) -> tuple[float, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    rate = run(name, compile_, data, args)
    return rate, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU; none is visible here")
    torch.backends.cudnn.benchmark = True
    data = batches(args)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, bf16-mixed")
    print("| model | compile | plain img/s | transferlab img/s | ratio | peak GiB (plain / transferlab) | MFU |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for name in MODELS:
        train_flops = 3 * forward_flops(name)
        for compile_ in (False, True):
            plain_rate, plain_mem = measure(plain, name, compile_, data, args)
            ours_rate, ours_mem = measure(transferlab, name, compile_, data, args)
            mfu = ours_rate * train_flops / (args.peak_tflops * 1e12)
            ratios.append(ours_rate / plain_rate)
            print(
                f"| {name} | {compile_} | {plain_rate:.0f} | {ours_rate:.0f} | {ratios[-1]:.3f} | "
                f"{plain_mem:.1f} / {ours_mem:.1f} | {100 * mfu:.1f}% |"
            )
    print(f"\nlowest transferlab / plain throughput ratio: {min(ratios):.3f}")


if __name__ == "__main__":
    main()
