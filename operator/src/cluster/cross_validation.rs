//! The CrossValidation controller: one owned Experiment per fold, at most `parallelism`
//! unfinished at once, then one owned Ensemble of the fold models, whose comparison and
//! publication the CrossValidation reports.
//!
//! Each reconcile reads the CrossValidation and its children, turns them into the observation
//! of [`crate::cross_validation::decide`] (the decision local mode takes too), writes the status
//! and then makes or deletes the children the decision names. Children have deterministic names
//! (`<name>-fold-<k>`, `<name>-ensemble`), so a create that another reconcile (or an earlier
//! operator) already made finds the object and makes no second one. What a finished fold
//! produced is kept in status: a fold deleted before it finished is created again, one deleted
//! after keeps its recorded result.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{debug, info, warn};
use voxel_crds::{
    CrossValidation, Ensemble, EnsembleSpec, Experiment,
    common::{
        CONDITION_RUNNING, CONDITION_STALLED, CONDITION_SUCCEEDED, Condition, ConditionStatus,
        set_condition,
    },
    cross_validation::{CrossValidationStatus, FoldAssignment, FoldState as FoldPhase, FoldStatus},
    experiment::{ExperimentPhase, FoldSelection},
};

use super::{
    apply_status,
    children::{self, controlled_by, label_value},
    experiment::{Context, ReconcileError, api_error},
    models::ANNOTATION_GIT_COMMIT,
    publish_events,
};
use crate::{
    aggregate::aggregate_folds,
    attempts::Transition,
    cross_validation::{
        Decision, FoldObservation, FoldState, Limits, Observation, Outcome, StageState, decide,
    },
};

/// Label with the name of the CrossValidation a fold Experiment or an Ensemble belongs to.
pub const LABEL_CROSS_VALIDATION: &str = "voxel.dev/cross-validation";
/// Label with the fold number of a fold Experiment.
pub const LABEL_FOLD: &str = "voxel.dev/fold";

/// Deterministic name of the Experiment of fold `fold`.
pub fn fold_name(cv: &str, fold: u32) -> String {
    crate::local::cross_validation::fold_name(cv, fold as usize)
}

/// Deterministic name of the Ensemble of a CrossValidation's folds.
pub fn ensemble_name(cv: &str) -> String {
    format!("{cv}-ensemble")
}

/// The Experiment of fold `fold` (pure): the template, validating on fold `fold` of the deal of
/// the subjects outside the template's test set.
pub fn fold_experiment(cv: &CrossValidation, fold: u32) -> Experiment {
    let name = cv.name_any();
    let mut spec = cv.spec.template.clone();
    spec.data.split.fold = Some(FoldSelection {
        folds: cv.spec.folds,
        index: fold,
        seed: cv.spec.seed,
    });
    let mut labels = children::common_labels(&name, "fold");
    labels.insert(LABEL_CROSS_VALIDATION.into(), label_value(&name));
    labels.insert(LABEL_FOLD.into(), fold.to_string());
    Experiment {
        metadata: child_meta(cv, fold_name(&name, fold), labels),
        spec,
        status: None,
    }
}

/// The Ensemble of the fold models (pure): evaluated on the template's test set, compared and
/// published as the CrossValidation asks.
pub fn fold_ensemble(cv: &CrossValidation) -> Ensemble {
    let name = cv.name_any();
    let template = &cv.spec.template;
    let mut labels = children::common_labels(&name, "ensemble");
    labels.insert(LABEL_CROSS_VALIDATION.into(), label_value(&name));
    Ensemble {
        metadata: child_meta(cv, ensemble_name(&name), labels),
        spec: EnsembleSpec {
            members: Vec::new(),
            cross_validation: Some(name),
            combine: cv.spec.ensemble.combine,
            data: template.data.clone(),
            postprocessing: Some(template.model.postprocessing.clone()),
            compare_to: cv.spec.compare_to.clone(),
            publish: cv.spec.publish.clone(),
        },
        status: None,
    }
}

fn child_meta(cv: &CrossValidation, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    // The Git commit of the manifest follows it into what is published.
    let annotations = cv
        .annotations()
        .get(ANNOTATION_GIT_COMMIT)
        .map(|commit| BTreeMap::from([(ANNOTATION_GIT_COMMIT.to_string(), commit.clone())]));
    ObjectMeta {
        name: Some(name),
        namespace: cv.namespace(),
        labels: Some(labels),
        annotations,
        owner_references: Some(vec![
            cv.controller_owner_ref(&())
                .expect("a CrossValidation from the API server has a name and uid"),
        ]),
        ..ObjectMeta::default()
    }
}

/// Runs the CrossValidation controller until `shutdown` resolves.
pub async fn run(
    context: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let (cvs, experiments, ensembles): (Api<CrossValidation>, Api<Experiment>, Api<Ensemble>) =
        match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        };
    let children = watcher::Config::default().labels(LABEL_CROSS_VALIDATION);
    Controller::new(cvs, watcher::Config::default())
        .owns(experiments, children.clone())
        .owns(ensembles, children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(cross_validation = %object, "reconciled"),
                Err(error) => debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(cv: Arc<CrossValidation>, error: &ReconcileError, context: Arc<Context>) -> Action {
    warn!(cross_validation = %cv.name_any(), namespace = cv.namespace().unwrap_or_default(), %error, "reconcile failed; retrying");
    context.metrics.reconcile_error(error.kind());
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    cv: Arc<CrossValidation>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&cv, &context).await;
    context.metrics.reconciled(started.elapsed());
    result
}

/// What the children of a CrossValidation are now.
struct Children {
    /// Fold Experiments this CrossValidation owns, by fold.
    folds: BTreeMap<u32, Experiment>,
    /// Its Ensemble, if it exists.
    ensemble: Option<Ensemble>,
}

async fn reconcile_inner(
    cached: &CrossValidation,
    context: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let cvs: Api<CrossValidation> = Api::namespaced(context.client.clone(), &namespace);
    let experiments: Api<Experiment> = Api::namespaced(context.client.clone(), &namespace);
    let ensembles: Api<Ensemble> = Api::namespaced(context.client.clone(), &namespace);

    // Fetch.
    let Some(cv) = cvs.get_opt(&name).await.map_err(api_error(format!(
        "reading CrossValidation {namespace}/{name}"
    )))?
    else {
        return Ok(Action::await_change());
    };
    if cv.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the folds and the ensemble, and with them their pods.
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut old = cv.status.clone().unwrap_or_default();
    // A run refused for its spec goes on once the spec is edited: its conditions are cleared,
    // while what its folds did (their records and the configuration they were made from) is
    // kept, so that folds trained before the refusal are checked against the edited template.
    let refused = old.conditions.iter().any(|c| {
        c.type_ == CONDITION_SUCCEEDED
            && matches!(c.reason.as_str(), "InvalidSpec" | "BaselineNotFound")
    });
    if refused && old.observed_generation != cv.metadata.generation {
        old.conditions.clear();
    }
    let old = old;
    if finished(&old) {
        return Ok(Action::await_change());
    }

    // Refuse what cannot run as specified: an invalid spec, a baseline that does not exist,
    // or a template edited after the folds started from it. The status says why, and what
    // still runs for the refused spec stops.
    let digest = template_digest(&cv);
    let refusal = if let Err(errors) = cv.spec.validate() {
        Some(("InvalidSpec", errors.to_string()))
    } else if let Some(error) = missing_baseline(&cv, &namespace, context).await? {
        Some(("BaselineNotFound", error))
    } else if old.template_digest.as_ref().is_some_and(|d| *d != digest) {
        let message = "spec.template.model, training or data, or spec.folds or spec.seed, \
                       changed after the first fold started; the folds would mix two \
                       configurations (revert the edit, or create a new CrossValidation)";
        Some(("TemplateChanged", message.to_string()))
    } else {
        None
    };
    if let Some((reason, message)) = refusal {
        let mut status = old.clone();
        status.observed_generation = cv.metadata.generation;
        let changed = fail(&mut status, &cv, reason, &message, now);
        apply_status(&cvs, &name, "CrossValidation", &old, &status).await?;
        stop_children(&cv, &experiments, &ensembles).await?;
        if changed {
            publish(context, &cv, true, reason, &message).await;
        }
        return Ok(Action::await_change());
    }

    // Observe.
    let uid = cv.uid();
    let owned = |meta: &ObjectMeta| controlled_by(meta, uid.as_deref());
    let selector = format!("{LABEL_CROSS_VALIDATION}={}", label_value(&name));
    let mut folds = BTreeMap::new();
    for experiment in experiments
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(format!(
            "listing the folds of {namespace}/{name}"
        )))?
        .items
    {
        let fold = (0..cv.spec.folds).find(|&f| experiment.name_any() == fold_name(&name, f));
        if let Some(fold) = fold
            && owned(&experiment.metadata)
        {
            folds.insert(fold, experiment);
        }
    }
    let ensemble = ensembles
        .get_opt(&ensemble_name(&name))
        .await
        .map_err(api_error(format!(
            "reading the ensemble of {namespace}/{name}"
        )))?
        .filter(|e| owned(&e.metadata));
    let children = Children { folds, ensemble };
    let observation = observe(&cv, &old, &children);

    // Decide (pure).
    let decision = decide(
        &observation,
        Limits {
            parallelism: cv.spec.parallelism.max(1),
            retries: 0,
        },
    );

    // A child's name held by an object this run does not own is never adopted: it is reported.
    let Decision {
        mut start_folds,
        stop_folds,
        mut start_ensemble,
        outcome,
    } = decision;
    let mut taken = Vec::new();
    for fold in start_folds.clone() {
        let child = fold_name(&name, fold);
        if let Some(other) = experiments
            .get_opt(&child)
            .await
            .map_err(api_error(format!("reading Experiment {namespace}/{child}")))?
            && !owned(&other.metadata)
        {
            taken.push(format!("Experiment {child}"));
            start_folds.retain(|f| *f != fold);
        }
    }
    if start_ensemble
        && let Some(other) = ensembles
            .get_opt(&ensemble_name(&name))
            .await
            .map_err(api_error(format!(
                "reading the ensemble of {namespace}/{name}"
            )))?
        && !owned(&other.metadata)
    {
        taken.push(format!("Ensemble {}", other.name_any()));
        start_ensemble = false;
    }

    // Apply: the status first, then the children it accounts for.
    let mut status = old.clone();
    record(&mut status, &cv, &children, &observation, context);
    let mut transitions = Vec::new();
    // A fold held up and running again is not a new start.
    let was_running = old.conditions.iter().any(|c| {
        c.type_ == CONDITION_RUNNING
            && (c.status == ConditionStatus::True || c.reason == "FoldNotRunning")
    });
    match &outcome {
        Some(Outcome::Succeeded) => {
            let dice = status
                .mean_dice
                .map(|d| format!(" (mean test Dice {d:.3})"))
                .unwrap_or_default();
            let message = format!("{} folds trained{dice}", cv.spec.folds);
            if succeed(&mut status, &cv, &message, now) {
                transitions.push(Transition {
                    warning: false,
                    reason: "Succeeded".into(),
                    message,
                });
            }
        }
        Some(Outcome::Failed { reason }) => {
            if fail(&mut status, &cv, "Failed", reason, now) {
                transitions.push(Transition {
                    warning: true,
                    reason: "Failed".into(),
                    message: reason.clone(),
                });
            }
        }
        None => {
            let running = observation
                .folds
                .iter()
                .filter(|f| f.state == FoldState::Running)
                .count()
                + start_folds.len();
            let message = if observation.ensemble == StageState::Running || start_ensemble {
                "evaluating the ensemble of the fold models".to_string()
            } else {
                format!(
                    "{running} fold(s) training, {} of {} done",
                    status.folds_succeeded, cv.spec.folds
                )
            };
            let held = folds_held(&children, &observation);
            let (running_status, reason, message) = if !taken.is_empty() {
                (
                    ConditionStatus::False,
                    "NameTaken",
                    format!(
                        "{} exists and is not owned by this CrossValidation; delete or rename \
                         it ({message})",
                        taken.join(", ")
                    ),
                )
            } else if !held.is_empty() {
                // The folds alone: the message (and with it the Warning) changes only when they
                // do, not with every fold that finishes meanwhile.
                (ConditionStatus::False, "FoldNotRunning", held.join("; "))
            } else {
                (ConditionStatus::True, "Running", message)
            };
            let changed = set_condition(
                &mut status.conditions,
                condition(
                    &cv,
                    CONDITION_RUNNING,
                    running_status,
                    reason,
                    &message,
                    now,
                ),
            );
            // Started once, when the first folds are made, even if they are held from the start.
            if changed && reason != "NameTaken" && !was_running {
                transitions.push(Transition {
                    warning: false,
                    reason: "Started".into(),
                    message: message.clone(),
                });
            }
            if changed && running_status == ConditionStatus::False {
                transitions.push(Transition {
                    warning: true,
                    reason: reason.into(),
                    message,
                });
            }
            set_condition(
                &mut status.conditions,
                condition(
                    &cv,
                    CONDITION_SUCCEEDED,
                    ConditionStatus::Unknown,
                    "Running",
                    "",
                    now,
                ),
            );
        }
    }
    status.observed_generation = cv.metadata.generation;
    if !start_folds.is_empty() || status.folds.iter().any(|f| f.state != FoldPhase::Pending) {
        status.template_digest.get_or_insert(digest);
    }
    apply_status(&cvs, &name, "CrossValidation", &old, &status).await?;

    for fold in start_folds {
        let experiment = fold_experiment(&cv, fold);
        if create(&experiments, &experiment, &namespace).await? {
            info!(cross_validation = %name, namespace, fold, "fold started");
            transitions.push(Transition {
                warning: false,
                reason: "FoldStarted".into(),
                message: format!("fold {fold}: Experiment {}", experiment.name_any()),
            });
        }
    }
    // A failed run stops what still runs; deleting a fold's Experiment deletes its pods.
    for fold in stop_folds {
        delete(&experiments, &fold_name(&name, fold)).await?;
    }
    if matches!(outcome, Some(Outcome::Failed { .. }))
        && observation.ensemble == StageState::Running
    {
        delete(&ensembles, &ensemble_name(&name)).await?;
    }
    if start_ensemble {
        let ensemble = fold_ensemble(&cv);
        if create(&ensembles, &ensemble, &namespace).await? {
            info!(cross_validation = %name, namespace, "ensemble created");
            transitions.push(Transition {
                warning: false,
                reason: "EnsembleStarted".into(),
                message: format!("Ensemble {}", ensemble.name_any()),
            });
        }
    }
    let requeue = (!taken.is_empty()).then(|| Duration::from_secs(30));
    for transition in &transitions {
        publish(
            context,
            &cv,
            transition.warning,
            &transition.reason,
            &transition.message,
        )
        .await;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Why `spec.compareTo` names no published version, if it does not.
async fn missing_baseline(
    cv: &CrossValidation,
    namespace: &str,
    context: &Context,
) -> Result<Option<String>, ReconcileError> {
    let Some(compare_to) = &cv.spec.compare_to else {
        return Ok(None);
    };
    match super::models::resolve_baseline(&context.client, namespace, compare_to).await {
        Ok(_) => Ok(None),
        Err(super::models::ModelError::Api { action, source }) => {
            Err(ReconcileError::Api { action, source })
        }
        Err(error) => Ok(Some(error.to_string())),
    }
}

/// Deletes the fold Experiments of a failed run that have not finished, and its Ensemble if it
/// has not: what runs stops, what finished stays.
async fn stop_children(
    cv: &CrossValidation,
    experiments: &Api<Experiment>,
    ensembles: &Api<Ensemble>,
) -> Result<(), ReconcileError> {
    let name = cv.name_any();
    let uid = cv.uid();
    let owned = |meta: &ObjectMeta| controlled_by(meta, uid.as_deref());
    for fold in 0..cv.spec.folds {
        let child = fold_name(&name, fold);
        if let Some(experiment) = experiments
            .get_opt(&child)
            .await
            .map_err(api_error(format!("reading Experiment {child}")))?
            && owned(&experiment.metadata)
            && matches!(fold_state(&experiment), FoldState::Running)
        {
            delete(experiments, &child).await?;
        }
    }
    if let Some(ensemble) = ensembles
        .get_opt(&ensemble_name(&name))
        .await
        .map_err(api_error(format!(
            "reading Ensemble {}",
            ensemble_name(&name)
        )))?
        && owned(&ensemble.metadata)
        && ensemble_state(&ensemble) == StageState::Running
    {
        delete(ensembles, &ensemble.name_any()).await?;
    }
    Ok(())
}

/// `sha256:` of what defines the folds' runs: the template's model, training and data, and
/// the number of folds and the seed that deal the subjects into them.
fn template_digest(cv: &CrossValidation) -> String {
    let template = &cv.spec.template;
    let defining = serde_json::json!([
        template.model,
        template.training,
        template.data,
        cv.spec.folds,
        cv.spec.seed
    ]);
    crate::digest::digest_bytes(&serde_json::to_vec(&defining).expect("a template serialises"))
}

fn finished(status: &CrossValidationStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SUCCEEDED && c.status != ConditionStatus::Unknown)
}

/// The decision's view of the folds and the ensemble (pure).
fn observe(cv: &CrossValidation, old: &CrossValidationStatus, children: &Children) -> Observation {
    let folds = (0..cv.spec.folds)
        .map(|fold| {
            let recorded = old.folds.iter().find(|f| f.fold == fold).map(|f| f.state);
            let state = match children.folds.get(&fold) {
                Some(experiment) => fold_state(experiment),
                // A fold recorded as finished keeps its result when its Experiment is deleted;
                // one deleted before it finished starts again.
                None if recorded == Some(FoldPhase::Succeeded) => FoldState::Succeeded,
                None => FoldState::Pending,
            };
            let failures = u32::from(matches!(state, FoldState::Failed { .. }));
            FoldObservation { state, failures }
        })
        .collect();
    let ensemble = match &children.ensemble {
        Some(ensemble) => ensemble_state(ensemble),
        None if !old.ensemble_metrics.is_empty() => StageState::Succeeded,
        None => StageState::NotStarted,
    };
    Observation {
        folds,
        ensemble_enabled: cv.spec.ensemble.enabled,
        ensemble,
    }
}

/// The unfinished folds whose Experiment says it is not training, each as `<name>: <reason>:
/// <message>`: a pod the API server refused, a suspended run, a trainer with no recent epoch.
fn folds_held(children: &Children, observation: &Observation) -> Vec<String> {
    observation
        .folds
        .iter()
        .zip(0..)
        .filter(|(f, _)| f.state == FoldState::Running)
        .filter_map(|(_, fold)| {
            let experiment = children.folds.get(&fold)?;
            let conditions = &experiment.status.as_ref()?.conditions;
            let held = conditions.iter().find(|c| {
                (c.type_ == CONDITION_RUNNING && c.status == ConditionStatus::False)
                    || (c.type_ == CONDITION_STALLED && c.status == ConditionStatus::True)
            })?;
            Some(format!(
                "{}: {}: {}",
                experiment.name_any(),
                held.reason,
                held.message
            ))
        })
        .collect()
}

fn fold_state(experiment: &Experiment) -> FoldState {
    let status = experiment.status.clone().unwrap_or_default();
    match status.phase {
        Some(ExperimentPhase::Succeeded) => FoldState::Succeeded,
        // The Experiment has already retried what may pass, up to its backoffLimit.
        Some(ExperimentPhase::Failed) => FoldState::Failed {
            permanent: true,
            message: status
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_SUCCEEDED)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "failed".into()),
        },
        _ => FoldState::Running,
    }
}

fn ensemble_state(ensemble: &Ensemble) -> StageState {
    let succeeded = ensemble
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_SUCCEEDED));
    match succeeded.map(|c| c.status) {
        Some(ConditionStatus::True) => StageState::Succeeded,
        Some(ConditionStatus::False) => StageState::Failed,
        _ => StageState::Running,
    }
}

/// Brings the fold records, the aggregate and the ensemble's results into `status` (pure but
/// for reading the folds' split files through the operator's claim mounts).
fn record(
    status: &mut CrossValidationStatus,
    cv: &CrossValidation,
    children: &Children,
    observation: &Observation,
    context: &Context,
) {
    let name = cv.name_any();
    let previous = std::mem::take(&mut status.folds);
    for fold in 0..cv.spec.folds {
        let recorded = previous.iter().find(|f| f.fold == fold);
        let experiment = children.folds.get(&fold);
        let state = match &observation.folds[fold as usize].state {
            FoldState::Pending if experiment.is_none() => FoldPhase::Pending,
            FoldState::Pending | FoldState::Running => FoldPhase::Running,
            FoldState::Succeeded => FoldPhase::Succeeded,
            FoldState::Failed { .. } => FoldPhase::Failed,
        };
        let metrics = experiment
            .and_then(|e| e.status.as_ref())
            .map(|s| s.metrics.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| recorded.map(|r| r.metrics.clone()))
            .unwrap_or_default();
        let artifacts = experiment
            .and_then(|e| e.status.as_ref())
            .and_then(|s| s.artifacts.clone())
            .or_else(|| recorded.and_then(|r| r.artifacts.clone()));
        status.folds.push(FoldStatus {
            fold,
            experiment: fold_name(&name, fold),
            state,
            metrics,
            artifacts,
        });
        // The subjects each fold validates on, as its trainer wrote them before its first epoch.
        if matches!(state, FoldPhase::Running | FoldPhase::Succeeded)
            && !status.fold_assignment.iter().any(|a| a.fold == fold)
            && let Some(split) = experiment.and_then(|e| read_split(e, context))
        {
            status.fold_assignment.push(FoldAssignment {
                fold,
                subjects: split.validation,
            });
            status.fold_assignment.sort_by_key(|a| a.fold);
            if status.test_subjects.is_empty() {
                status.test_subjects = split.test;
            }
        }
    }
    status.folds_succeeded = status
        .folds
        .iter()
        .filter(|f| f.state == FoldPhase::Succeeded)
        .count() as u32;
    if status.folds_succeeded == cv.spec.folds {
        let summaries: Vec<_> = status.folds.iter().map(|f| f.metrics.clone()).collect();
        status.aggregate = aggregate_folds(&summaries);
    }
    if let Some(ensemble) = &children.ensemble {
        status.ensemble = Some(ensemble.name_any());
        if let Some(results) = &ensemble.status {
            if !results.metrics.is_empty() {
                status.ensemble_metrics = results.metrics.clone();
            }
            if results.comparison.is_some() {
                status.comparison = results.comparison.clone();
            }
            if results.published_model.is_some() {
                status.published_model = results.published_model.clone();
            }
        }
    }
    status.mean_dice = if cv.spec.ensemble.enabled {
        voxel_crds::common::headline_dice(&status.ensemble_metrics)
    } else {
        voxel_crds::common::headline_dice(&status.aggregate)
    };
}

/// The split a fold's trainer wrote (`split.json` in its output), if the operator can read it.
fn read_split(experiment: &Experiment, context: &Context) -> Option<voxel_crds::split::Split> {
    let location = experiment.status.as_ref()?.artifacts.as_deref()?;
    let path = match context.mounts.resolve_uri(location) {
        Ok(dir) => dir.join("split.json"),
        Err(error) => {
            debug!(%error, "fold assignment not recorded");
            return None;
        }
    };
    if !path.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| warn!(path = %path.display(), error = %e, "cannot read a fold's split"))
        .ok()?;
    serde_json::from_str(&text)
        .map_err(|e| warn!(path = %path.display(), error = %e, "cannot parse a fold's split"))
        .ok()
}

fn condition(
    cv: &CrossValidation,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(now),
        observed_generation: cv.metadata.generation,
    }
}

/// Marks the run failed; returns whether that is news.
fn fail(
    status: &mut CrossValidationStatus,
    cv: &CrossValidation,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let changed = set_condition(
        &mut status.conditions,
        condition(
            cv,
            CONDITION_SUCCEEDED,
            ConditionStatus::False,
            reason,
            message,
            now,
        ),
    );
    set_condition(
        &mut status.conditions,
        condition(
            cv,
            CONDITION_RUNNING,
            ConditionStatus::False,
            reason,
            message,
            now,
        ),
    );
    changed
}

/// Marks the run succeeded; returns whether that is news.
fn succeed(
    status: &mut CrossValidationStatus,
    cv: &CrossValidation,
    message: &str,
    now: Timestamp,
) -> bool {
    let changed = set_condition(
        &mut status.conditions,
        condition(
            cv,
            CONDITION_SUCCEEDED,
            ConditionStatus::True,
            "Succeeded",
            message,
            now,
        ),
    );
    set_condition(
        &mut status.conditions,
        condition(
            cv,
            CONDITION_RUNNING,
            ConditionStatus::False,
            "Succeeded",
            message,
            now,
        ),
    );
    changed
}

/// Creates a child; returns false when it existed already.
async fn create<K>(api: &Api<K>, object: &K, namespace: &str) -> Result<bool, ReconcileError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(source) => Err(ReconcileError::Api {
            action: format!(
                "creating {} {namespace}/{}",
                K::kind(&()),
                object.name_any()
            ),
            source,
        }),
    }
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api {
            action: format!("deleting {} {name}", K::kind(&())),
            source,
        }),
    }
}

async fn publish(
    context: &Context,
    cv: &CrossValidation,
    warning: bool,
    reason: &str,
    message: &str,
) {
    publish_events(
        context,
        &cv.object_ref(&()),
        &[Transition {
            warning,
            reason: reason.into(),
            message: message.into(),
        }],
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv() -> CrossValidation {
        let text = include_str!("../../../examples/hippocampus/cross-validation-cluster.yaml");
        let mut cv: CrossValidation = serde_yaml::from_str(text).unwrap();
        cv.metadata.namespace = Some("team".into());
        cv.metadata.uid = Some("uid-1".into());
        cv.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_GIT_COMMIT.into(), "abc123".into());
        cv
    }

    #[test]
    fn each_fold_is_the_template_validating_on_its_fold_and_owned_by_the_run() {
        let cv = cv();
        let name = cv.name_any();
        for fold in 0..cv.spec.folds {
            let experiment = fold_experiment(&cv, fold);
            assert_eq!(experiment.name_any(), format!("{name}-fold-{fold}"));
            assert_eq!(
                experiment.spec.data.split.fold,
                Some(FoldSelection {
                    folds: cv.spec.folds,
                    index: fold,
                    seed: cv.spec.seed
                })
            );
            let mut without_fold = experiment.spec.clone();
            without_fold.data.split.fold = None;
            assert_eq!(without_fold, cv.spec.template);
            let owner = &experiment.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("CrossValidation", "uid-1")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(experiment.labels()[LABEL_FOLD], fold.to_string());
            assert_eq!(experiment.annotations()[ANNOTATION_GIT_COMMIT], "abc123");
            assert!(
                experiment.spec.validate().is_ok(),
                "fold {fold} is a valid Experiment"
            );
        }
    }

    #[test]
    fn the_ensemble_evaluates_the_folds_on_the_test_set_and_publishes_for_the_run() {
        let cv = cv();
        let ensemble = fold_ensemble(&cv);
        assert_eq!(ensemble.name_any(), format!("{}-ensemble", cv.name_any()));
        assert_eq!(
            ensemble.spec.cross_validation.as_deref(),
            Some(cv.name_any().as_str())
        );
        assert_eq!(ensemble.spec.data, cv.spec.template.data);
        assert_eq!(ensemble.spec.publish, cv.spec.publish);
        assert_eq!(ensemble.spec.compare_to, cv.spec.compare_to);
        assert!(ensemble.spec.validate().is_ok());
    }

    fn experiment_in(phase: Option<ExperimentPhase>) -> Experiment {
        let mut experiment = fold_experiment(&cv(), 0);
        experiment.status = Some(voxel_crds::experiment::ExperimentStatus {
            phase,
            ..Default::default()
        });
        experiment
    }

    #[test]
    fn folds_are_observed_from_their_experiments_and_a_deleted_unfinished_fold_starts_again() {
        let cv = cv();
        let old = CrossValidationStatus {
            folds: (0..3)
                .map(|fold| FoldStatus {
                    fold,
                    experiment: fold_name("x", fold),
                    state: if fold == 0 {
                        FoldPhase::Succeeded
                    } else {
                        FoldPhase::Running
                    },
                    metrics: Vec::new(),
                    artifacts: None,
                })
                .collect(),
            ..CrossValidationStatus::default()
        };
        // Fold 0 finished and was deleted; fold 1 was deleted while running; fold 2 failed.
        let children = Children {
            folds: BTreeMap::from([(2, experiment_in(Some(ExperimentPhase::Failed)))]),
            ensemble: None,
        };
        let observation = observe(&cv, &old, &children);
        assert_eq!(observation.folds[0].state, FoldState::Succeeded);
        assert_eq!(observation.folds[1].state, FoldState::Pending);
        assert!(matches!(
            observation.folds[2].state,
            FoldState::Failed {
                permanent: true,
                ..
            }
        ));
        let decision = decide(
            &observation,
            Limits {
                parallelism: 2,
                retries: 0,
            },
        );
        assert!(matches!(decision.outcome, Some(Outcome::Failed { .. })));

        let children = Children {
            folds: BTreeMap::from([(2, experiment_in(Some(ExperimentPhase::Running)))]),
            ensemble: None,
        };
        let observation = observe(&cv, &old, &children);
        let decision = decide(
            &observation,
            Limits {
                parallelism: 2,
                retries: 0,
            },
        );
        assert_eq!(
            decision.start_folds,
            vec![1],
            "the deleted fold is made again"
        );
    }

    #[test]
    fn unfinished_folds_that_are_not_training_are_named_with_their_reason() {
        let cv = cv();
        let with = |fold: u32, phase, conditions: Vec<(&str, ConditionStatus, &str)>| {
            let mut experiment = fold_experiment(&cv, fold);
            experiment.status = Some(voxel_crds::experiment::ExperimentStatus {
                phase: Some(phase),
                conditions: conditions
                    .into_iter()
                    .map(|(type_, status, reason)| Condition {
                        type_: type_.into(),
                        status,
                        reason: reason.into(),
                        message: format!("{reason} happened"),
                        last_transition_time: Time(Timestamp::UNIX_EPOCH),
                        observed_generation: None,
                    })
                    .collect(),
                ..Default::default()
            });
            (fold, experiment)
        };
        let children = Children {
            folds: BTreeMap::from([
                // Finished: its Running=False is the end of the run, not a hold-up.
                with(
                    0,
                    ExperimentPhase::Succeeded,
                    vec![(CONDITION_RUNNING, ConditionStatus::False, "Completed")],
                ),
                with(
                    1,
                    ExperimentPhase::Pending,
                    vec![(CONDITION_RUNNING, ConditionStatus::False, "PodRejected")],
                ),
                with(
                    2,
                    ExperimentPhase::Running,
                    vec![
                        (CONDITION_RUNNING, ConditionStatus::True, "Running"),
                        (CONDITION_STALLED, ConditionStatus::True, "NoProgress"),
                    ],
                ),
            ]),
            ensemble: None,
        };
        let observation = observe(&cv, &CrossValidationStatus::default(), &children);
        let name = cv.name_any();
        assert_eq!(
            folds_held(&children, &observation),
            [
                format!("{name}-fold-1: PodRejected: PodRejected happened"),
                format!("{name}-fold-2: NoProgress: NoProgress happened"),
            ]
        );
        // Training normally, or recovered from a stall: nothing is held.
        let children = Children {
            folds: BTreeMap::from([with(
                2,
                ExperimentPhase::Running,
                vec![
                    (CONDITION_RUNNING, ConditionStatus::True, "Running"),
                    (CONDITION_STALLED, ConditionStatus::False, "Progressing"),
                ],
            )]),
            ensemble: None,
        };
        let observation = observe(&cv, &CrossValidationStatus::default(), &children);
        assert!(folds_held(&children, &observation).is_empty());
    }
}
