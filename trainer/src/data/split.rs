//! Subject-level split into training, validation and test sets.
//!
//! The split is the meaning of `spec.data.split`, so it lives in `voxel-crds`
//! ([`voxel_crds::split`]), where the operator computes the same held-out test set without
//! linking LibTorch. Here its errors become configuration errors (exit code 78).

use voxel_crds::experiment::SplitSpec;
pub use voxel_crds::split::Split;

use crate::error::bad_config;

/// Splits `subjects` (any order) as the spec says; an impossible split is a configuration
/// error.
pub fn split_subjects(subjects: &[String], spec: &SplitSpec) -> anyhow::Result<Split> {
    voxel_crds::split::split_subjects(subjects, spec).map_err(|e| bad_config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_BAD_CONFIG, exit_code_for};

    #[test]
    fn an_impossible_split_is_a_configuration_error() {
        let subjects: Vec<String> = ["s000", "s001"].map(String::from).to_vec();
        let spec = SplitSpec {
            test_subjects: vec!["nobody".into()],
            ..SplitSpec::default()
        };
        let err = split_subjects(&subjects, &spec).unwrap_err();
        assert_eq!(exit_code_for(&err), EXIT_BAD_CONFIG);
        assert!(
            err.to_string().contains("spec.data.split.testSubjects"),
            "{err}"
        );
    }
}
