//! Times one UNet3D training step (forward, loss, backward, Adam update) on the CPU.
//!
//! `bench/train_step.sh` runs this beside the same step in PyTorch eager and prints both. The
//! result is one machine-readable line on stdout:
//!
//! ```text
//! voxel fp32 median_ms=... min_ms=... max_ms=... warmup=3 steps=10 threads=2 parameters=... loss=...
//! ```

use std::time::Instant;

use anyhow::ensure;
use clap::{Parser, ValueEnum};
use tch::{Device, Kind, Tensor, nn};
use voxel_crds::experiment::{LossKind, LossSpec, Normalization, OptimizerSpec, Precision};
use voxel_trainer::{
    network::{UNet3d, UNet3dConfig},
    train::{loss::segmentation_loss, optimizer::Optimizer},
};

/// The benchmark's network: 16/32/64 channels and a 128-channel bottleneck, as in the PyTorch
/// peer (`bench/train_step.py`).
const BASE_CHANNELS: i64 = 16;
const LEVELS: usize = 4;
const CLASSES: i64 = 3;
const IMAGE_CHANNELS: i64 = 1;

/// Times the UNet3D training step of voxel-trainer.
#[derive(Debug, Parser)]
struct Args {
    /// Precision of the convolutions.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    precision: PrecisionArg,
    /// Untimed steps first (memory allocation, kernel selection).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Intra-op threads of LibTorch (default: LibTorch's choice, usually the core count).
    #[arg(long)]
    threads: Option<i32>,
    /// Seed of the weights and of the random batch.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Patch edge in voxels (a cube).
    #[arg(long, default_value_t = 64)]
    patch: i64,
    /// Patches per step.
    #[arg(long, default_value_t = 2)]
    batch: i64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Bf16,
}

impl PrecisionArg {
    fn precision(self) -> Precision {
        match self {
            Self::Fp32 => Precision::Float32,
            Self::Bf16 => Precision::BFloat16,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.steps > 0,
        "--steps must be at least 1, found {}",
        args.steps
    );
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    tch::manual_seed(args.seed);

    let vs = nn::VarStore::new(Device::Cpu);
    let network = UNet3d::new(&vs.root(), network_config(args.precision.precision()));
    let mut optimizer = Optimizer::new(&vs, &OptimizerSpec::default());
    let learning_rate = OptimizerSpec::default().learning_rate;
    let loss_spec = LossSpec {
        kind: LossKind::DiceCrossEntropy,
        dice_weight: 0.5,
    };

    let edge = args.patch;
    // [batch, channel, i, j, k]
    let images = Tensor::randn(
        [args.batch, IMAGE_CHANNELS, edge, edge, edge],
        (Kind::Float, Device::Cpu),
    );
    // [batch, i, j, k], class indices
    let targets = Tensor::randint(
        CLASSES,
        [args.batch, edge, edge, edge],
        (Kind::Int64, Device::Cpu),
    );

    let mut step = || {
        optimizer.zero_grad();
        let logits = network.forward_t(&images, true);
        let loss = segmentation_loss(&logits.log_softmax(1, Kind::Float), &targets, &loss_spec);
        loss.backward();
        optimizer.step(learning_rate);
        // Reading the value waits for every queued kernel, as PyTorch's `loss.item()` does.
        loss.double_value(&[])
    };

    for _ in 0..args.warmup {
        step();
    }
    let mut step_ms = Vec::with_capacity(args.steps);
    let mut last_loss = f64::NAN;
    for _ in 0..args.steps {
        let start = Instant::now();
        last_loss = step();
        step_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }

    step_ms.sort_by(f64::total_cmp);
    // The PyTorch peer prints the same count; equal counts show that the networks match.
    let parameters: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    println!(
        "voxel {} median_ms={:.1} min_ms={:.1} max_ms={:.1} warmup={} steps={} threads={} \
         parameters={} loss={:.4}",
        args.precision.label(),
        median(&step_ms),
        step_ms[0],
        step_ms[step_ms.len() - 1],
        args.warmup,
        args.steps,
        tch::get_num_threads(),
        parameters,
        last_loss,
    );
    Ok(())
}

fn network_config(precision: Precision) -> UNet3dConfig {
    UNet3dConfig {
        in_channels: IMAGE_CHANNELS,
        classes: CLASSES,
        base_channels: BASE_CHANNELS,
        levels: LEVELS,
        normalization: Normalization::GroupNorm,
        norm_groups: 4,
        leaky_relu_slope: 0.01,
        precision,
    }
}

/// Median of sorted, non-empty values.
fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}
