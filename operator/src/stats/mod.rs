//! The statistics of baseline comparisons: the Wilcoxon signed-rank test of paired per-subject
//! metrics, the Holm correction across structures, and a bootstrap interval for the median
//! paired difference. Pure functions of numbers; nothing here reads files or knows metrics.

pub mod bootstrap;
pub mod holm;
pub mod wilcoxon;

pub use bootstrap::{DEFAULT_BOOTSTRAP_SAMPLES, Interval, median, median_confidence_interval};
pub use holm::holm;
pub use wilcoxon::{
    Method, WilcoxonError, WilcoxonOptions, WilcoxonTest, ZeroMethod, min_nonzero_pairs, wilcoxon,
};
