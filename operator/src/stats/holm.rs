//! The Holm–Bonferroni step-down correction for a family of tests.

/// Holm-adjusted p-values, in the order of `p_values`: with the m p-values sorted ascending,
/// the k-th smallest (from 0) becomes (m − k) · p, made non-decreasing along that order and
/// capped at 1. Rejecting where the adjusted value is below alpha controls the family-wise
/// error rate at alpha. The same values as statsmodels' `multipletests(p, method='holm')[1]`.
///
/// The p-values must be probabilities (finite, in [0, 1]).
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    debug_assert!(
        p_values.iter().all(|p| (0.0..=1.0).contains(p)),
        "{p_values:?}"
    );
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));

    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        running_max = running_max.max((m - k) as f64 * p_values[i]);
        adjusted[i] = running_max.min(1.0);
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_p_value_is_multiplied_by_the_family_size() {
        // Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.2·1 = 0.2.
        let adjusted = holm(&[0.01, 0.2, 0.005, 0.03]);
        let expected = [0.03, 0.2, 0.02, 0.06];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!((a - e).abs() < 1e-15, "{adjusted:?}");
        }
    }

    #[test]
    fn adjusted_values_never_decrease_along_the_sorted_order() {
        // 0.04·2 = 0.08 then 0.05·1 = 0.05, raised to 0.08.
        assert_eq!(holm(&[0.05, 0.04]), vec![0.08, 0.08]);
    }

    #[test]
    fn adjusted_values_are_capped_at_one() {
        assert_eq!(holm(&[0.6, 0.7]), vec![1.0, 1.0]);
    }

    #[test]
    fn a_single_test_is_left_as_it_is() {
        assert_eq!(holm(&[0.03]), vec![0.03]);
        assert!(holm(&[]).is_empty());
    }

    /// Cases from `tests/data/stats/holm_cases.json`, written by `generate_wilcoxon_cases.py`
    /// with statsmodels 0.15.0: `multipletests(p, alpha=0.05, method='holm')[1]`. Tolerance
    /// 1e-12 absolute (the products are the same floating-point operations).
    #[test]
    fn matches_statsmodels_multipletests_holm() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/stats/holm_cases.json"))
                .expect("holm_cases.json parses");
        let cases = json["cases"].as_array().expect("a list of cases");
        assert!(!cases.is_empty());
        for case in cases {
            let numbers = |key: &str| -> Vec<f64> {
                let values = case[key].as_array().expect("a list");
                values
                    .iter()
                    .map(|v| v.as_f64().expect("a number"))
                    .collect()
            };
            let adjusted = holm(&numbers("pvalues"));
            for (a, e) in adjusted.iter().zip(numbers("holm")) {
                assert!((a - e).abs() < 1e-12, "{case}: got {adjusted:?}");
            }
        }
    }
}
