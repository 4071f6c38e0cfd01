//! Per-channel intensity normalisation and padding.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, s};
use voxel_crds::experiment::{ChannelNormalization, NormalizationMethod};

/// Default percentiles of `RobustWindow`: wide enough to keep anatomy, narrow enough to drop
/// the isolated bright voxels that MR scanners produce.
pub const DEFAULT_LOWER_PERCENTILE: f64 = 0.5;
/// See [`DEFAULT_LOWER_PERCENTILE`].
pub const DEFAULT_UPPER_PERCENTILE: f64 = 99.5;

/// Normalises one channel in place. `settings` of `None` means `ZScore`.
pub fn normalize(mut volume: ArrayViewMut3<f32>, settings: Option<&ChannelNormalization>) {
    let method = settings.map_or(NormalizationMethod::ZScore, |s| s.method);
    match method {
        NormalizationMethod::ZScore => {
            let (mean, std) = mean_std(volume.view());
            // A constant image has no contrast to preserve; map it to zeros instead of NaN.
            let scale = if std > 0.0 { 1.0 / std } else { 0.0 };
            volume.mapv_inplace(|v| ((f64::from(v) - mean) * scale) as f32);
        }
        NormalizationMethod::CtWindow => {
            let settings = settings.expect("CtWindow always comes with its settings");
            let level = settings.window_level.unwrap_or(0.0);
            let width = settings.window_width.unwrap_or(1.0);
            window(volume, level - width / 2.0, level + width / 2.0);
        }
        NormalizationMethod::RobustWindow => {
            let lower = settings.and_then(|s| s.lower_percentile);
            let upper = settings.and_then(|s| s.upper_percentile);
            let mut values: Vec<f32> = volume.iter().copied().collect();
            values.sort_by(f32::total_cmp);
            let low = percentile(&values, lower.unwrap_or(DEFAULT_LOWER_PERCENTILE));
            let high = percentile(&values, upper.unwrap_or(DEFAULT_UPPER_PERCENTILE));
            window(volume, low, high);
        }
    }
}

/// Clips to `[low, high]` and maps that range linearly onto [-1, 1].
fn window(mut volume: ArrayViewMut3<f32>, low: f64, high: f64) {
    let width = (high - low).max(f64::EPSILON);
    volume.mapv_inplace(|v| {
        let clipped = f64::from(v).clamp(low, high);
        (2.0 * (clipped - low) / width - 1.0) as f32
    });
}

fn mean_std(volume: ArrayView3<f32>) -> (f64, f64) {
    let n = volume.len().max(1) as f64;
    let mean = volume.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = volume
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Linear-interpolation percentile (numpy's default) of sorted values; `q` in [0, 100].
fn percentile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let h = q / 100.0 * (sorted.len() - 1) as f64;
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = h - below as f64;
    f64::from(sorted[below]) + fraction * (f64::from(sorted[above]) - f64::from(sorted[below]))
}

/// Pads a volume with `value` at the far end of each axis so that it is at least `min_shape`.
/// Returns the input unchanged when it is already large enough.
pub fn pad_to<T: Copy>(volume: Array3<T>, min_shape: [usize; 3], value: T) -> Array3<T> {
    let shape = volume.dim();
    let target = (
        shape.0.max(min_shape[0]),
        shape.1.max(min_shape[1]),
        shape.2.max(min_shape[2]),
    );
    if target == shape {
        return volume;
    }
    let mut padded = Array3::from_elem(target, value);
    padded
        .slice_mut(s![..shape.0, ..shape.1, ..shape.2])
        .assign(&volume);
    padded
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    fn settings(method: NormalizationMethod) -> ChannelNormalization {
        ChannelNormalization {
            channel: "ct".into(),
            method,
            window_level: Some(40.0),
            window_width: Some(400.0),
            lower_percentile: None,
            upper_percentile: None,
        }
    }

    #[test]
    fn z_score_gives_zero_mean_unit_variance() {
        let mut v = Array3::from_shape_fn((4, 5, 6), |(i, j, k)| (i * 30 + j * 6 + k) as f32);
        normalize(v.view_mut(), None);
        let (mean, std) = mean_std(v.view());
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!((std - 1.0).abs() < 1e-6, "std {std}");
    }

    #[test]
    fn constant_image_normalises_to_zeros_not_nan() {
        let mut v = Array3::from_elem((3, 3, 3), 7.0f32);
        normalize(v.view_mut(), None);
        assert!(v.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn ct_window_clips_and_maps_to_minus_one_one() {
        // Window 40 +- 200 HU: -160 -> -1, 40 -> 0, 240 -> 1, outside clipped.
        let mut v =
            Array3::from_shape_vec((1, 1, 5), vec![-1000.0, -160.0, 40.0, 240.0, 3000.0]).unwrap();
        normalize(v.view_mut(), Some(&settings(NormalizationMethod::CtWindow)));
        assert_eq!(
            v.iter().copied().collect::<Vec<_>>(),
            vec![-1.0, -1.0, 0.0, 1.0, 1.0]
        );
    }

    #[test]
    fn robust_window_ignores_a_single_outlier() {
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).collect();
        values[500] = 1e6;
        let mut v = Array3::from_shape_vec((10, 10, 10), values).unwrap();
        normalize(
            v.view_mut(),
            Some(&settings(NormalizationMethod::RobustWindow)),
        );
        assert_eq!(
            v[[5, 0, 0]],
            1.0,
            "the outlier is clipped to the upper bound"
        );
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], 95) == 3.85
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 95.0) - 3.85).abs() < 1e-9);
    }

    #[test]
    fn padding_grows_only_small_axes_and_keeps_content_at_the_origin() {
        let v = Array3::from_elem((2, 8, 3), 1u8);
        let p = pad_to(v, [4, 4, 4], 0);
        assert_eq!(p.dim(), (4, 8, 4));
        assert_eq!(p.iter().filter(|&&x| x == 1).count(), 2 * 8 * 3);
        assert_eq!(p[[3, 0, 0]], 0);
    }
}
