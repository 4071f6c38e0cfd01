//! Subject-level split into training, validation and test sets.
//!
//! Splits are by subject, never by file: every image and mask of a subject lands in the same
//! set. Explicit lists win over fractions; the random split is a seeded shuffle of the sorted
//! subject identifiers, so it depends only on the set of subjects and the seed.

use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use voxel_crds::experiment::SplitSpec;

use crate::error::bad_config;

/// Subject identifiers of each set, each sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Subjects whose patches train the network.
    pub train: Vec<String>,
    /// Subjects scored after every epoch.
    pub validation: Vec<String>,
    /// Subjects held out for the final evaluation.
    pub test: Vec<String>,
}

/// Splits `subjects` (any order) as the spec says.
pub fn split_subjects(subjects: &[String], spec: &SplitSpec) -> anyhow::Result<Split> {
    let mut all: Vec<String> = subjects.to_vec();
    all.sort();
    all.dedup();
    for (field, list) in [
        ("testSubjects", &spec.test_subjects),
        ("validationSubjects", &spec.validation_subjects),
    ] {
        let unknown: Vec<&String> = list
            .iter()
            .filter(|s| all.binary_search(s).is_err())
            .collect();
        if !unknown.is_empty() {
            return Err(bad_config(format!(
                "spec.data.split.{field}: subjects {unknown:?} are not in the dataset"
            )));
        }
    }

    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut remaining: Vec<String> = all
        .iter()
        .filter(|s| !spec.test_subjects.contains(s) && !spec.validation_subjects.contains(s))
        .cloned()
        .collect();
    remaining.shuffle(&mut rng);
    let n = all.len() as f64;
    let mut take = |explicit: &Vec<String>, fraction: Option<f64>| -> Vec<String> {
        if !explicit.is_empty() {
            return explicit.clone();
        }
        let count = (fraction.unwrap_or(0.0) * n).round() as usize;
        let count = count.min(remaining.len());
        remaining.drain(..count).collect()
    };
    let mut test = take(&spec.test_subjects, spec.test_fraction);
    let mut validation = take(&spec.validation_subjects, spec.validation_fraction);
    let mut train = remaining;
    if train.is_empty() {
        return Err(bad_config(format!(
            "spec.data.split leaves no training subject out of {} subjects",
            all.len()
        )));
    }
    test.sort();
    validation.sort();
    train.sort();
    Ok(Split {
        train,
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:03}")).collect()
    }

    fn fractions(test: f64, validation: f64, seed: u64) -> SplitSpec {
        SplitSpec {
            test_fraction: Some(test),
            validation_fraction: Some(validation),
            seed,
            ..SplitSpec::default()
        }
    }

    #[test]
    fn fractions_partition_all_subjects() {
        let split = split_subjects(&ids(40), &fractions(0.2, 0.1, 1)).unwrap();
        assert_eq!(
            (split.test.len(), split.validation.len(), split.train.len()),
            (8, 4, 28)
        );
        let mut all: Vec<String> = [split.train, split.validation, split.test]
            .into_iter()
            .flatten()
            .collect();
        all.sort();
        assert_eq!(all, ids(40));
    }

    #[test]
    fn split_depends_on_seed_not_on_input_order() {
        let mut shuffled = ids(30);
        shuffled.reverse();
        let a = split_subjects(&ids(30), &fractions(0.2, 0.2, 5)).unwrap();
        let b = split_subjects(&shuffled, &fractions(0.2, 0.2, 5)).unwrap();
        let c = split_subjects(&ids(30), &fractions(0.2, 0.2, 6)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.test, c.test);
    }

    #[test]
    fn explicit_lists_win_and_unknown_subjects_are_named() {
        let spec = SplitSpec {
            test_subjects: vec!["s001".into()],
            validation_subjects: vec!["s002".into()],
            test_fraction: Some(0.5),
            ..SplitSpec::default()
        };
        let split = split_subjects(&ids(5), &spec).unwrap();
        assert_eq!(split.test, vec!["s001"]);
        assert_eq!(split.validation, vec!["s002"]);
        assert_eq!(split.train, vec!["s000", "s003", "s004"]);

        let bad = SplitSpec {
            test_subjects: vec!["nobody".into()],
            ..SplitSpec::default()
        };
        let err = split_subjects(&ids(5), &bad).unwrap_err().to_string();
        assert!(
            err.contains("spec.data.split.testSubjects") && err.contains("nobody"),
            "{err}"
        );
    }
}
