//! Subject-level split into training, validation and test sets: the meaning of
//! [`SplitSpec`], and the fold assignment of a cross-validation.
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
    /// The subjects outside the test set cannot be dealt into the folds asked for.
    #[error("spec.data.split.fold: {0}")]
    Folds(FoldError),
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
    let (mut validation, mut train) = match &spec.fold {
        // One fold of the deal of the subjects outside the test set validates; the rest train.
        Some(fold) => {
            let mut folds =
                assign_folds(&remaining, fold.folds, fold.seed).map_err(SplitError::Folds)?;
            let index = fold.index as usize;
            if index >= folds.len() {
                return Err(SplitError::Folds(FoldError::NoSuchFold {
                    index: fold.index,
                    folds: fold.folds,
                }));
            }
            let validation = folds.remove(index);
            (validation, folds.into_iter().flatten().collect())
        }
        None => (
            take(&spec.validation_subjects, spec.validation_fraction),
            remaining,
        ),
    };
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

/// Why subjects cannot be dealt into folds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// Fewer subjects than folds would leave a fold empty.
    #[error("{folds} folds need at least {folds} subjects outside the test set, found {subjects}")]
    TooFewSubjects {
        /// Folds asked for.
        folds: u32,
        /// Subjects available.
        subjects: usize,
    },
    /// One fold cannot validate anything: there is no training set left.
    #[error("at least 2 folds are needed, found {0}")]
    TooFewFolds(u32),
    /// The fold asked for is not one of them.
    #[error("fold {index} does not exist: folds are numbered from 0 to {}", folds - 1)]
    NoSuchFold {
        /// The fold asked for.
        index: u32,
        /// Folds there are.
        folds: u32,
    },
}

/// Deals the subjects (any order, duplicates ignored) into `folds` folds, each sorted.
///
/// Folds are made of subjects, never of files, so that every image of a subject lands in the
/// same fold. The deal is a seeded shuffle of the sorted subject identifiers dealt out in turn,
/// so it depends only on the set of subjects, the number of folds and the seed. Fold `f` of the
/// result holds the subjects that validate fold `f`; the other folds train it. Fold sizes differ
/// by at most one subject.
pub fn assign_folds(
    subjects: &[String],
    folds: u32,
    seed: u64,
) -> Result<Vec<Vec<String>>, FoldError> {
    if folds < 2 {
        return Err(FoldError::TooFewFolds(folds));
    }
    let mut shuffled: Vec<String> = subjects.to_vec();
    shuffled.sort();
    shuffled.dedup();
    if shuffled.len() < folds as usize {
        return Err(FoldError::TooFewSubjects {
            folds,
            subjects: shuffled.len(),
        });
    }

    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut assignment = vec![Vec::new(); folds as usize];
    for (position, subject) in shuffled.into_iter().enumerate() {
        assignment[position % folds as usize].push(subject);
    }
    for fold in &mut assignment {
        fold.sort();
    }
    Ok(assignment)
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
    fn a_fold_validates_on_its_share_of_the_deal_of_the_subjects_outside_the_test_set() {
        use crate::experiment::FoldSelection;
        let subjects = ids(23);
        let base = fractions(0.2, 0.0, 5);
        let plain = split_subjects(&subjects, &base).unwrap();
        let pool: Vec<String> = subjects
            .iter()
            .filter(|s| !plain.test.contains(s))
            .cloned()
            .collect();
        let folds = assign_folds(&pool, 3, 11).unwrap();
        let mut validated = Vec::new();
        for index in 0..3 {
            let spec = SplitSpec {
                validation_fraction: None,
                fold: Some(FoldSelection {
                    folds: 3,
                    index,
                    seed: 11,
                }),
                ..base.clone()
            };
            let split = split_subjects(&subjects, &spec).unwrap();
            assert_eq!(split.test, plain.test, "fold {index}: the same test set");
            assert_eq!(split.validation, folds[index as usize]);
            let mut train: Vec<String> = folds
                .iter()
                .enumerate()
                .filter(|(f, _)| *f != index as usize)
                .flat_map(|(_, fold)| fold.clone())
                .collect();
            train.sort();
            assert_eq!(split.train, train);
            validated.extend(split.validation);
        }
        validated.sort();
        assert_eq!(
            validated, pool,
            "every subject outside the test set validates once"
        );

        let missing = SplitSpec {
            fold: Some(FoldSelection {
                folds: 3,
                index: 3,
                seed: 0,
            }),
            ..base.clone()
        };
        let message = split_subjects(&subjects, &missing).unwrap_err().to_string();
        assert_eq!(
            message,
            "spec.data.split.fold: fold 3 does not exist: folds are numbered from 0 to 2"
        );
        let too_many = SplitSpec {
            fold: Some(FoldSelection {
                folds: 20,
                index: 0,
                seed: 0,
            }),
            ..base
        };
        let message = split_subjects(&ids(10), &too_many).unwrap_err().to_string();
        assert!(
            message.contains("20 folds need at least 20 subjects"),
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
