//! The Wilcoxon signed-rank test against SciPy 1.17.1's `scipy.stats.wilcoxon`: the two lists
//! of the project's shared reference set and 29 generated cases (exact, permutation and normal
//! regimes, ties, zeros, all-zero samples, explicit methods, continuity correction, Pratt and
//! zsplit). Statistic and p-value must agree to 1e-9 absolute; where SciPy returns NaN so must
//! we. The data and the script that generated it are in `tests/data/stats/`.

use std::path::PathBuf;

use serde::Deserialize;
use voxel_crds::results::WilcoxonMethod;
use voxel_operator::stats::{Method, WilcoxonOptions, ZeroMethod, wilcoxon};

const TOLERANCE: f64 = 1e-9;

#[derive(Deserialize)]
struct CaseFile {
    #[serde(default)]
    versions: Option<Versions>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Versions {
    scipy: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    x: Vec<f64>,
    y: Vec<f64>,
    auto_method: String,
    calls: Vec<Call>,
}

/// One SciPy call; `pvalue` is null where SciPy returned NaN.
#[derive(Deserialize)]
struct Call {
    kwargs: Kwargs,
    statistic: Option<f64>,
    pvalue: Option<f64>,
    error: Option<String>,
}

#[derive(Deserialize, Debug)]
struct Kwargs {
    method: Option<String>,
    zero_method: Option<String>,
    correction: Option<bool>,
}

impl Kwargs {
    fn options(&self) -> WilcoxonOptions {
        let method = match self.method.as_deref() {
            None | Some("auto") => Method::Auto,
            Some("exact") => Method::Exact,
            Some("asymptotic") => Method::Asymptotic,
            Some(other) => panic!("no such method in the reference data: {other}"),
        };
        let zero_method = match self.zero_method.as_deref() {
            None | Some("wilcox") => ZeroMethod::Wilcox,
            Some("pratt") => ZeroMethod::Pratt,
            Some("zsplit") => ZeroMethod::Zsplit,
            Some(other) => panic!("no such zero_method in the reference data: {other}"),
        };
        WilcoxonOptions {
            zero_method,
            method,
            correction: self.correction.unwrap_or(false),
        }
    }
}

fn load(file: &str) -> CaseFile {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "data", "stats", file]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// Every disagreement with SciPy, one line each.
fn disagreements(cases: &[Case]) -> Vec<String> {
    let mut found = Vec::new();
    for case in cases {
        for call in &case.calls {
            let label = format!("{} {:?}", case.name, call.kwargs);
            if let Some(error) = &call.error {
                found.push(format!(
                    "{label}: SciPy raised {error}; the data needs a look"
                ));
                continue;
            }
            let test = match wilcoxon(&case.x, &case.y, &call.kwargs.options()) {
                Ok(test) => test,
                Err(e) => {
                    found.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let statistic = call
                .statistic
                .expect("a statistic where SciPy did not raise");
            if (test.statistic - statistic).abs() > TOLERANCE {
                found.push(format!(
                    "{label}: statistic {} against {statistic}",
                    test.statistic
                ));
            }
            match call.pvalue {
                Some(p) if (test.p_value - p).abs() <= TOLERANCE => {}
                None if test.p_value.is_nan() => {}
                expected => found.push(format!("{label}: p {} against {expected:?}", test.p_value)),
            }
        }
    }
    found
}

fn method_name(method: WilcoxonMethod) -> &'static str {
    match method {
        WilcoxonMethod::Exact => "exact",
        WilcoxonMethod::Permutation => "permutation",
        WilcoxonMethod::Asymptotic => "asymptotic",
    }
}

#[test]
fn shipped_reference_lists_give_scipys_statistics_and_p_values() {
    let file = load("shipped_wilcoxon_reference.json");
    assert_eq!(file.cases.len(), 2);
    let found = disagreements(&file.cases);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn generated_cases_give_scipys_statistics_and_p_values() {
    let file = load("wilcoxon_cases.json");
    let scipy = file
        .versions
        .expect("the generator records its versions")
        .scipy;
    assert_eq!(scipy, "1.17.1");
    assert!(file.cases.len() >= 29, "{} cases", file.cases.len());
    let found = disagreements(&file.cases);
    assert!(
        found.is_empty(),
        "{} disagreements:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn auto_picks_the_method_scipy_picks() {
    let mut cases = load("shipped_wilcoxon_reference.json").cases;
    cases.extend(load("wilcoxon_cases.json").cases);
    for case in &cases {
        let test = wilcoxon(&case.x, &case.y, &WilcoxonOptions::default()).expect("valid case");
        assert_eq!(method_name(test.method), case.auto_method, "{}", case.name);
    }
}

#[test]
fn generated_cases_cover_every_regime_of_auto() {
    let cases = load("wilcoxon_cases.json").cases;
    for method in ["exact", "permutation", "asymptotic"] {
        let count = cases.iter().filter(|c| c.auto_method == method).count();
        assert!(count >= 4, "{count} cases for {method}");
    }
    let all_zero = cases.iter().filter(|c| c.x == c.y).count();
    assert!(all_zero >= 2, "{all_zero} all-zero cases");
    assert!(
        cases.iter().any(|c| c.x.len() > 50),
        "a case above 50 pairs"
    );
}
