//! Fold assignment: which subjects validate each fold of a cross-validation.
//!
//! Folds are made of subjects, never of files, so that every image of a subject lands in the same
//! fold. The assignment is a seeded shuffle of the sorted subject identifiers dealt out in turn,
//! so it depends only on the set of subjects, the number of folds and the seed: the order of the
//! dataset CSV does not matter, and changing the seed changes the folds. Fold sizes differ by at
//! most one subject.

pub use voxel_crds::split::{FoldError, assign_folds};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn subjects(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("subject_{i:03}")).collect()
    }

    #[test]
    fn every_subject_lands_in_exactly_one_fold() {
        let all = subjects(41);
        let folds = assign_folds(&all, 5, 3).unwrap();
        let mut seen = BTreeSet::new();
        for fold in &folds {
            for subject in fold {
                assert!(seen.insert(subject.clone()), "{subject} is in two folds");
            }
        }
        assert_eq!(seen, all.into_iter().collect());
    }

    #[test]
    fn fold_sizes_differ_by_at_most_one() {
        let folds = assign_folds(&subjects(41), 5, 3).unwrap();
        let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 41);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }

    #[test]
    fn assignment_ignores_input_order_and_duplicates() {
        let all = subjects(20);
        let mut shuffled: Vec<String> = all.iter().rev().cloned().collect();
        shuffled.push(all[4].clone());
        assert_eq!(
            assign_folds(&all, 3, 9).unwrap(),
            assign_folds(&shuffled, 3, 9).unwrap()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_folds_and_another_seed_other_folds() {
        let all = subjects(30);
        assert_eq!(
            assign_folds(&all, 3, 1).unwrap(),
            assign_folds(&all, 3, 1).unwrap()
        );
        assert_ne!(
            assign_folds(&all, 3, 1).unwrap(),
            assign_folds(&all, 3, 2).unwrap()
        );
    }

    #[test]
    fn assignment_is_stable_across_releases() {
        // Pinned: a change of RNG or algorithm would silently move subjects between the folds of
        // experiments that were already run and published.
        let folds = assign_folds(&subjects(7), 3, 42).unwrap();
        let expected: Vec<Vec<String>> = vec![
            vec![
                "subject_002".into(),
                "subject_003".into(),
                "subject_004".into(),
            ],
            vec!["subject_001".into(), "subject_006".into()],
            vec!["subject_000".into(), "subject_005".into()],
        ];
        assert_eq!(folds, expected, "fold assignment changed: {folds:?}");
    }

    #[test]
    fn too_few_subjects_or_folds_are_refused() {
        assert_eq!(
            assign_folds(&subjects(2), 3, 0),
            Err(FoldError::TooFewSubjects {
                folds: 3,
                subjects: 2
            })
        );
        assert_eq!(
            assign_folds(&subjects(10), 1, 0),
            Err(FoldError::TooFewFolds(1))
        );
    }
}
