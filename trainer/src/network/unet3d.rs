//! A 3D U-Net: two 3×3×3 convolution + normalisation + LeakyReLU per block, max-pool down,
//! transposed convolution up, skip concatenation, and a 1×1×1 convolution to class logits.
//!
//! Convolutions can run in bfloat16 (the weights are kept in float32 and cast per call, as
//! autocast does); normalisation layers and the logits stay in float32.

use tch::{Kind, Tensor, nn};
use voxel_crds::experiment::{NetworkSpec, Normalization, Precision};

/// Shape of a U-Net.
#[derive(Debug, Clone, PartialEq)]
pub struct UNet3dConfig {
    /// Image channels.
    pub in_channels: i64,
    /// Output classes, background included.
    pub classes: i64,
    /// Feature channels of the first level; doubled at each level below.
    pub base_channels: i64,
    /// Levels including the bottleneck.
    pub levels: usize,
    /// Normalisation layer of every block.
    pub normalization: Normalization,
    /// Groups of `GroupNorm`, capped at the channel count.
    pub norm_groups: i64,
    /// LeakyReLU negative slope.
    pub leaky_relu_slope: f64,
    /// Precision of the convolutions.
    pub precision: Precision,
}

impl UNet3dConfig {
    /// The configuration described by a spec.
    pub fn from_spec(
        network: &NetworkSpec,
        in_channels: usize,
        classes: usize,
        precision: Precision,
    ) -> Self {
        Self {
            in_channels: in_channels as i64,
            classes: classes as i64,
            base_channels: i64::from(network.base_channels),
            levels: network.levels as usize,
            normalization: network.normalization,
            norm_groups: i64::from(network.norm_groups),
            leaky_relu_slope: network.leaky_relu_slope,
            precision,
        }
    }

    /// Spatial sizes must be multiples of this.
    pub fn size_multiple(&self) -> i64 {
        1 << (self.levels - 1)
    }
}

enum Norm {
    Group(nn::GroupNorm),
    Batch(nn::BatchNorm),
}

/// Convolution, normalisation, activation.
struct ConvUnit {
    conv: nn::Conv3D,
    norm: Norm,
}

struct Block {
    first: ConvUnit,
    second: ConvUnit,
}

struct Up {
    transpose: nn::ConvTranspose3D,
    block: Block,
}

/// The network; its parameters live in the `nn::VarStore` it was built on.
pub struct UNet3d {
    config: UNet3dConfig,
    encoder: Vec<Block>,
    decoder: Vec<Up>,
    head: nn::Conv3D,
}

impl std::fmt::Debug for UNet3d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet3d")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn conv_unit(path: nn::Path, input: i64, output: i64, config: &UNet3dConfig) -> ConvUnit {
    let conv_config = nn::ConvConfig {
        padding: 1,
        // A normalisation layer follows, whose shift makes a bias redundant.
        bias: false,
        ..Default::default()
    };
    let conv = nn::conv3d(&path / "conv", input, output, 3, conv_config);
    let norm = match config.normalization {
        Normalization::GroupNorm => {
            let groups = gcd(config.norm_groups.min(output), output);
            Norm::Group(nn::group_norm(
                &path / "norm",
                groups,
                output,
                Default::default(),
            ))
        }
        Normalization::BatchNorm => {
            Norm::Batch(nn::batch_norm3d(&path / "norm", output, Default::default()))
        }
    };
    ConvUnit { conv, norm }
}

// GroupNorm needs the group count to divide the channels.
fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

fn block(path: nn::Path, input: i64, output: i64, config: &UNet3dConfig) -> Block {
    Block {
        first: conv_unit(&path / "first", input, output, config),
        second: conv_unit(&path / "second", output, output, config),
    }
}

impl UNet3d {
    /// Creates the network's parameters under `path`.
    pub fn new(path: &nn::Path, config: UNet3dConfig) -> Self {
        let channels: Vec<i64> = (0..config.levels)
            .map(|level| config.base_channels << level)
            .collect();
        let mut encoder = Vec::new();
        let mut input = config.in_channels;
        for (level, &width) in channels.iter().enumerate() {
            encoder.push(block(path / format!("down{level}"), input, width, &config));
            input = width;
        }
        let mut decoder = Vec::new();
        for level in (0..config.levels.saturating_sub(1)).rev() {
            let (below, width) = (channels[level + 1], channels[level]);
            let up_config = nn::ConvTransposeConfig {
                stride: 2,
                ..Default::default()
            };
            let level_path = path / format!("up{level}");
            decoder.push(Up {
                transpose: nn::conv_transpose3d(
                    &level_path / "transpose",
                    below,
                    width,
                    2,
                    up_config,
                ),
                block: block(&level_path / "block", 2 * width, width, &config),
            });
        }
        let head = nn::conv3d(
            path / "head",
            channels[0],
            config.classes,
            1,
            Default::default(),
        );
        Self {
            config,
            encoder,
            decoder,
            head,
        }
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &UNet3dConfig {
        &self.config
    }

    /// Logits `[batch, class, i, j, k]` (float32) for images `[batch, channel, i, j, k]`.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut x = images.to_kind(Kind::Float);
        for (level, block) in self.encoder.iter().enumerate() {
            if level > 0 {
                x = x.max_pool3d([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], false);
            }
            x = self.block(block, &x, train);
            skips.push(x.shallow_clone());
        }
        skips.pop();
        for up in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder level");
            let upsampled = self.transpose(&up.transpose, &x);
            x = self.block(&up.block, &Tensor::cat(&[upsampled, skip], 1), train);
        }
        self.conv(&self.head, &x, 0).to_kind(Kind::Float)
    }

    fn block(&self, block: &Block, x: &Tensor, train: bool) -> Tensor {
        let x = self.unit(&block.first, x, train);
        self.unit(&block.second, &x, train)
    }

    fn unit(&self, unit: &ConvUnit, x: &Tensor, train: bool) -> Tensor {
        let y = self.conv(&unit.conv, x, 1).to_kind(Kind::Float);
        let y = match &unit.norm {
            Norm::Group(norm) => y.apply(norm),
            Norm::Batch(norm) => y.apply_t(norm, train),
        };
        let slope = self.config.leaky_relu_slope;
        // LibTorch's fused kernel uses the customary slope of 0.01.
        if slope == 0.01 {
            y.leaky_relu()
        } else {
            y.maximum(&(&y * slope))
        }
    }

    fn compute_kind(&self) -> Kind {
        match self.config.precision {
            Precision::Float32 => Kind::Float,
            Precision::BFloat16 => Kind::BFloat16,
        }
    }

    fn conv(&self, conv: &nn::Conv3D, x: &Tensor, padding: i64) -> Tensor {
        let kind = self.compute_kind();
        let bias = conv.bs.as_ref().map(|b| b.to_kind(kind));
        x.to_kind(kind).conv3d(
            &conv.ws.to_kind(kind),
            bias.as_ref(),
            [1, 1, 1],
            [padding, padding, padding],
            [1, 1, 1],
            1,
        )
    }

    fn transpose(&self, conv: &nn::ConvTranspose3D, x: &Tensor) -> Tensor {
        let kind = self.compute_kind();
        let bias = conv.bs.as_ref().map(|b| b.to_kind(kind));
        x.to_kind(kind)
            .conv_transpose3d(
                &conv.ws.to_kind(kind),
                bias.as_ref(),
                [2, 2, 2],
                [0, 0, 0],
                [0, 0, 0],
                1,
                [1, 1, 1],
            )
            .to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, nn};

    use super::*;

    fn config(levels: usize) -> UNet3dConfig {
        UNet3dConfig {
            in_channels: 2,
            classes: 3,
            base_channels: 4,
            levels,
            normalization: Normalization::GroupNorm,
            norm_groups: 4,
            leaky_relu_slope: 0.01,
            precision: Precision::Float32,
        }
    }

    #[test]
    fn output_has_one_channel_per_class_and_the_input_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet3d::new(&vs.root(), config(3));
        let x = Tensor::randn([2, 2, 8, 12, 16], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, false).size(), vec![2, 3, 8, 12, 16]);
    }

    #[test]
    fn batch_norm_network_uses_running_statistics_at_inference() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = UNet3dConfig {
            normalization: Normalization::BatchNorm,
            ..config(2)
        };
        let net = UNet3d::new(&vs.root(), config);
        let x = Tensor::randn([2, 2, 8, 8, 8], (Kind::Float, Device::Cpu));
        let first = net.forward_t(&x, false);
        assert!(
            first.equal(&net.forward_t(&x, false)),
            "inference is deterministic"
        );
        let _ = net.forward_t(&x, true);
        assert!(
            !first.equal(&net.forward_t(&x, false)),
            "training updates running stats"
        );
    }

    #[test]
    fn bfloat16_convolutions_still_return_float32_logits() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet3d::new(
            &vs.root(),
            UNet3dConfig {
                precision: Precision::BFloat16,
                ..config(2)
            },
        );
        let x = Tensor::randn([1, 2, 8, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, true).kind(), Kind::Float);
    }
}
