//! Sliding-window inference: a whole volume is cut into overlapping tiles, each tile goes
//! through the network, and the posteriors of overlapping tiles are averaged.
//!
//! Accumulation is in float64: the average of a voxel's (at most 8) tile values is then the
//! exact float32 result whenever the tiles agree, so an identity network reassembles its input
//! bit for bit.

use tch::{Device, Kind, Tensor};

/// Tile geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tiling {
    /// Tile size along i, j, k.
    pub tile: [i64; 3],
    /// Fraction of a tile shared with its neighbour, in [0, 1).
    pub overlap: f64,
    /// Tiles per network call.
    pub batch: usize,
}

/// Start offsets of the tiles along one axis of length `size` (which is at least `tile`): evenly
/// strided, the last one flush with the end.
pub fn tile_starts(size: i64, tile: i64, overlap: f64) -> Vec<i64> {
    if size <= tile {
        return vec![0];
    }
    let stride = ((tile as f64 * (1.0 - overlap)).floor() as i64).max(1);
    let mut starts: Vec<i64> = (0..)
        .map(|n| n * stride)
        .take_while(|&s| s + tile < size)
        .collect();
    starts.push(size - tile);
    starts
}

/// Runs `network` over `volume` (`[channel, i, j, k]`, any size) and returns the averaged
/// output `[out_channel, i, j, k]` (float32, on the CPU). `network` maps a batch of tiles
/// `[batch, channel, ti, tj, tk]` to `[batch, out_channel, ti, tj, tk]`.
///
/// Volumes smaller than a tile are padded with `pad_value` per channel at the far end and the
/// output is cropped back.
pub fn sliding_window(
    volume: &Tensor,
    tiling: Tiling,
    pad_value: &[f64],
    device: Device,
    network: &dyn Fn(&Tensor) -> Tensor,
) -> Tensor {
    let size = volume.size();
    let (channels, original) = (size[0], [size[1], size[2], size[3]]);
    let padded_shape: [i64; 3] = std::array::from_fn(|a| original[a].max(tiling.tile[a]));
    let input = if padded_shape == original {
        volume.shallow_clone()
    } else {
        let padded = Tensor::zeros(
            [channels, padded_shape[0], padded_shape[1], padded_shape[2]],
            (volume.kind(), volume.device()),
        );
        for c in 0..channels {
            let _ = padded
                .get(c)
                .fill_(pad_value.get(c as usize).copied().unwrap_or(0.0));
        }
        narrow3(&padded, original).copy_(volume);
        padded
    };

    let starts: Vec<[i64; 3]> = {
        let axes: Vec<Vec<i64>> = (0..3)
            .map(|a| tile_starts(padded_shape[a], tiling.tile[a], tiling.overlap))
            .collect();
        let mut all = Vec::new();
        for &i in &axes[0] {
            for &j in &axes[1] {
                for &k in &axes[2] {
                    all.push([i, j, k]);
                }
            }
        }
        all
    };

    let mut sum: Option<Tensor> = None;
    let count = Tensor::zeros(padded_shape, (Kind::Double, device));
    for chunk in starts.chunks(tiling.batch.max(1)) {
        let tiles: Vec<Tensor> = chunk
            .iter()
            .map(|&start| crop(&input, start, tiling.tile))
            .collect();
        let batch = Tensor::stack(&tiles, 0).to_device(device);
        let output = tch::no_grad(|| network(&batch)).to_kind(Kind::Double);
        let out_channels = output.size()[1];
        let sum = sum.get_or_insert_with(|| {
            Tensor::zeros(
                [
                    out_channels,
                    padded_shape[0],
                    padded_shape[1],
                    padded_shape[2],
                ],
                (Kind::Double, device),
            )
        });
        for (n, &start) in chunk.iter().enumerate() {
            let mut region = crop(sum, start, tiling.tile);
            let _ = region.g_add_(&output.get(n as i64));
            let mut counted = crop(&count.unsqueeze(0), start, tiling.tile);
            let _ = counted.g_add_scalar_(1.0);
        }
    }
    let sum = sum.expect("a volume has at least one tile");
    let average = sum / count.unsqueeze(0);
    narrow3(&average, original)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
}

/// The view `[.., start..start+size]` along the last three axes.
fn crop(tensor: &Tensor, start: [i64; 3], size: [i64; 3]) -> Tensor {
    tensor
        .narrow(1, start[0], size[0])
        .narrow(2, start[1], size[1])
        .narrow(3, start[2], size[2])
}

fn narrow3(tensor: &Tensor, size: [i64; 3]) -> Tensor {
    crop(tensor, [0, 0, 0], size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_and_the_last_is_flush_with_the_end() {
        assert_eq!(tile_starts(10, 4, 0.5), vec![0, 2, 4, 6]);
        assert_eq!(tile_starts(11, 4, 0.5), vec![0, 2, 4, 6, 7]);
        assert_eq!(tile_starts(8, 4, 0.0), vec![0, 4]);
        assert_eq!(tile_starts(3, 4, 0.5), vec![0]);
    }

    #[test]
    fn identity_network_reassembles_an_odd_shaped_volume_exactly() {
        let volume = Tensor::randn([2, 13, 17, 9], (Kind::Float, Device::Cpu)) * 1000.0;
        for overlap in [0.0, 0.25, 0.5, 0.8] {
            let tiling = Tiling {
                tile: [8, 8, 4],
                overlap,
                batch: 3,
            };
            let out = sliding_window(&volume, tiling, &[0.0, 0.0], Device::Cpu, &|x| {
                x.shallow_clone()
            });
            assert_eq!(out.size(), volume.size());
            assert!(
                out.equal(&volume),
                "overlap {overlap}: reassembly is not exact"
            );
        }
    }

    #[test]
    fn volume_smaller_than_a_tile_is_padded_and_cropped_back() {
        let volume = Tensor::randn([1, 3, 5, 2], (Kind::Float, Device::Cpu));
        let tiling = Tiling {
            tile: [8, 8, 8],
            overlap: 0.5,
            batch: 1,
        };
        let seen = std::cell::RefCell::new(Vec::new());
        let out = sliding_window(&volume, tiling, &[-7.0], Device::Cpu, &|x| {
            seen.borrow_mut().push(x.size());
            x.shallow_clone()
        });
        assert!(out.equal(&volume));
        assert_eq!(seen.borrow().as_slice(), &[vec![1, 1, 8, 8, 8]]);
    }
}
