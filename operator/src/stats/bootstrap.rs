//! The median of paired differences and its seeded percentile-bootstrap confidence interval.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples drawn when the caller does not say otherwise.
pub const DEFAULT_BOOTSTRAP_SAMPLES: usize = 2000;

/// A two-sided confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// The median: the middle value, or the mean of the middle two for an even count. `None` for no
/// values. The values must be finite.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The percentile-bootstrap confidence interval of the median of `values` (paired differences,
/// one per subject): `resamples` times, draw as many subjects as there are with replacement
/// and take their median; the interval runs between the (1 − level)/2 and (1 + level)/2
/// quantiles of those medians, interpolated linearly between order statistics (NumPy's
/// default). The draws come from ChaCha8 seeded with `seed` on stream `stream`, so that one
/// seed gives each test of a comparison its own reproducible sequence. `None` for no values
/// or no resamples. The values must be finite and `level` in (0, 1).
pub fn median_confidence_interval(
    values: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
    stream: u64,
) -> Option<Interval> {
    if values.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);

    let n = values.len();
    let mut resample = vec![0.0; n];
    let mut medians = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in resample.iter_mut() {
            *slot = values[rng.random_range(0..n)];
        }
        resample.sort_by(f64::total_cmp);
        medians.extend(median_of_sorted(&resample));
    }
    medians.sort_by(f64::total_cmp);

    let tail = (1.0 - level) / 2.0;
    Some(Interval {
        low: quantile(&medians, tail),
        high: quantile(&medians, 1.0 - tail),
    })
}

/// The q-quantile of sorted, non-empty values, linear between order statistics (type 7).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = position - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        // NumPy: np.quantile([1, 2, 3, 4], [0.025, 0.975]) = [1.075, 3.925].
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert!((quantile(&sorted, 0.025) - 1.075).abs() < 1e-12);
        assert!((quantile(&sorted, 0.975) - 3.925).abs() < 1e-12);
        assert_eq!(quantile(&sorted, 1.0), 4.0);
    }

    #[test]
    fn the_same_seed_and_stream_give_the_same_interval() {
        // 30 distinct values, so that two streams practically never share a quantile.
        let differences: Vec<f64> = (0..30).map(|i| f64::from(i * 17 % 31) / 31.0).collect();
        let first = median_confidence_interval(&differences, 500, 0.95, 7, 3);
        assert_eq!(
            first,
            median_confidence_interval(&differences, 500, 0.95, 7, 3)
        );
        assert_ne!(
            first,
            median_confidence_interval(&differences, 500, 0.95, 7, 4)
        );
    }

    #[test]
    fn interval_lies_within_the_data_and_around_the_median() {
        let differences = [0.01, 0.03, -0.02, 0.05, 0.02, 0.0, 0.04, 0.01, 0.02, 0.03];
        let interval = median_confidence_interval(&differences, 2000, 0.95, 0, 0)
            .expect("values and resamples");
        let median = median(&differences).expect("values");
        assert!(
            -0.02 <= interval.low && interval.low <= median,
            "{interval:?}"
        );
        assert!(
            median <= interval.high && interval.high <= 0.05,
            "{interval:?}"
        );
    }

    #[test]
    fn constant_differences_give_a_point_interval() {
        let interval = median_confidence_interval(&[0.5; 5], 100, 0.95, 1, 0);
        assert_eq!(
            interval,
            Some(Interval {
                low: 0.5,
                high: 0.5
            })
        );
    }

    #[test]
    fn no_values_or_no_resamples_give_no_interval() {
        assert_eq!(median_confidence_interval(&[], 100, 0.95, 0, 0), None);
        assert_eq!(median_confidence_interval(&[1.0], 0, 0.95, 0, 0), None);
    }
}
