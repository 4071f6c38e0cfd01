//! The decisions of a cross-validation: which fold runs start next, when to build the ensemble,
//! and when the whole run has succeeded or failed.
//!
//! These functions are pure: they look at what is known of the folds and the ensemble and say
//! what should happen next. Local mode calls them after every change of a trainer process; the
//! cluster controller calls them on every reconcile. Because the ensemble is started only when
//! the observation says it has not started yet, and that observation is recorded before the next
//! decision, the ensemble is built exactly once whatever order the folds finish in.

/// What is known of one fold's training run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldState {
    /// Not started yet, or a failed attempt that may be retried.
    Pending,
    /// A trainer is running it.
    Running,
    /// Trained and evaluated.
    Succeeded,
    /// The last attempt failed.
    Failed {
        /// A failure that retrying cannot fix (invalid data or configuration).
        permanent: bool,
        /// The trainer's message.
        message: String,
    },
}

/// What is known of one fold, with its history of failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldObservation {
    /// The latest state.
    pub state: FoldState,
    /// Failed attempts so far (including the latest when the state is `Failed`).
    pub failures: u32,
}

impl FoldObservation {
    /// A fold that has not started.
    pub fn pending() -> Self {
        Self {
            state: FoldState::Pending,
            failures: 0,
        }
    }
}

/// What is known of a stage that runs once (the ensemble).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StageState {
    /// Not started.
    #[default]
    NotStarted,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed.
    Failed,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// One entry per fold, in fold order.
    pub folds: Vec<FoldObservation>,
    /// Whether the spec asks for an ensemble of the fold models.
    pub ensemble_enabled: bool,
    /// The ensemble's state (`NotStarted` when disabled).
    pub ensemble: StageState,
}

/// Limits the decision respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many folds run at once.
    pub parallelism: u32,
    /// A fold that failed for a reason that may pass is retried this many times.
    pub retries: u32,
}

/// How the cross-validation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every fold (and the ensemble, when asked for) succeeded.
    Succeeded,
    /// A fold or the ensemble failed for good.
    Failed {
        /// What failed and why, for the `Failed` condition.
        reason: String,
    },
}

/// What should happen now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Folds to start (or restart) now, in fold order.
    pub start_folds: Vec<u32>,
    /// Running folds to stop because the cross-validation has failed.
    pub stop_folds: Vec<u32>,
    /// Start the ensemble now.
    pub start_ensemble: bool,
    /// Set when the cross-validation is over.
    pub outcome: Option<Outcome>,
}

/// Decides the next step of a cross-validation from what is known of it.
pub fn decide(observation: &Observation, limits: Limits) -> Decision {
    let mut decision = Decision::default();
    let running: Vec<u32> = fold_numbers(observation, |s| *s == FoldState::Running);

    if let Some(reason) = terminal_failure(observation, limits) {
        decision.stop_folds = running;
        decision.outcome = Some(Outcome::Failed { reason });
        return decision;
    }

    let free = (limits.parallelism as usize).saturating_sub(running.len());
    decision.start_folds = observation
        .folds
        .iter()
        .enumerate()
        .filter(|(_, fold)| may_start(fold))
        .map(|(number, _)| number as u32)
        .take(free)
        .collect();

    let all_succeeded = observation
        .folds
        .iter()
        .all(|f| f.state == FoldState::Succeeded);
    if !all_succeeded {
        return decision;
    }
    if !observation.ensemble_enabled {
        decision.outcome = Some(Outcome::Succeeded);
        return decision;
    }
    match observation.ensemble {
        StageState::NotStarted => decision.start_ensemble = true,
        StageState::Running => {}
        StageState::Succeeded => decision.outcome = Some(Outcome::Succeeded),
        StageState::Failed => {
            decision.outcome = Some(Outcome::Failed {
                reason: "the ensemble of the fold models failed".into(),
            })
        }
    }
    decision
}

fn fold_numbers(observation: &Observation, keep: impl Fn(&FoldState) -> bool) -> Vec<u32> {
    (0..observation.folds.len() as u32)
        .filter(|&f| keep(&observation.folds[f as usize].state))
        .collect()
}

/// A pending fold starts; a failed one is retried unless it failed for good.
fn may_start(fold: &FoldObservation) -> bool {
    match &fold.state {
        FoldState::Pending => true,
        FoldState::Failed { permanent, .. } => !permanent,
        FoldState::Running | FoldState::Succeeded => false,
    }
}

fn terminal_failure(observation: &Observation, limits: Limits) -> Option<String> {
    observation
        .folds
        .iter()
        .enumerate()
        .find_map(|(number, fold)| match &fold.state {
            FoldState::Failed {
                permanent: true,
                message,
            } => Some(format!("fold {number} failed permanently: {message}")),
            FoldState::Failed {
                permanent: false,
                message,
            } if fold.failures > limits.retries => Some(format!(
                "fold {number} failed {} times; last: {message}",
                fold.failures
            )),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        parallelism: 2,
        retries: 1,
    };

    fn observation(folds: usize, ensemble_enabled: bool) -> Observation {
        Observation {
            folds: vec![FoldObservation::pending(); folds],
            ensemble_enabled,
            ensemble: StageState::NotStarted,
        }
    }

    fn failed(permanent: bool, failures: u32) -> FoldObservation {
        FoldObservation {
            state: FoldState::Failed {
                permanent,
                message: "exit code 1".into(),
            },
            failures,
        }
    }

    #[test]
    fn starts_no_more_folds_than_the_parallelism() {
        let decision = decide(&observation(3, true), LIMITS);
        assert_eq!(decision.start_folds, vec![0, 1]);
        assert!(!decision.start_ensemble);
        assert_eq!(decision.outcome, None);
    }

    #[test]
    fn starts_the_next_fold_when_one_finishes() {
        let mut obs = observation(3, true);
        obs.folds[0].state = FoldState::Succeeded;
        obs.folds[1].state = FoldState::Running;
        assert_eq!(decide(&obs, LIMITS).start_folds, vec![2]);
    }

    #[test]
    fn a_fold_that_may_pass_is_retried_within_the_limit() {
        let mut obs = observation(2, true);
        obs.folds[0] = failed(false, 1);
        obs.folds[1].state = FoldState::Running;
        let decision = decide(&obs, LIMITS);
        assert_eq!(decision.start_folds, vec![0]);
        assert_eq!(decision.outcome, None);
    }

    #[test]
    fn a_fold_failing_beyond_the_retries_fails_the_run_and_stops_the_others() {
        let mut obs = observation(3, true);
        obs.folds[0] = failed(false, 2);
        obs.folds[1].state = FoldState::Running;
        let decision = decide(&obs, LIMITS);
        assert!(decision.start_folds.is_empty());
        assert_eq!(decision.stop_folds, vec![1]);
        assert!(
            matches!(decision.outcome, Some(Outcome::Failed { ref reason }) if reason.contains("fold 0 failed 2 times"))
        );
    }

    #[test]
    fn a_permanent_failure_fails_the_run_at_once() {
        let mut obs = observation(2, true);
        obs.folds[1] = failed(true, 1);
        let decision = decide(&obs, LIMITS);
        assert!(decision.start_folds.is_empty());
        assert!(
            matches!(decision.outcome, Some(Outcome::Failed { ref reason }) if reason.contains("fold 1 failed permanently"))
        );
    }

    #[test]
    fn without_an_ensemble_the_run_succeeds_with_its_last_fold() {
        let mut obs = observation(2, false);
        obs.folds
            .iter_mut()
            .for_each(|f| f.state = FoldState::Succeeded);
        let decision = decide(&obs, LIMITS);
        assert!(!decision.start_ensemble);
        assert_eq!(decision.outcome, Some(Outcome::Succeeded));
    }

    #[test]
    fn the_run_succeeds_only_after_the_ensemble() {
        let mut obs = observation(2, true);
        obs.folds
            .iter_mut()
            .for_each(|f| f.state = FoldState::Succeeded);
        obs.ensemble = StageState::Running;
        assert_eq!(decide(&obs, LIMITS), Decision::default());
        obs.ensemble = StageState::Succeeded;
        assert_eq!(decide(&obs, LIMITS).outcome, Some(Outcome::Succeeded));
    }

    /// Plays a cross-validation to its end, finishing folds in the given order and failing
    /// `retried` once before it succeeds; returns how many times the ensemble was started.
    fn ensembles_started(order: &[u32], retried: Option<u32>) -> usize {
        let mut obs = observation(order.len(), true);
        let limits = Limits {
            parallelism: order.len() as u32,
            retries: 1,
        };
        let mut finishing = order.to_vec();
        if let Some(fold) = retried {
            finishing.insert(0, fold);
        }
        let mut started = 0;
        for _ in 0..100 {
            let decision = decide(&obs, limits);
            for fold in decision.start_folds {
                obs.folds[fold as usize].state = FoldState::Running;
            }
            if decision.start_ensemble {
                started += 1;
                obs.ensemble = StageState::Running;
                continue;
            }
            if obs.ensemble == StageState::Running {
                obs.ensemble = StageState::Succeeded;
                continue;
            }
            if decision.outcome.is_some() {
                assert_eq!(decision.outcome, Some(Outcome::Succeeded));
                return started;
            }
            // The next fold in the finishing order that is running ends now.
            let position = finishing
                .iter()
                .position(|&f| obs.folds[f as usize].state == FoldState::Running)
                .expect("a fold is running");
            let fold = finishing.remove(position) as usize;
            if retried == Some(fold as u32) && obs.folds[fold].failures == 0 {
                obs.folds[fold] = failed(false, 1);
            } else {
                obs.folds[fold].state = FoldState::Succeeded;
            }
        }
        panic!("the cross-validation did not end");
    }

    fn permutations(items: &[u32]) -> Vec<Vec<u32>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for (i, &first) in items.iter().enumerate() {
            let mut rest = items.to_vec();
            rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }

    #[test]
    fn the_ensemble_is_built_exactly_once_for_every_finishing_order() {
        for order in permutations(&[0, 1, 2, 3]) {
            assert_eq!(ensembles_started(&order, None), 1, "order {order:?}");
        }
    }

    #[test]
    fn the_ensemble_is_built_exactly_once_when_a_fold_is_retried() {
        for order in permutations(&[0, 1, 2]) {
            for retried in 0..3 {
                assert_eq!(
                    ensembles_started(&order, Some(retried)),
                    1,
                    "order {order:?}, fold {retried} retried"
                );
            }
        }
    }
}
