//! Result types that appear in the status of Experiments, CrossValidations and Ensembles and in
//! published Models: metric summaries and baseline comparisons.
//!
//! Conventions (the same in every file and table): Dice is a fraction in [0, 1]; distances are in
//! millimetres. Means and standard deviations are taken over finite values only; the counts say
//! how many values entered and how many were NaN (structure empty in both masks) or infinite
//! (empty in exactly one).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names of the per-subject metrics, as in the columns of `metrics.csv`.
pub const METRIC_NAMES: [&str; 5] = [
    "dice",
    "hausdorff_mm",
    "hausdorff95_mm",
    "hausdorff95_max_directed_mm",
    "mean_surface_distance_mm",
];

/// Whether a larger value of the metric named as in `metrics.csv` is better (Dice) or worse
/// (the distances). `None` for an unknown name.
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "dice" => Some(true),
        "hausdorff_mm"
        | "hausdorff95_mm"
        | "hausdorff95_max_directed_mm"
        | "mean_surface_distance_mm" => Some(false),
        _ => None,
    }
}

/// Mean and spread of one metric over subjects (or over folds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricAggregate {
    /// Mean over the finite values; absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1) over the finite values; absent with fewer than two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Number of finite values that entered the mean (absent from a trainer summary cut short
    /// to fit a termination message).
    #[serde(default)]
    pub count: u32,
    /// Number of NaN values left out (structure empty in both prediction and ground truth).
    #[serde(default)]
    pub nan: u32,
    /// Number of infinite values left out (structure empty in exactly one of them).
    #[serde(default)]
    pub infinite: u32,
}

impl MetricAggregate {
    /// Aggregates values, leaving NaN and infinite ones out of the mean and counting them.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut finite = Vec::new();
        let mut aggregate = Self::default();
        for value in values {
            if value.is_nan() {
                aggregate.nan += 1;
            } else if value.is_infinite() {
                aggregate.infinite += 1;
            } else {
                finite.push(value);
            }
        }
        aggregate.count = finite.len() as u32;
        if !finite.is_empty() {
            let n = finite.len() as f64;
            let mean = finite.iter().sum::<f64>() / n;
            aggregate.mean = Some(mean);
            if finite.len() > 1 {
                let squares: f64 = finite.iter().map(|v| (v - mean).powi(2)).sum();
                aggregate.std = Some((squares / (n - 1.0)).sqrt());
            }
        }
        aggregate
    }
}

/// The summary of every metric of one structure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StructureSummary {
    /// The structure, as named in `spec.model.structures`.
    pub structure: String,
    /// Dice overlap, a fraction in [0, 1].
    pub dice: MetricAggregate,
    /// Hausdorff distance in mm.
    pub hausdorff_mm: MetricAggregate,
    /// 95th percentile of both directions' surface distances pooled, in mm (MedPy's HD95).
    pub hausdorff95_mm: MetricAggregate,
    /// The larger of the two directed 95th percentiles, in mm (MONAI's HD95).
    pub hausdorff95_max_directed_mm: MetricAggregate,
    /// Mean of both directions' surface distances pooled, in mm (symmetric ASSD).
    pub mean_surface_distance_mm: MetricAggregate,
}

impl StructureSummary {
    /// The aggregate of the metric named as in `metrics.csv`.
    pub fn metric(&self, name: &str) -> Option<&MetricAggregate> {
        Some(match name {
            "dice" => &self.dice,
            "hausdorff_mm" => &self.hausdorff_mm,
            "hausdorff95_mm" => &self.hausdorff95_mm,
            "hausdorff95_max_directed_mm" => &self.hausdorff95_max_directed_mm,
            "mean_surface_distance_mm" => &self.mean_surface_distance_mm,
            _ => return None,
        })
    }

    /// The aggregate of the metric named as in `metrics.csv`, for writing.
    pub fn metric_mut(&mut self, name: &str) -> Option<&mut MetricAggregate> {
        Some(match name {
            "dice" => &mut self.dice,
            "hausdorff_mm" => &mut self.hausdorff_mm,
            "hausdorff95_mm" => &mut self.hausdorff95_mm,
            "hausdorff95_max_directed_mm" => &mut self.hausdorff95_max_directed_mm,
            "mean_surface_distance_mm" => &mut self.mean_surface_distance_mm,
            _ => return None,
        })
    }
}

/// The outcome of comparing a candidate with a baseline on one structure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// Significantly better after the Holm correction.
    Better,
    /// Significantly worse after the Holm correction.
    Worse,
    /// No significant difference after the Holm correction.
    NoSignificantDifference,
    /// Too few subjects with a non-zero paired difference for the test to say anything.
    InsufficientData,
}

/// How the p-value of a Wilcoxon signed-rank test was computed (SciPy's `method='auto'`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WilcoxonMethod {
    /// The exact null distribution of the statistic (no ties, no zeros, n <= 50).
    Exact,
    /// Every sign assignment enumerated (ties or zeros, n <= 13).
    Permutation,
    /// Normal approximation with the tie correction.
    Asymptotic,
}

/// The paired test of one metric of one structure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricComparison {
    /// The structure compared.
    pub structure: String,
    /// The metric compared, named as in `metrics.csv`.
    pub metric: String,
    /// Subjects scored by both models with a finite value of this metric.
    pub pairs: u32,
    /// Pairs whose difference is not zero (the sample size of the test).
    pub nonzero_pairs: u32,
    /// Median of candidate minus baseline over the pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_difference: Option<f64>,
    /// Lower end of the seeded bootstrap 95% confidence interval of the median difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_low: Option<f64>,
    /// Upper end of the seeded bootstrap 95% confidence interval of the median difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_high: Option<f64>,
    /// The Wilcoxon statistic, min(W+, W-).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// How the p-value was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WilcoxonMethod>,
    /// Two-sided p-value of the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The p-value after the Holm correction across the structures compared on this metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value_holm: Option<f64>,
    /// Better, worse, no significant difference, or insufficient data.
    pub verdict: Verdict,
}

/// The verdict on one structure, from the comparison's primary metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StructureVerdict {
    /// The structure.
    pub structure: String,
    /// The verdict of the primary metric's test on this structure.
    pub verdict: Verdict,
}

/// A candidate compared with a baseline, paired by subject.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// The baseline, for example `hippocampus:1`, `hippocampus@production` or a file path.
    pub baseline: String,
    /// The candidate, in the same form.
    pub candidate: String,
    /// The metric whose test gives each structure its verdict.
    pub primary_metric: String,
    /// Significance level applied to the Holm-corrected p-values.
    pub alpha: f64,
    /// One verdict per structure, from the primary metric.
    pub verdicts: Vec<StructureVerdict>,
    /// Every test: one per structure and metric.
    pub tests: Vec<MetricComparison>,
}

impl Comparison {
    /// True when no structure's verdict is `Worse`.
    pub fn not_worse(&self) -> bool {
        self.verdicts.iter().all(|v| v.verdict != Verdict::Worse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_leaves_out_and_counts_non_finite_values() {
        let aggregate = MetricAggregate::of([1.0, 3.0, f64::NAN, f64::INFINITY, 2.0]);
        assert_eq!(aggregate.count, 3);
        assert_eq!(aggregate.nan, 1);
        assert_eq!(aggregate.infinite, 1);
        assert_eq!(aggregate.mean, Some(2.0));
        assert_eq!(aggregate.std, Some(1.0));
    }

    #[test]
    fn aggregate_of_one_value_has_no_spread() {
        let aggregate = MetricAggregate::of([0.5]);
        assert_eq!(aggregate.mean, Some(0.5));
        assert_eq!(aggregate.std, None);
    }
}
