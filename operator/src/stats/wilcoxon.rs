//! The Wilcoxon signed-rank test of paired samples, two-sided, giving the statistic and p-value
//! of SciPy 1.17's `scipy.stats.wilcoxon(x, y, zero_method, correction, method)`.
//!
//! The differences d = x − y are ranked by |d| with average ranks for ties; W+ and W− are the
//! rank sums of the positive and negative differences and the statistic is min(W+, W−). Zero
//! differences are dropped before ranking (`Wilcox`, SciPy's default), ranked and then left out
//! of both sums (`Pratt`), or ranked and split evenly between them (`Zsplit`).
//!
//! `Method::Auto` chooses as SciPy does, counting every pair, zeros included:
//! the normal approximation above [`AUTO_EXACT_MAX_PAIRS`] pairs; the exact null distribution
//! when no |d| ties and no d is zero; otherwise every sign assignment enumerated up to
//! [`AUTO_PERMUTATION_MAX_PAIRS`] pairs and the normal approximation beyond. Both enumerations
//! are dynamic programmes over rank sums, so they cost n³ operations rather than 2ⁿ.
//!
//! Exact and permutation p-values agree with SciPy's to rounding. Normal-approximation ones go
//! through `statrs`'s erfc, which differs from SciPy's `ndtr` by up to about 1e-10 relative
//! (4e-11 absolute over the reference cases in `tests/data/stats/`).

use statrs::distribution::{ContinuousCDF, Normal};
use thiserror::Error;
use voxel_crds::results::WilcoxonMethod;

/// Above this many pairs `Method::Auto` uses the normal approximation (SciPy's rule).
pub const AUTO_EXACT_MAX_PAIRS: usize = 50;

/// Up to this many pairs `Method::Auto` enumerates every sign assignment when |d| ties or a
/// difference is zero; SciPy's permutation test is exhaustive up to here (2¹³ < 9999 resamples).
pub const AUTO_PERMUTATION_MAX_PAIRS: usize = 13;

/// What happens to pairs whose difference is zero (SciPy's `zero_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZeroMethod {
    /// Dropped before ranking (Wilcoxon's original treatment; SciPy's default).
    #[default]
    Wilcox,
    /// Ranked with the others, then left out of both rank sums (Pratt, 1959).
    Pratt,
    /// Ranked with the others, their rank sum split evenly between W+ and W−.
    Zsplit,
}

/// How the p-value is computed (SciPy's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// SciPy's automatic choice (see the module documentation).
    #[default]
    Auto,
    /// The exact null distribution of W+ without ties; with ties the statistic is rounded
    /// outward, as SciPy does, which makes the p-value conservative.
    Exact,
    /// Every sign assignment of the non-zero differences, ranks held fixed; exact with ties.
    Permutation,
    /// Normal approximation with the tie correction.
    Asymptotic,
}

/// The options of one test; the default is SciPy's default call `wilcoxon(x, y)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WilcoxonOptions {
    /// What happens to zero differences.
    pub zero_method: ZeroMethod,
    /// How the p-value is computed.
    pub method: Method,
    /// Whether the normal approximation moves the statistic 0.5 towards the mean (continuity
    /// correction); it has no effect on the exact and permutation p-values.
    pub correction: bool,
}

/// The outcome of one test.
#[derive(Clone, Debug, PartialEq)]
pub struct WilcoxonTest {
    /// min(W+, W−).
    pub statistic: f64,
    /// Two-sided p-value. NaN when the normal approximation meets zero variance, which happens
    /// only when every difference is zero (SciPy returns NaN there too).
    pub p_value: f64,
    /// How the p-value was computed.
    pub method: WilcoxonMethod,
    /// Number of pairs given, zero differences included.
    pub pairs: usize,
    /// Number of pairs whose difference is not zero.
    pub nonzero_pairs: usize,
    /// W+, the rank sum of the positive differences (with half the zero ranks under `Zsplit`).
    pub rank_sum_positive: f64,
    /// W−, the rank sum of the negative differences (with half the zero ranks under `Zsplit`).
    pub rank_sum_negative: f64,
    /// The standardised W+ of the normal approximation (continuity correction applied when
    /// asked); present only when that approximation gave the p-value.
    pub z: Option<f64>,
}

/// Why a test could not be run.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum WilcoxonError {
    /// The two samples are not paired one to one.
    #[error("paired samples differ in length: {x} values against {y}")]
    LengthMismatch {
        /// Length of the first sample.
        x: usize,
        /// Length of the second sample.
        y: usize,
    },
    /// There is nothing to test.
    #[error("no pairs to test")]
    NoPairs,
    /// A value is NaN or infinite; the caller decides which pairs to leave out.
    #[error("pair {index} is not finite: x = {x}, y = {y}")]
    NonFinite {
        /// Position of the pair, from 0.
        index: usize,
        /// The first sample's value.
        x: f64,
        /// The second sample's value.
        y: f64,
    },
}

/// Tests whether the differences `x[i] − y[i]` are symmetric about zero, two-sided.
pub fn wilcoxon(
    x: &[f64],
    y: &[f64],
    options: &WilcoxonOptions,
) -> Result<WilcoxonTest, WilcoxonError> {
    if x.len() != y.len() {
        return Err(WilcoxonError::LengthMismatch {
            x: x.len(),
            y: y.len(),
        });
    }
    if x.is_empty() {
        return Err(WilcoxonError::NoPairs);
    }
    if let Some(index) = (0..x.len()).find(|&i| !(x[i].is_finite() && y[i].is_finite())) {
        return Err(WilcoxonError::NonFinite {
            index,
            x: x[index],
            y: y[index],
        });
    }
    let differences: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();

    let ranks = SignedRanks::of(&differences, options.zero_method);
    let method = choose_method(options.method, differences.len(), &ranks);
    let (p_value, z) = match method {
        WilcoxonMethod::Exact => (exact_p_value(&ranks), None),
        WilcoxonMethod::Permutation => (permutation_p_value(&ranks), None),
        WilcoxonMethod::Asymptotic => {
            let z = ranks.z(options.correction);
            (2.0 * Normal::standard().sf(z.abs()), Some(z))
        }
    };

    Ok(WilcoxonTest {
        statistic: ranks.positive.min(ranks.negative),
        p_value,
        method,
        pairs: differences.len(),
        nonzero_pairs: ranks.nonzero_twice_ranks.len(),
        rank_sum_positive: ranks.positive,
        rank_sum_negative: ranks.negative,
        z,
    })
}

/// The fewest non-zero pairs with which a two-sided test can reach `p < alpha` at all: with n
/// pairs the most extreme outcome, every difference of one sign, has exact p = 2 / 2ⁿ (ties
/// cannot lower it). 6 for alpha = 0.05, 8 for 0.01. Fewer pairs cannot say anything.
pub fn min_nonzero_pairs(alpha: f64) -> usize {
    (1..=64)
        .find(|&n| 2.0 / 2f64.powi(n as i32) < alpha)
        .unwrap_or(usize::MAX)
}

/// The ranked differences of one test, with everything the three p-values need.
struct SignedRanks {
    /// W+ (plus half the zero ranks under `Zsplit`).
    positive: f64,
    /// W− (plus half the zero ranks under `Zsplit`).
    negative: f64,
    /// Twice the (average) rank of each non-zero difference: integers, since average ranks are
    /// multiples of one half.
    nonzero_twice_ranks: Vec<u64>,
    /// Twice W+ over the non-zero differences only, the statistic the enumerations count.
    twice_positive: u64,
    /// Whether two non-zero |d| are equal.
    has_ties: bool,
    /// Whether some difference is zero (whatever the zero method).
    has_zeros: bool,
    /// Mean of W+ under the null hypothesis.
    null_mean: f64,
    /// Standard deviation of W+ under the null hypothesis, tie-corrected.
    null_std: f64,
    /// The sample size of the exact distribution (SciPy's `count`).
    count: usize,
}

impl SignedRanks {
    fn of(differences: &[f64], zero_method: ZeroMethod) -> Self {
        let zeros = differences.iter().filter(|d| **d == 0.0).count();
        let ranked: Vec<f64> = match zero_method {
            ZeroMethod::Wilcox => differences.iter().copied().filter(|d| *d != 0.0).collect(),
            ZeroMethod::Pratt | ZeroMethod::Zsplit => differences.to_vec(),
        };
        let magnitudes: Vec<f64> = ranked.iter().map(|d| d.abs()).collect();
        let (twice_ranks, tie_groups) = twice_average_ranks(&magnitudes);

        let twice_rank_sum = |keep: fn(f64) -> bool| -> u64 {
            let ranks = ranked.iter().zip(&twice_ranks).filter(|(d, _)| keep(**d));
            ranks.map(|(_, r)| r).sum()
        };
        let twice_positive = twice_rank_sum(|d| d > 0.0);
        let twice_negative = twice_rank_sum(|d| d < 0.0);
        let twice_zero = twice_rank_sum(|d| d == 0.0);
        let nonzero_twice_ranks = ranked
            .iter()
            .zip(&twice_ranks)
            .filter(|(d, _)| **d != 0.0)
            .map(|(_, r)| *r)
            .collect();

        // Ranked zeros have the smallest magnitude, so they form the first group.
        let zeros_ranked = zero_method != ZeroMethod::Wilcox && zeros > 0;
        let nonzero_groups = &tie_groups[usize::from(zeros_ranked)..];
        // Pratt leaves the zeros' group out of the tie correction too (Cureton, 1967).
        let corrected_groups = if zero_method == ZeroMethod::Pratt {
            nonzero_groups
        } else {
            &tie_groups[..]
        };
        let tie_sum: f64 = corrected_groups
            .iter()
            .map(|&t| (t as f64).powi(3) - t as f64)
            .sum();

        let zero_share = match zero_method {
            ZeroMethod::Zsplit => twice_zero as f64 / 4.0,
            ZeroMethod::Wilcox | ZeroMethod::Pratt => 0.0,
        };
        let count = ranked.len();
        let n = count as f64;
        let mut null_mean = n * (n + 1.0) * 0.25;
        let mut variance_times_24 = n * (n + 1.0) * (2.0 * n + 1.0);
        if zero_method == ZeroMethod::Pratt {
            let z = zeros as f64;
            null_mean -= z * (z + 1.0) * 0.25;
            variance_times_24 -= z * (z + 1.0) * (2.0 * z + 1.0);
        }

        Self {
            positive: twice_positive as f64 / 2.0 + zero_share,
            negative: twice_negative as f64 / 2.0 + zero_share,
            nonzero_twice_ranks,
            twice_positive,
            has_ties: nonzero_groups.iter().any(|&t| t > 1),
            has_zeros: zeros > 0,
            null_mean,
            null_std: ((variance_times_24 - tie_sum / 2.0) / 24.0).sqrt(),
            count,
        }
    }

    /// The standardised W+, NaN when the null variance is zero.
    fn z(&self, correction: bool) -> f64 {
        let mut z = (self.positive - self.null_mean) / self.null_std;
        if correction {
            // Towards zero by half a unit of W+; f64::signum(0.0) is 1, SciPy's sign(0) is 0.
            let sign = if z > 0.0 {
                1.0
            } else if z < 0.0 {
                -1.0
            } else {
                0.0
            };
            z -= sign * 0.5 / self.null_std;
        }
        z
    }
}

fn choose_method(method: Method, pairs: usize, ranks: &SignedRanks) -> WilcoxonMethod {
    match method {
        Method::Exact => WilcoxonMethod::Exact,
        Method::Permutation => WilcoxonMethod::Permutation,
        Method::Asymptotic => WilcoxonMethod::Asymptotic,
        Method::Auto if pairs > AUTO_EXACT_MAX_PAIRS => WilcoxonMethod::Asymptotic,
        Method::Auto if !(ranks.has_ties || ranks.has_zeros) => WilcoxonMethod::Exact,
        Method::Auto if pairs <= AUTO_PERMUTATION_MAX_PAIRS => WilcoxonMethod::Permutation,
        Method::Auto => WilcoxonMethod::Asymptotic,
    }
}

/// Twice the average rank of each value, ascending from 1 with equal values sharing the mean of
/// their ranks (integers, since such means are multiples of one half), and the sizes of the
/// groups of equal values from the smallest up.
fn twice_average_ranks(values: &[f64]) -> (Vec<u64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));

    let mut twice_ranks = vec![0; values.len()];
    let mut groups = Vec::new();
    let mut start = 0;
    for group in order.chunk_by(|&a, &b| values[a] == values[b]) {
        // A group of t values from 0-based position i shares rank i + (t + 1) / 2.
        let twice_rank = (2 * start + group.len() + 1) as u64;
        for &i in group {
            twice_ranks[i] = twice_rank;
        }
        groups.push(group.len());
        start += group.len();
    }
    (twice_ranks, groups)
}

/// SciPy's exact p-value: 2 · min(P(W+ ≥ ⌊w⌋), P(W+ ≤ ⌈w⌉)), capped at 1, under the
/// distribution of W+ for `count` distinct ranks 1..=count. Each tail is summed from the side
/// SciPy sums it, so that the results agree to rounding.
fn exact_p_value(ranks: &SignedRanks) -> f64 {
    let pmf = rank_sum_pmf(&(1..=ranks.count as u64).collect::<Vec<_>>());
    // The mean of this distribution, without Pratt's adjustment of the normal approximation.
    let n = ranks.count as f64;
    let mean = n * (n + 1.0) / 4.0;
    let lower = ranks.positive.floor() as i64;
    let upper = ranks.positive.ceil() as i64;
    (2.0 * survival(&pmf, lower, mean).min(cumulative(&pmf, upper, mean))).clamp(0.0, 1.0)
}

/// P(W ≤ k): summed directly below the mean, as 1 − P(W ≥ k + 1) above it.
fn cumulative(pmf: &[f64], k: i64, mean: f64) -> f64 {
    if k as f64 <= mean {
        lower_tail(pmf, k)
    } else {
        1.0 - upper_tail(pmf, k + 1)
    }
}

/// P(W ≥ k): summed directly below the mean, as 1 − P(W ≤ k − 1) above it (SciPy's branches).
fn survival(pmf: &[f64], k: i64, mean: f64) -> f64 {
    if k as f64 <= mean {
        upper_tail(pmf, k)
    } else {
        1.0 - lower_tail(pmf, k - 1)
    }
}

fn lower_tail(pmf: &[f64], k: i64) -> f64 {
    let end = (k + 1).clamp(0, pmf.len() as i64) as usize;
    pmf[..end].iter().sum()
}

fn upper_tail(pmf: &[f64], k: i64) -> f64 {
    let start = k.clamp(0, pmf.len() as i64) as usize;
    pmf[start..].iter().sum()
}

/// The permutation p-value: every sign assignment of the non-zero differences equally likely,
/// p = 2 · min(P(S ≤ s), P(S ≥ s)) capped at 1, where S is the rank sum of the positive ones.
/// Zero differences change no sum under any assignment, so they do not enter.
fn permutation_p_value(ranks: &SignedRanks) -> f64 {
    let pmf = rank_sum_pmf(&ranks.nonzero_twice_ranks);
    let observed = ranks.twice_positive as usize;
    let at_most: f64 = pmf[..=observed].iter().sum();
    let at_least: f64 = pmf[observed..].iter().sum();
    (2.0 * at_most.min(at_least)).min(1.0)
}

/// The distribution of the sum of a random subset of `ranks` (each in or out with probability
/// one half): entry s is P(sum = s). Built one rank at a time, halving as SciPy does, so that
/// with ranks 1..=n it is SciPy's table of the exact distribution.
fn rank_sum_pmf(ranks: &[u64]) -> Vec<f64> {
    let total: u64 = ranks.iter().sum();
    let mut pmf = vec![0.0; total as usize + 1];
    pmf[0] = 1.0;
    let mut reach = 0;
    for &rank in ranks {
        let rank = rank as usize;
        for s in (0..=reach).rev() {
            let half = pmf[s] * 0.5;
            pmf[s] = half;
            pmf[s + rank] += half;
        }
        reach += rank;
    }
    pmf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(x: &[f64], y: &[f64]) -> WilcoxonTest {
        wilcoxon(x, y, &WilcoxonOptions::default()).expect("valid samples")
    }

    #[test]
    fn statistic_is_the_smaller_rank_sum() {
        // d = [3, -1, 2, 4]: the negative difference has rank 1.
        let test = auto(&[3.0, 0.0, 2.0, 4.0], &[0.0, 1.0, 0.0, 0.0]);
        assert_eq!(test.rank_sum_positive, 9.0);
        assert_eq!(test.rank_sum_negative, 1.0);
        assert_eq!(test.statistic, 1.0);
    }

    #[test]
    fn tied_magnitudes_share_the_average_rank() {
        // |d| = [1, 1, 2]: ranks 1.5, 1.5, 3.
        let test = auto(&[1.0, 0.0, 2.0], &[0.0, 1.0, 0.0]);
        assert_eq!(test.rank_sum_negative, 1.5);
        assert_eq!(test.rank_sum_positive, 4.5);
    }

    #[test]
    fn zero_differences_are_dropped_by_default() {
        let test = auto(&[1.0, 5.0, 3.0], &[0.0, 5.0, 0.0]);
        assert_eq!(test.pairs, 3);
        assert_eq!(test.nonzero_pairs, 2);
        assert_eq!(test.rank_sum_positive, 3.0);
    }

    #[test]
    fn auto_uses_the_exact_distribution_without_ties_or_zeros() {
        // Every difference positive among 6: p = 2 / 2⁶.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let test = auto(&x, &[0.0; 6]);
        assert_eq!(test.method, WilcoxonMethod::Exact);
        assert_eq!(test.p_value, 0.03125);
    }

    #[test]
    fn auto_enumerates_signs_with_a_zero_up_to_thirteen_pairs() {
        let mut x = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 0.0,
        ];
        assert_eq!(auto(&x, &[0.0; 13]).method, WilcoxonMethod::Permutation);
        x[12] = 13.0;
        let mut x14 = x.to_vec();
        x14.push(0.0);
        assert_eq!(auto(&x14, &[0.0; 14]).method, WilcoxonMethod::Asymptotic);
    }

    #[test]
    fn auto_uses_the_normal_approximation_above_fifty_pairs() {
        let x: Vec<f64> = (1..=51).map(f64::from).collect();
        assert_eq!(auto(&x, &[0.0; 51]).method, WilcoxonMethod::Asymptotic);
    }

    #[test]
    fn permutation_counts_every_sign_assignment() {
        // |d| = [1, 1, 2], all positive: of the 8 assignments only the observed one reaches
        // W+ = 4, and only "all negative" reaches W+ = 0; p = 2 · 1/8.
        let test = auto(&[1.0, 1.0, 2.0], &[0.0; 3]);
        assert_eq!(test.method, WilcoxonMethod::Permutation);
        assert_eq!(test.p_value, 0.25);
    }

    #[test]
    fn all_zero_differences_give_p_one_when_enumerated_and_nan_when_approximated() {
        assert_eq!(auto(&[0.5; 4], &[0.5; 4]).p_value, 1.0);
        let asymptotic = WilcoxonOptions {
            method: Method::Asymptotic,
            ..Default::default()
        };
        let test = wilcoxon(&[0.5; 4], &[0.5; 4], &asymptotic).expect("valid samples");
        assert!(test.p_value.is_nan());
        assert_eq!(test.nonzero_pairs, 0);
    }

    #[test]
    fn samples_must_pair_up_and_be_finite() {
        let options = WilcoxonOptions::default();
        assert_eq!(
            wilcoxon(&[1.0], &[1.0, 2.0], &options),
            Err(WilcoxonError::LengthMismatch { x: 1, y: 2 })
        );
        assert_eq!(wilcoxon(&[], &[], &options), Err(WilcoxonError::NoPairs));
        assert!(matches!(
            wilcoxon(&[1.0, f64::INFINITY], &[0.0, 0.0], &options),
            Err(WilcoxonError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn six_nonzero_pairs_are_the_fewest_that_can_reach_five_percent() {
        assert_eq!(min_nonzero_pairs(0.05), 6);
        assert_eq!(min_nonzero_pairs(0.01), 8);
        // 2 / 2⁵ = 0.0625 is the smallest p-value five pairs can give.
        assert_eq!(auto(&[1.0, 2.0, 3.0, 4.0, 5.0], &[0.0; 5]).p_value, 0.0625);
    }

    #[test]
    fn equal_values_share_the_mean_of_their_ranks() {
        // Sorted: 1 (rank 1), 2 2 2 (ranks 2..4, mean 3), 5 (rank 5).
        let (twice_ranks, groups) = twice_average_ranks(&[2.0, 5.0, 2.0, 1.0, 2.0]);
        assert_eq!(twice_ranks, [6, 10, 6, 2, 6]);
        assert_eq!(groups, [1, 3, 1]);
    }

    #[test]
    fn rank_sum_distribution_of_three_ranks_matches_enumeration() {
        // Subsets of {1, 2, 3}: sums 0, 1, 2, 3, 3, 4, 5, 6.
        let pmf = rank_sum_pmf(&[1, 2, 3]);
        assert_eq!(pmf, vec![0.125, 0.125, 0.125, 0.25, 0.125, 0.125, 0.125]);
    }
}
