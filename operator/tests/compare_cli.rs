//! `voxel compare` end to end: the built binary on two trainer-shaped metrics.csv files (12
//! paired subjects, 2 structures, NaN and inf values, a subject only in the candidate). The
//! p-values must be SciPy 1.17.1's `wilcoxon(candidate, baseline)` on the finite pairs and the
//! Holm values statsmodels' (`tests/data/stats/compare_expected.json`, from
//! `generate_wilcoxon_cases.py`), to 1e-9 absolute.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde::Deserialize;
use voxel_crds::results::{Comparison, Verdict};

const TOLERANCE: f64 = 1e-9;

fn data(file: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests", "data", "stats", file]
        .iter()
        .collect()
}

fn voxel_compare(args: &[&Path], options: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxel"))
        .arg("compare")
        .args(args)
        .args(options)
        .output()
        .expect("voxel runs")
}

#[derive(Deserialize)]
struct Expected {
    tests: Vec<ExpectedTest>,
}

#[derive(Deserialize)]
struct ExpectedTest {
    structure: String,
    metric: String,
    pairs: u32,
    nonzero_pairs: u32,
    median_difference: f64,
    statistic: f64,
    pvalue: f64,
    pvalue_holm: f64,
}

fn compare_fixtures(output: &Path) -> (Output, Comparison) {
    let run = voxel_compare(
        &[
            &data("compare_baseline_metrics.csv"),
            &data("compare_candidate_metrics.csv"),
        ],
        &["--output", output.to_str().expect("UTF-8 path")],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let json = std::fs::read_to_string(output).expect("the JSON was written");
    (
        run,
        serde_json::from_str(&json).expect("the JSON is a Comparison"),
    )
}

#[test]
fn p_values_are_scipys_and_holm_values_statsmodels() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (_, comparison) = compare_fixtures(&folder.path().join("comparison.json"));
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(data("compare_expected.json")).unwrap())
            .expect("compare_expected.json parses");

    assert_eq!(comparison.tests.len(), expected.tests.len());
    for e in &expected.tests {
        let label = format!("{} {}", e.structure, e.metric);
        let test = comparison
            .tests
            .iter()
            .find(|t| t.structure == e.structure && t.metric == e.metric)
            .unwrap_or_else(|| panic!("no test for {label}"));
        assert_eq!(
            (test.pairs, test.nonzero_pairs),
            (e.pairs, e.nonzero_pairs),
            "{label}"
        );
        let close = |value: Option<f64>, reference: f64| {
            value.is_some_and(|v| (v - reference).abs() <= TOLERANCE)
        };
        assert!(
            close(test.statistic, e.statistic),
            "{label}: {:?}",
            test.statistic
        );
        assert!(
            close(test.p_value, e.pvalue),
            "{label}: p {:?}",
            test.p_value
        );
        assert!(
            close(test.p_value_holm, e.pvalue_holm),
            "{label}: {:?}",
            test.p_value_holm
        );
        assert!(
            close(test.median_difference, e.median_difference),
            "{label}"
        );
    }
}

#[test]
fn candidate_is_better_on_the_anterior_structure_only() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (run, comparison) = compare_fixtures(&folder.path().join("comparison.json"));

    let verdicts: Vec<(&str, Verdict)> = comparison
        .verdicts
        .iter()
        .map(|v| (v.structure.as_str(), v.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("anterior", Verdict::Better),
            ("posterior", Verdict::NoSignificantDifference)
        ]
    );
    assert_eq!(comparison.primary_metric, "dice");
    assert_eq!(comparison.alpha, 0.05);

    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("anterior   better"), "{stdout}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("only in the candidate, not compared: hippocampus_013"),
        "{stderr}"
    );
}

#[test]
fn a_bad_value_exits_65_naming_the_file_line_and_column() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let bad = folder.path().join("metrics.csv");
    let header = "subject,structure,dice,hausdorff_mm,hausdorff95_mm,\
                  hausdorff95_max_directed_mm,mean_surface_distance_mm";
    let rows = "s1,liver,0.9,3.5,2.0,2.5,0.7\ns2,liver,0.9O,3.5,2.0,2.5,0.7";
    std::fs::write(&bad, format!("{header}\n{rows}\n")).expect("fixture written");

    let run = voxel_compare(&[&data("compare_baseline_metrics.csv"), &bad], &[]);
    assert_eq!(run.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&run.stderr);
    let expected = format!(
        "error: {}: line 3, column dice: expected a number, NaN, inf or -inf, found `0.9O`",
        bad.display()
    );
    assert_eq!(stderr.trim_end(), expected);
}

#[test]
fn an_alpha_outside_zero_and_one_is_a_usage_error() {
    let baseline = data("compare_baseline_metrics.csv");
    let run = voxel_compare(&[&baseline, &baseline], &["--alpha", "1.5"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("expected a number strictly between 0 and 1, found `1.5`"),
        "{stderr}"
    );
}
