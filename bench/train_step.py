"""Times one UNet3D training step (forward, loss, backward, Adam update) in PyTorch eager.

The peer of voxel-trainer's `trainer/examples/bench_train_step.rs`: the same network, loss,
optimizer, patch and batch. `bench/train_step.sh` runs both and prints them side by side. The
result is one machine-readable line on stdout:

    pytorch fp32 median_ms=... min_ms=... max_ms=... warmup=3 steps=10 threads=2 parameters=... loss=...
"""

import argparse
import contextlib
import statistics
import time
import warnings

with warnings.catch_warnings():
    # torch warns on import when NumPy is absent; nothing here needs NumPy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch
    import torch.nn.functional as F
    from torch import nn

# The benchmark's network: 16/32/64 channels and a 128-channel bottleneck.
CHANNELS = (16, 32, 64, 128)
CLASSES = 3
IMAGE_CHANNELS = 1
NORM_GROUPS = 4
LEAKY_RELU_SLOPE = 0.01
LEARNING_RATE = 1e-3
DICE_WEIGHT = 0.5
# Keeps the Dice ratio finite for a structure absent from the whole batch.
DICE_SMOOTHING = 1e-5


class Block(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by GroupNorm and LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        layers = []
        for channels in (in_channels, out_channels):
            layers += [
                # GroupNorm's shift makes a convolution bias redundant.
                nn.Conv3d(channels, out_channels, 3, padding=1, bias=False),
                nn.GroupNorm(NORM_GROUPS, out_channels),
                nn.LeakyReLU(LEAKY_RELU_SLOPE),
            ]
        super().__init__(*layers)


class UNet3d(nn.Module):
    """Max-pool down, transposed convolution up, skips concatenated after the upsampled map."""

    def __init__(self):
        super().__init__()
        widths = [IMAGE_CHANNELS, *CHANNELS]
        self.encoder = nn.ModuleList(Block(i, o) for i, o in zip(widths, widths[1:]))
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(below, width, 2, stride=2)
            for width, below in zip(CHANNELS[-2::-1], CHANNELS[:0:-1])
        )
        self.decoder = nn.ModuleList(Block(2 * width, width) for width in CHANNELS[-2::-1])
        self.head = nn.Conv3d(CHANNELS[0], CLASSES, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [batch, class, i, j, k] for images [batch, channel, i, j, k]."""
        skips = []
        x = images
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for upsample, block in zip(self.upsample, self.decoder):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DICE_WEIGHT * soft Dice over classes 1.. (pooled over the batch) + the rest * CE."""
    log_posteriors = F.log_softmax(logits.float(), dim=1)
    cross_entropy = F.nll_loss(log_posteriors, targets)

    posteriors = log_posteriors.exp()
    # [batch, i, j, k, class] -> [batch, class, i, j, k]
    one_hot = F.one_hot(targets, CLASSES).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    intersection = (posteriors * one_hot).sum(dims)
    sizes = posteriors.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + DICE_SMOOTHING) / (sizes + DICE_SMOOTHING)
    soft_dice = 1 - dice[1:].mean()
    return DICE_WEIGHT * soft_dice + (1 - DICE_WEIGHT) * cross_entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--channels-last", action="store_true",
                        help="weights and images in torch.channels_last_3d")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    parser.add_argument("--patch", type=int, default=64, help="patch edge in voxels")
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, found {args.steps}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    memory_format = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    network = UNet3d().to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    edge = args.patch
    images = torch.randn(args.batch, IMAGE_CHANNELS, edge, edge, edge)
    images = images.contiguous(memory_format=memory_format)
    targets = torch.randint(CLASSES, (args.batch, edge, edge, edge))

    def autocast():
        if args.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> float:
        optimizer.zero_grad()
        with autocast():
            logits = network(images)
        # Outside autocast, so that the loss is computed in float32 as in voxel-trainer.
        loss = segmentation_loss(logits, targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    step_ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        step_ms.append((time.perf_counter() - start) * 1e3)

    # voxel-trainer prints the same count; equal counts show that the networks match.
    parameters = sum(p.numel() for p in network.parameters())
    mode = args.precision + ("+channels_last_3d" if args.channels_last else "")
    print(f"pytorch {mode} median_ms={statistics.median(step_ms):.1f} min_ms={min(step_ms):.1f} "
          f"max_ms={max(step_ms):.1f} warmup={args.warmup} steps={args.steps} "
          f"threads={torch.get_num_threads()} parameters={parameters} loss={loss:.4f}")


if __name__ == "__main__":
    main()
