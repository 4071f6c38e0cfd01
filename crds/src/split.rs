//! Subject-level split into training, validation and test sets: the meaning of
//! [`SplitSpec`].
//!
//! Splits are by subject, never by file: every image and mask of a subject lands in the same
//! set. Explicit lists win over fractions; the random split is a seeded shuffle of the sorted
//! subject identifiers, so it depends only on the set of subjects and the seed. The trainer and
//! the operator both call [`split_subjects`], so they agree on the held-out test set.

use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::experiment::SplitSpec;

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

/// Why the subjects cannot be split as the spec says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// An explicit list names subjects the dataset does not have.
    #[error("spec.data.split.{field}: subjects {subjects:?} are not in the dataset")]
    UnknownSubjects {
        /// `testSubjects` or `validationSubjects`.
        field: &'static str,
        /// The subjects not found, in the order listed.
        subjects: Vec<String>,
    },
    /// Nothing is left to train on.
    #[error("spec.data.split leaves no training subject out of {subjects} subjects")]
    NoTrainingSubjects {
        /// Distinct subjects in the dataset.
        subjects: usize,
    },
}

/// Splits `subjects` (any order, duplicates ignored) as the spec says.
pub fn split_subjects(subjects: &[String], spec: &SplitSpec) -> Result<Split, SplitError> {
    let mut all: Vec<String> = subjects.to_vec();
    all.sort();
    all.dedup();
    for (field, list) in [
        ("testSubjects", &spec.test_subjects),
        ("validationSubjects", &spec.validation_subjects),
    ] {
        let unknown: Vec<String> = list
            .iter()
            .filter(|s| all.binary_search(s).is_err())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(SplitError::UnknownSubjects {
                field,
                subjects: unknown,
            });
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
    // The test set is drawn first, so a test fraction holds out the same subjects whatever
    // the validation fraction is. (An explicit validation list changes `remaining`, and so
    // the draw: callers that vary validation lists pass the test set as an explicit list.)
    let mut test = take(&spec.test_subjects, spec.test_fraction);
    let mut validation = take(&spec.validation_subjects, spec.validation_fraction);
    let mut train = remaining;
    if train.is_empty() {
        return Err(SplitError::NoTrainingSubjects {
            subjects: all.len(),
        });
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
    fn the_test_set_does_not_depend_on_the_validation_settings() {
        let with = split_subjects(&ids(30), &fractions(0.2, 0.2, 5)).unwrap();
        let without = SplitSpec {
            validation_fraction: None,
            ..fractions(0.2, 0.0, 5)
        };
        let without = split_subjects(&ids(30), &without).unwrap();
        assert_eq!(with.test, without.test);
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
        let err = split_subjects(&ids(5), &bad).unwrap_err();
        assert_eq!(
            err,
            SplitError::UnknownSubjects {
                field: "testSubjects",
                subjects: vec!["nobody".into()],
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("spec.data.split.testSubjects") && message.contains("nobody"),
            "{message}"
        );
    }

    #[test]
    fn a_split_without_training_subjects_is_refused() {
        let spec = SplitSpec {
            test_subjects: vec!["s000".into()],
            validation_subjects: vec!["s001".into()],
            ..SplitSpec::default()
        };
        let err = split_subjects(&ids(2), &spec).unwrap_err();
        assert_eq!(err, SplitError::NoTrainingSubjects { subjects: 2 });
    }
}
