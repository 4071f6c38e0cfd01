//! Comparing a candidate model with a baseline on the subjects both evaluated: for every
//! structure and metric, a two-sided Wilcoxon signed-rank test of the paired per-subject values
//! (candidate − baseline), the Holm correction across the structures, and a verdict.
//!
//! The rules, in the order they apply:
//! - Rows pair by subject and structure; only subjects and structures in both tables enter.
//! - A test uses the pairs where both values are finite (NaN and infinite metrics, from empty
//!   structures, say nothing about a difference of size).
//! - The test is SciPy's `wilcoxon(candidate, baseline)` with its defaults (see
//!   [`crate::stats::wilcoxon::wilcoxon`]).
//! - A test with fewer non-zero differences than [`min_nonzero_pairs`]`(alpha)` could not reach
//!   significance even if every subject moved the same way: its verdict is `InsufficientData`
//!   and it stays out of the Holm family, so that it does not weaken the tests that can speak.
//! - Holm corrects, for each metric separately, across the structures that were tested.
//! - Where the corrected p-value is below alpha, the sign of the median difference (or, when
//!   that is zero, of W+ − W−) says whether the candidate is better or worse, Dice being better
//!   higher and distances lower.
//!
//! The module ends with the `voxel compare` command, which reads two `metrics.csv` files.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use thiserror::Error;
use voxel_crds::{
    common::MetricName,
    results::{
        Comparison, METRIC_NAMES, MetricComparison, StructureVerdict, Verdict, WilcoxonMethod,
        higher_is_better,
    },
};

use crate::{
    metrics_table::MetricsTable,
    stats::{
        DEFAULT_BOOTSTRAP_SAMPLES, WilcoxonOptions, holm, median, median_confidence_interval,
        min_nonzero_pairs, wilcoxon,
    },
};

/// The significance level applied to Holm-corrected p-values unless chosen otherwise.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// Confidence level of the bootstrap interval of the median difference.
pub const CONFIDENCE_LEVEL: f64 = 0.95;

/// How to compare.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareOptions {
    /// The metric whose test gives each structure its verdict (every metric is tested).
    pub primary_metric: MetricName,
    /// Significance level for the Holm-corrected p-values, in (0, 1).
    pub alpha: f64,
    /// Bootstrap resamples for the interval of each median difference; at least 1.
    pub bootstrap_samples: usize,
    /// Seed of the bootstrap draws; each structure and metric draws from its own stream.
    pub seed: u64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            primary_metric: MetricName::Dice,
            alpha: DEFAULT_ALPHA,
            bootstrap_samples: DEFAULT_BOOTSTRAP_SAMPLES,
            seed: 0,
        }
    }
}

/// Why two tables could not be compared.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum CompareError {
    /// Alpha is not a probability strictly between 0 and 1.
    #[error("alpha must lie strictly between 0 and 1, found {0}")]
    InvalidAlpha(f64),
    /// No bootstrap resamples were asked for.
    #[error("the bootstrap needs at least one resample, found 0")]
    NoBootstrapSamples,
    /// The two tables share no subject, so nothing pairs.
    #[error("{baseline} and {candidate} have no subject in common")]
    NoCommonSubjects {
        /// The baseline's label.
        baseline: String,
        /// The candidate's label.
        candidate: String,
    },
    /// The two tables share no structure.
    #[error(
        "{baseline} and {candidate} have no structure in common \
         (baseline: {}; candidate: {})",
        baseline_structures.join(", "), candidate_structures.join(", ")
    )]
    NoCommonStructures {
        /// The baseline's label.
        baseline: String,
        /// The candidate's label.
        candidate: String,
        /// The baseline's structures.
        baseline_structures: Vec<String>,
        /// The candidate's structures.
        candidate_structures: Vec<String>,
    },
}

/// Which subjects and structures two tables share, and which only one of them has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlap {
    /// Subjects in both tables, in the baseline's order.
    pub subjects: Vec<String>,
    /// Structures in both tables, in the baseline's order.
    pub structures: Vec<String>,
    /// Subjects only the baseline evaluated.
    pub subjects_only_in_baseline: Vec<String>,
    /// Subjects only the candidate evaluated.
    pub subjects_only_in_candidate: Vec<String>,
    /// Structures only the baseline has.
    pub structures_only_in_baseline: Vec<String>,
    /// Structures only the candidate has.
    pub structures_only_in_candidate: Vec<String>,
}

impl Overlap {
    /// The overlap of two tables.
    pub fn of(baseline: &MetricsTable, candidate: &MetricsTable) -> Self {
        let (subjects, subjects_only_in_baseline, subjects_only_in_candidate) =
            split(&baseline.subjects(), &candidate.subjects());
        let (structures, structures_only_in_baseline, structures_only_in_candidate) =
            split(&baseline.structures(), &candidate.structures());
        Self {
            subjects,
            structures,
            subjects_only_in_baseline,
            subjects_only_in_candidate,
            structures_only_in_baseline,
            structures_only_in_candidate,
        }
    }

    /// One sentence for each group of subjects or structures left out of the comparison.
    pub fn notes(&self) -> Vec<String> {
        [
            ("subject", "baseline", &self.subjects_only_in_baseline),
            ("subject", "candidate", &self.subjects_only_in_candidate),
            ("structure", "baseline", &self.structures_only_in_baseline),
            ("structure", "candidate", &self.structures_only_in_candidate),
        ]
        .into_iter()
        .filter(|(_, _, names)| !names.is_empty())
        .map(|(kind, side, names)| {
            let plural = if names.len() == 1 { "" } else { "s" };
            format!(
                "{kind}{plural} only in the {side}, not compared: {}",
                names.join(", ")
            )
        })
        .collect()
    }
}

/// (in both, only in the first, only in the second), each in the order of its table.
fn split(first: &[&str], second: &[&str]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let owned = |names: Vec<&&str>| names.into_iter().map(|n| n.to_string()).collect();
    let (both, only_first): (Vec<_>, Vec<_>) = first.iter().partition(|n| second.contains(n));
    let only_second = second.iter().filter(|n| !first.contains(n)).collect();
    (owned(both), owned(only_first), owned(only_second))
}

/// Compares `candidate` with `baseline`: one test per shared structure and metric, structures
/// in the baseline's order and metrics in the order of [`METRIC_NAMES`], and one verdict per
/// structure from the primary metric. The labels name the two models in the result.
pub fn compare_tables(
    baseline: &MetricsTable,
    candidate: &MetricsTable,
    baseline_label: &str,
    candidate_label: &str,
    options: &CompareOptions,
) -> Result<Comparison, CompareError> {
    validate(options)?;
    let overlap = Overlap::of(baseline, candidate);
    if overlap.subjects.is_empty() {
        return Err(CompareError::NoCommonSubjects {
            baseline: baseline_label.to_owned(),
            candidate: candidate_label.to_owned(),
        });
    }
    if overlap.structures.is_empty() {
        let owned = |names: Vec<&str>| names.into_iter().map(str::to_owned).collect();
        return Err(CompareError::NoCommonStructures {
            baseline: baseline_label.to_owned(),
            candidate: candidate_label.to_owned(),
            baseline_structures: owned(baseline.structures()),
            candidate_structures: owned(candidate.structures()),
        });
    }

    let mut tests = Vec::new();
    for structure in &overlap.structures {
        for metric in METRIC_NAMES {
            let pairs = finite_pairs(baseline, candidate, &overlap.subjects, structure, metric);
            tests.push(PairedTest::run(structure, metric, &pairs, options));
        }
    }
    for metric in METRIC_NAMES {
        correct_and_decide(&mut tests, metric, options.alpha);
    }

    let tests: Vec<MetricComparison> = tests.into_iter().map(|t| t.comparison).collect();
    let primary_metric = options.primary_metric.as_str();
    let verdicts = tests
        .iter()
        .filter(|t| t.metric == primary_metric)
        .map(|t| StructureVerdict {
            structure: t.structure.clone(),
            verdict: t.verdict,
        })
        .collect();
    Ok(Comparison {
        baseline: baseline_label.to_owned(),
        candidate: candidate_label.to_owned(),
        primary_metric: primary_metric.to_owned(),
        alpha: options.alpha,
        verdicts,
        tests,
    })
}

fn validate(options: &CompareOptions) -> Result<(), CompareError> {
    if !(options.alpha > 0.0 && options.alpha < 1.0) {
        return Err(CompareError::InvalidAlpha(options.alpha));
    }
    if options.bootstrap_samples == 0 {
        return Err(CompareError::NoBootstrapSamples);
    }
    Ok(())
}

/// (baseline, candidate) values of one structure and metric, for the subjects where both are
/// finite, in the order of `subjects`.
fn finite_pairs(
    baseline: &MetricsTable,
    candidate: &MetricsTable,
    subjects: &[String],
    structure: &str,
    metric: &str,
) -> Vec<(f64, f64)> {
    let value = |table: &MetricsTable, subject: &str| {
        table
            .row(subject, structure)
            .and_then(|row| row.metric(metric))
    };
    subjects
        .iter()
        .filter_map(|s| Some((value(baseline, s)?, value(candidate, s)?)))
        .filter(|(b, c)| b.is_finite() && c.is_finite())
        .collect()
}

/// One test before the Holm correction, with what the verdict needs besides.
struct PairedTest {
    comparison: MetricComparison,
    /// W+ − W−: positive when the candidate's values tend to be larger.
    rank_sum_balance: f64,
    /// Whether the test can speak (enough non-zero pairs, a p-value).
    sufficient: bool,
}

impl PairedTest {
    fn run(structure: &str, metric: &str, pairs: &[(f64, f64)], options: &CompareOptions) -> Self {
        let baseline: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let candidate: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let differences: Vec<f64> = pairs.iter().map(|(b, c)| c - b).collect();
        let interval = median_confidence_interval(
            &differences,
            options.bootstrap_samples,
            CONFIDENCE_LEVEL,
            options.seed,
            bootstrap_stream(structure, metric),
        );
        // Only an empty sample fails: the pairs are equal in number and finite.
        let test = wilcoxon(&candidate, &baseline, &WilcoxonOptions::default()).ok();
        let p_value = test.as_ref().map(|t| t.p_value).filter(|p| p.is_finite());
        let nonzero_pairs = test.as_ref().map_or(0, |t| t.nonzero_pairs);
        let sufficient = p_value.is_some() && nonzero_pairs >= min_nonzero_pairs(options.alpha);

        Self {
            comparison: MetricComparison {
                structure: structure.to_owned(),
                metric: metric.to_owned(),
                pairs: pairs.len() as u32,
                nonzero_pairs: nonzero_pairs as u32,
                median_difference: median(&differences),
                ci95_low: interval.map(|i| i.low),
                ci95_high: interval.map(|i| i.high),
                statistic: test.as_ref().map(|t| t.statistic),
                method: test.as_ref().map(|t| t.method),
                p_value,
                p_value_holm: None,
                verdict: Verdict::InsufficientData,
            },
            rank_sum_balance: test.map_or(0.0, |t| t.rank_sum_positive - t.rank_sum_negative),
            sufficient,
        }
    }
}

/// Applies Holm across the sufficient tests of `metric` and sets every verdict of that metric.
fn correct_and_decide(tests: &mut [PairedTest], metric: &str, alpha: f64) {
    let family: Vec<&mut PairedTest> = tests
        .iter_mut()
        .filter(|t| t.comparison.metric == metric && t.sufficient)
        .collect();
    // A sufficient test has a p-value, so `p_values` lines up with `family`.
    let p_values: Vec<f64> = family.iter().filter_map(|t| t.comparison.p_value).collect();
    // `metric` is one of METRIC_NAMES, all of which have a direction.
    let higher_better = higher_is_better(metric).unwrap_or(true);
    for (test, p_holm) in family.into_iter().zip(holm(&p_values)) {
        test.comparison.p_value_holm = Some(p_holm);
        test.comparison.verdict = if p_holm < alpha {
            let median = test.comparison.median_difference.unwrap_or(0.0);
            direction(median, test.rank_sum_balance, higher_better)
        } else {
            Verdict::NoSignificantDifference
        };
    }
}

/// Better or worse from the direction of the differences (candidate − baseline): the sign of
/// their median, or of W+ − W− when the median is zero.
fn direction(median_difference: f64, rank_sum_balance: f64, higher_is_better: bool) -> Verdict {
    let shift = if median_difference != 0.0 {
        median_difference
    } else {
        rank_sum_balance
    };
    if shift == 0.0 {
        Verdict::NoSignificantDifference
    } else if (shift > 0.0) == higher_is_better {
        Verdict::Better
    } else {
        Verdict::Worse
    }
}

/// The bootstrap stream of one structure and metric: FNV-1a of `structure`, a zero byte and
/// `metric`, so that a test's interval does not depend on which other tests run.
fn bootstrap_stream(structure: &str, metric: &str) -> u64 {
    let bytes = structure.bytes().chain([0]).chain(metric.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The comparison as a fixed-width text table: one line per structure and metric (the primary
/// metric marked `*`), then the verdict of each structure.
pub fn comparison_table(comparison: &Comparison) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "candidate: {}", comparison.candidate);
    let _ = writeln!(text, "baseline:  {}", comparison.baseline);
    let _ = writeln!(
        text,
        "Two-sided Wilcoxon signed-rank tests of candidate - baseline, paired by subject;\n\
         p Holm: corrected across structures for each metric; alpha {}; Dice as a fraction,\n\
         distances in mm; median difference with its {:.0}% bootstrap interval.\n",
        comparison.alpha,
        CONFIDENCE_LEVEL * 100.0
    );

    let mut rows = vec![TABLE_HEADER.map(str::to_owned)];
    let mut previous_structure = None;
    for test in &comparison.tests {
        let structure = if previous_structure == Some(&test.structure) {
            String::new()
        } else {
            test.structure.clone()
        };
        previous_structure = Some(&test.structure);
        rows.push(table_row(test, structure, &comparison.primary_metric));
    }
    text.push_str(&aligned(&rows));

    let _ = writeln!(
        text,
        "\n* primary metric. Verdict by structure ({}):",
        comparison.primary_metric
    );
    let width = comparison
        .verdicts
        .iter()
        .map(|v| v.structure.len())
        .max()
        .unwrap_or(0);
    for verdict in &comparison.verdicts {
        let _ = writeln!(
            text,
            "  {:width$}  {}",
            verdict.structure,
            verdict_text(verdict.verdict)
        );
    }
    text
}

const TABLE_HEADER: [&str; 9] = [
    "structure",
    "metric",
    "pairs",
    "nonzero",
    "median diff [95% CI]",
    "test",
    "p",
    "p Holm",
    "verdict",
];

/// Columns right-aligned in the table: the counts and p-values.
const RIGHT_ALIGNED: [bool; 9] = [false, false, true, true, false, false, true, true, false];

fn table_row(test: &MetricComparison, structure: String, primary: &str) -> [String; 9] {
    let marker = if test.metric == primary { " *" } else { "" };
    // Dice to 0.0001, distances to 0.001 mm; a value that rounds to zero shows as +0.
    let decimals = if test.metric.ends_with("_mm") { 3 } else { 4 };
    let number = |v: f64| {
        let shown = if (v * 10f64.powi(decimals as i32)).round() == 0.0 {
            0.0
        } else {
            v
        };
        format!("{shown:+.decimals$}")
    };
    let difference = match (test.median_difference, test.ci95_low, test.ci95_high) {
        (Some(m), Some(low), Some(high)) => {
            format!("{} [{}, {}]", number(m), number(low), number(high))
        }
        (Some(m), _, _) => number(m),
        _ => "-".to_owned(),
    };
    [
        structure,
        format!("{}{marker}", test.metric),
        test.pairs.to_string(),
        test.nonzero_pairs.to_string(),
        difference,
        test.method.map_or("-", method_text).to_owned(),
        test.p_value.map_or("-".to_owned(), p_text),
        test.p_value_holm.map_or("-".to_owned(), p_text),
        verdict_text(test.verdict).to_owned(),
    ]
}

/// The rows in columns two spaces apart, a rule of dashes under the first (the header).
fn aligned(rows: &[[String; 9]]) -> String {
    let mut widths = [0; 9];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i == 1 {
            let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            text.push_str(&rules.join("  "));
            text.push('\n');
        }
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .zip(RIGHT_ALIGNED)
            .map(|((cell, width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// p-values to four decimals, small ones in scientific notation.
fn p_text(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn method_text(method: WilcoxonMethod) -> &'static str {
    match method {
        WilcoxonMethod::Exact => "exact",
        WilcoxonMethod::Permutation => "permutation",
        WilcoxonMethod::Asymptotic => "normal",
    }
}

fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::NoSignificantDifference => "no significant difference",
        Verdict::InsufficientData => "insufficient data",
    }
}

// ------------------------------------------------------------------------ the command line

/// Exit status for input files that cannot be read or compared (the README's "invalid data").
const EXIT_INVALID_DATA: u8 = 65;

/// Arguments of `voxel compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline's per-subject metrics.csv, as voxel-trainer writes it.
    pub baseline: PathBuf,
    /// The candidate's per-subject metrics.csv.
    pub candidate: PathBuf,
    /// The metric whose test gives each structure its verdict.
    #[arg(long, default_value = MetricName::Dice.as_str(), value_parser = metric_parser())]
    pub metric: MetricName,
    /// Significance level for the Holm-corrected p-values.
    #[arg(long, default_value_t = DEFAULT_ALPHA, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Bootstrap resamples for each confidence interval.
    #[arg(long, default_value_t = DEFAULT_BOOTSTRAP_SAMPLES, value_parser = parse_resamples)]
    pub bootstrap_samples: usize,
    /// Seed of the bootstrap draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the comparison as JSON to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Every metric, in the order of [`METRIC_NAMES`].
const METRICS: [MetricName; 5] = [
    MetricName::Dice,
    MetricName::HausdorffMm,
    MetricName::Hausdorff95Mm,
    MetricName::Hausdorff95MaxDirectedMm,
    MetricName::MeanSurfaceDistanceMm,
];

/// The metric names of `metrics.csv` as possible values (listed in `--help`), as `MetricName`.
fn metric_parser() -> impl TypedValueParser<Value = MetricName> {
    PossibleValuesParser::new(METRIC_NAMES).try_map(|name| {
        let metric = METRICS.into_iter().find(|m| m.as_str() == name);
        metric.ok_or(format!("unknown metric `{name}`"))
    })
}

fn parse_alpha(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(alpha) if alpha > 0.0 && alpha < 1.0 => Ok(alpha),
        _ => Err(format!(
            "expected a number strictly between 0 and 1, found `{text}`"
        )),
    }
}

fn parse_resamples(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, found `{text}`"
        )),
    }
}

/// Runs `voxel compare`: prints the table on stdout, what was left unpaired on stderr, and
/// writes the JSON when asked. Exit status 0 whatever the verdicts, 65 for input files that
/// cannot be read or share no subject or structure, 1 when the JSON cannot be written.
pub fn run(args: &CompareArgs) -> ExitCode {
    let read = |path: &Path| MetricsTable::read(path).map_err(|e| e.to_string());
    let tables = read(&args.baseline).and_then(|b| Ok((b, read(&args.candidate)?)));
    let (baseline, candidate) = match tables {
        Ok(tables) => tables,
        Err(message) => return fail(&message, EXIT_INVALID_DATA),
    };

    let options = CompareOptions {
        primary_metric: args.metric,
        alpha: args.alpha,
        bootstrap_samples: args.bootstrap_samples,
        seed: args.seed,
    };
    let baseline_label = args.baseline.display().to_string();
    let candidate_label = args.candidate.display().to_string();
    let comparison = match compare_tables(
        &baseline,
        &candidate,
        &baseline_label,
        &candidate_label,
        &options,
    ) {
        Ok(comparison) => comparison,
        Err(e) => return fail(&e.to_string(), EXIT_INVALID_DATA),
    };

    for note in Overlap::of(&baseline, &candidate).notes() {
        eprintln!("note: {note}");
    }
    print!("{}", comparison_table(&comparison));

    if let Some(path) = &args.output
        && let Err(e) = write_json(path, &comparison)
    {
        return fail(&format!("cannot write {}: {e}", path.display()), 1);
    }
    ExitCode::SUCCESS
}

fn write_json(path: &Path, comparison: &Comparison) -> std::io::Result<()> {
    let mut json = serde_json::to_string_pretty(comparison)?;
    json.push('\n');
    std::fs::write(path, json)
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "subject,structure,dice,hausdorff_mm,hausdorff95_mm,\
                          hausdorff95_max_directed_mm,mean_surface_distance_mm\n";

    /// A table whose every metric of `structure` is `value(i)` for subject `s{i}`.
    fn table(rows: &[(&str, usize, f64)]) -> MetricsTable {
        let mut text = HEADER.to_owned();
        for (structure, subject, value) in rows {
            let v = value;
            text.push_str(&format!("s{subject},{structure},{v},{v},{v},{v},{v}\n"));
        }
        MetricsTable::from_reader(text.as_bytes(), Path::new("test.csv")).expect("valid table")
    }

    fn rows(structure: &'static str, values: &[f64]) -> Vec<(&'static str, usize, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (structure, i, *v))
            .collect()
    }

    fn compare(baseline: &MetricsTable, candidate: &MetricsTable) -> Comparison {
        compare_tables(
            baseline,
            candidate,
            "base",
            "cand",
            &CompareOptions::default(),
        )
        .expect("comparable tables")
    }

    fn find_test<'a>(
        comparison: &'a Comparison,
        structure: &str,
        metric: &str,
    ) -> &'a MetricComparison {
        let found = comparison
            .tests
            .iter()
            .find(|t| t.structure == structure && t.metric == metric);
        found.expect("test present")
    }

    const BASE: [f64; 8] = [0.80, 0.82, 0.84, 0.86, 0.81, 0.83, 0.85, 0.87];

    #[test]
    fn consistently_higher_dice_is_better_and_higher_distances_are_worse() {
        let gains = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08];
        let improved: Vec<f64> = BASE.iter().zip(gains).map(|(b, g)| b + g).collect();
        let comparison = compare(
            &table(&rows("liver", &BASE)),
            &table(&rows("liver", &improved)),
        );

        let dice = find_test(&comparison, "liver", "dice");
        assert_eq!(dice.pairs, 8);
        assert_eq!(dice.method, Some(WilcoxonMethod::Exact));
        assert_eq!(dice.p_value, Some(2.0 / 256.0));
        assert_eq!(dice.verdict, Verdict::Better);
        // The same numbers as a distance in mm: larger is worse.
        assert_eq!(
            find_test(&comparison, "liver", "hausdorff_mm").verdict,
            Verdict::Worse
        );
        assert_eq!(
            comparison.verdicts,
            [StructureVerdict {
                structure: "liver".into(),
                verdict: Verdict::Better
            }]
        );
        assert!(comparison.not_worse());
    }

    #[test]
    fn fewer_than_six_nonzero_differences_are_insufficient_data() {
        let candidate = [0.81, 0.83, 0.85, 0.87, 0.82, 0.83, 0.85, 0.87];
        let comparison = compare(
            &table(&rows("liver", &BASE)),
            &table(&rows("liver", &candidate)),
        );
        let dice = find_test(&comparison, "liver", "dice");
        assert_eq!((dice.pairs, dice.nonzero_pairs), (8, 5));
        assert_eq!(dice.verdict, Verdict::InsufficientData);
        assert_eq!(dice.p_value_holm, None);
        assert!(dice.p_value.is_some(), "the test itself still ran");
    }

    #[test]
    fn non_finite_values_leave_their_pair_out() {
        let mut candidate = BASE.map(|b| b + 0.01);
        candidate[0] = f64::NAN;
        candidate[1] = f64::INFINITY;
        let comparison = compare(
            &table(&rows("liver", &BASE)),
            &table(&rows("liver", &candidate)),
        );
        assert_eq!(find_test(&comparison, "liver", "dice").pairs, 6);
    }

    #[test]
    fn no_finite_pair_is_insufficient_data_not_an_error() {
        let comparison = compare(
            &table(&rows("liver", &BASE)),
            &table(&rows("liver", &[f64::NAN; 8])),
        );
        let dice = find_test(&comparison, "liver", "dice");
        assert_eq!(dice.pairs, 0);
        assert_eq!(dice.verdict, Verdict::InsufficientData);
        assert_eq!(
            (dice.p_value, dice.median_difference, dice.method),
            (None, None, None)
        );
    }

    #[test]
    fn holm_corrects_across_structures_of_one_metric() {
        // Both structures improve on 6 of 6 subjects: p = 2/64 each, 0.0625 after Holm.
        let base = &BASE[..6];
        let better: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + 0.01 * (i + 1) as f64)
            .collect();
        let baseline = table(&[rows("liver", base), rows("spleen", base)].concat());
        let candidate = table(&[rows("liver", &better), rows("spleen", &better)].concat());
        let comparison = compare(&baseline, &candidate);
        for structure in ["liver", "spleen"] {
            let dice = find_test(&comparison, structure, "dice");
            assert_eq!(dice.p_value, Some(0.03125));
            assert_eq!(dice.p_value_holm, Some(0.0625));
            assert_eq!(dice.verdict, Verdict::NoSignificantDifference);
        }
    }

    #[test]
    fn only_shared_subjects_and_structures_are_compared() {
        let baseline = table(&[rows("liver", &BASE), rows("kidney", &BASE)].concat());
        let mut candidate_rows = rows("liver", &BASE);
        candidate_rows.extend([("liver", 20, 0.5), ("spleen", 0, 0.9)]);
        let candidate = table(&candidate_rows);
        let comparison = compare(&baseline, &candidate);
        assert_eq!(comparison.verdicts.len(), 1);
        assert_eq!(find_test(&comparison, "liver", "dice").pairs, 8);

        let overlap = Overlap::of(&baseline, &candidate);
        assert_eq!(
            overlap.notes(),
            [
                "subject only in the candidate, not compared: s20",
                "structure only in the baseline, not compared: kidney",
                "structure only in the candidate, not compared: spleen",
            ]
        );
    }

    #[test]
    fn tables_without_a_common_subject_or_structure_cannot_be_compared() {
        let options = CompareOptions::default();
        let liver = table(&rows("liver", &BASE));
        let others = table(&[("liver", 100, 0.5)]);
        assert!(matches!(
            compare_tables(&liver, &others, "a", "b", &options),
            Err(CompareError::NoCommonSubjects { .. })
        ));
        let spleen = table(&rows("spleen", &BASE));
        assert_eq!(
            compare_tables(&liver, &spleen, "a", "b", &options)
                .unwrap_err()
                .to_string(),
            "a and b have no structure in common (baseline: liver; candidate: spleen)"
        );
    }

    #[test]
    fn options_are_checked() {
        let liver = table(&rows("liver", &BASE));
        let check = |options: CompareOptions| compare_tables(&liver, &liver, "a", "b", &options);
        let alpha = CompareOptions {
            alpha: 1.0,
            ..Default::default()
        };
        assert_eq!(check(alpha), Err(CompareError::InvalidAlpha(1.0)));
        let resamples = CompareOptions {
            bootstrap_samples: 0,
            ..Default::default()
        };
        assert_eq!(check(resamples), Err(CompareError::NoBootstrapSamples));
    }

    #[test]
    fn a_zero_median_takes_the_direction_of_the_rank_sums() {
        assert_eq!(direction(0.0, 3.0, true), Verdict::Better);
        assert_eq!(direction(0.0, 3.0, false), Verdict::Worse);
        assert_eq!(direction(-0.1, 3.0, false), Verdict::Better);
        assert_eq!(direction(0.0, 0.0, true), Verdict::NoSignificantDifference);
    }

    #[test]
    fn the_same_seed_gives_the_same_comparison() {
        let noisy = [0.81, 0.80, 0.86, 0.85, 0.83, 0.84, 0.86, 0.90];
        let (baseline, candidate) = (table(&rows("liver", &BASE)), table(&rows("liver", &noisy)));
        assert_eq!(
            compare(&baseline, &candidate),
            compare(&baseline, &candidate)
        );
    }

    #[test]
    fn the_table_has_a_line_per_test_and_a_verdict_per_structure() {
        let improved = BASE.map(|b| b + 0.02);
        let comparison = compare(
            &table(&rows("liver", &BASE)),
            &table(&rows("liver", &improved)),
        );
        let text = comparison_table(&comparison);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("structure"))
            .expect("header");
        assert!(lines[header + 1].starts_with("---------  ------"), "{text}");
        let dice = lines[header + 2];
        assert!(dice.starts_with("liver      dice *"), "{text}");
        assert!(dice.contains("+0.0200 [+0.0200, +0.0200]"), "{text}");
        let hausdorff = lines[header + 3];
        assert!(hausdorff.starts_with("           hausdorff_mm"), "{text}");
        assert!(hausdorff.contains("+0.020 [+0.020, +0.020]"), "{text}");
        assert!(text.ends_with("  liver  better\n"), "{text}");
    }
}
