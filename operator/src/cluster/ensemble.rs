//! The Ensemble controller: an evaluation pod (the trainer image) that combines the members'
//! posteriors on the test subjects, then the comparison with the baseline and the publication
//! of a Model version.
//!
//! Members are the fold Experiments of a CrossValidation. The pod writes its per-subject
//! metrics next to the members in their artifact claim; the operator reads them there through
//! its claim mounts, keeps the per-structure summary in status, and records the files (with
//! their digests) in the published Model, whose per-subject metrics a later comparison reads
//! from the same place.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{debug, info, warn};
use voxel_crds::{
    CrossValidation, Ensemble, Experiment,
    common::{
        CONDITION_COMPARED, CONDITION_PUBLISHED, CONDITION_RUNNING, CONDITION_SUCCEEDED, Condition,
        ConditionStatus, set_condition,
    },
    ensemble::EnsembleStatus,
    experiment::{ExperimentPhase, ExperimentSpec},
};

use super::{
    apply_status,
    children::{self, EnsembleJob, LABEL_ATTEMPT, LABEL_ENSEMBLE, label_value},
    cross_validation::fold_name,
    experiment::{Context, ReconcileError, api_error, observe_pod},
    finish,
    models::{self, ANNOTATION_GIT_COMMIT},
    mounts::parse_claim_uri,
    publish_events,
};
use crate::{
    attempts::{AttemptEnd, Transition, classify},
    local::dataset::{read_rows, subjects},
    publication::ModelContent,
};

/// A preempted evaluation is started again at most this many times.
const MAX_ATTEMPTS: usize = 10;
/// How often an Ensemble waiting for its members looks again.
const MEMBER_POLL: Duration = Duration::from_secs(15);

/// Runs the Ensemble controller until `shutdown` resolves.
pub async fn run(
    context: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let (ensembles, pods): (Api<Ensemble>, Api<Pod>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    Controller::new(ensembles, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(LABEL_ENSEMBLE))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(ensemble = %object, "reconciled"),
                Err(error) => debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(ensemble: Arc<Ensemble>, error: &ReconcileError, context: Arc<Context>) -> Action {
    warn!(ensemble = %ensemble.name_any(), namespace = ensemble.namespace().unwrap_or_default(), %error, "reconcile failed; retrying");
    context.metrics.reconcile_error(error.kind());
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    ensemble: Arc<Ensemble>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&ensemble, &context).await;
    context.metrics.reconciled(started.elapsed());
    result
}

/// The members of an Ensemble as its evaluation pod sees them.
struct Members {
    /// The claim they are on, where the output goes too.
    claim: String,
    /// Their training output folders inside the claim.
    folders: Vec<String>,
    /// Their names for the lineage.
    names: Vec<String>,
    /// The configuration they trained with.
    template: ExperimentSpec,
    /// The resource a published version comes from: the CrossValidation (kind, name, uid).
    source: (&'static str, String, Option<String>),
}

/// Why an Ensemble cannot go on yet, or at all.
enum Blocked {
    /// Members are still training: look again later.
    Waiting(String),
    /// It cannot run as written.
    Invalid(&'static str, String),
}

async fn reconcile_inner(cached: &Ensemble, context: &Context) -> Result<Action, ReconcileError> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let ensembles: Api<Ensemble> = Api::namespaced(context.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);

    // Fetch.
    let Some(ensemble) = ensembles
        .get_opt(&name)
        .await
        .map_err(api_error(format!("reading Ensemble {namespace}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    if ensemble.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let old = ensemble.status.clone().unwrap_or_default();
    if old
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SUCCEEDED && c.status != ConditionStatus::Unknown)
    {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut status = old.clone();
    status.observed_generation = ensemble.metadata.generation;

    // Observe the evaluation pods.
    let selector = format!("{LABEL_ENSEMBLE}={}", label_value(&name));
    let mut attempts: Vec<(usize, Pod)> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(format!(
            "listing the pods of Ensemble {namespace}/{name}"
        )))?
        .items
        .into_iter()
        .filter_map(|pod| {
            let attempt = pod.labels().get(LABEL_ATTEMPT)?.parse().ok()?;
            Some((attempt, pod))
        })
        .collect();
    attempts.sort_by_key(|(attempt, _)| *attempt);
    let latest = attempts.pop();
    let observed = match &latest {
        Some((_, pod)) => Some(observe_pod(context, pod).await?),
        None => None,
    };
    let end = observed.as_ref().and_then(classify);
    let next_attempt = match (&latest, &end) {
        (None, _) => Some(1),
        (Some((attempt, _)), Some(AttemptEnd::Preempted { .. })) => Some(attempt + 1),
        _ => None,
    };
    // Validate, and find the members.
    // Members' files are checked against their digests before an evaluation starts.
    let members = match members(&ensemble, context, next_attempt.is_some()).await? {
        Ok(members) => members,
        Err(Blocked::Waiting(message)) => {
            set_condition(
                &mut status.conditions,
                condition(
                    &ensemble,
                    CONDITION_RUNNING,
                    ConditionStatus::False,
                    "WaitingForMembers",
                    &message,
                    now,
                ),
            );
            apply_status(&ensembles, &name, "Ensemble", &old, &status).await?;
            return Ok(Action::requeue(MEMBER_POLL));
        }
        Err(Blocked::Invalid(reason, message)) => {
            return finish_failed(
                context, &ensembles, &ensemble, &old, status, reason, &message, now,
            )
            .await;
        }
    };
    if let Some(compare_to) = &ensemble.spec.compare_to
        && let Err(error) = models::resolve_baseline(&context.client, &namespace, compare_to).await
    {
        return finish_failed(
            context,
            &ensembles,
            &ensemble,
            &old,
            status,
            "BaselineNotFound",
            &error.to_string(),
            now,
        )
        .await;
    }
    let data = ensemble.spec.data.source.persistent_volume_claim.clone();
    let Some(data) = data else {
        let message = children::BuildError::DataNotMountable.to_string();
        return finish_failed(
            context,
            &ensembles,
            &ensemble,
            &old,
            status,
            "InvalidSpec",
            &message,
            now,
        )
        .await;
    };
    let dataset_path = match context.mounts.resolve(
        &data.claim_name,
        &join(data.sub_path.as_deref(), &ensemble.spec.data.dataset),
    ) {
        Ok(path) => path,
        Err(error) => {
            return finish_failed(
                context,
                &ensembles,
                &ensemble,
                &old,
                status,
                "DataNotReadable",
                &error.to_string(),
                now,
            )
            .await;
        }
    };
    let rows = match read_rows(&dataset_path) {
        Ok(rows) => rows,
        Err(error) => {
            return finish_failed(
                context,
                &ensembles,
                &ensemble,
                &old,
                status,
                "BadData",
                &error.to_string(),
                now,
            )
            .await;
        }
    };
    let test = match voxel_crds::split::split_subjects(&subjects(&rows), &ensemble.spec.data.split)
    {
        Ok(split) if !split.test.is_empty() => split.test,
        Ok(_) => {
            let message =
                "spec.data.split: the ensemble needs test subjects (testSubjects or testFraction)";
            return finish_failed(
                context,
                &ensembles,
                &ensemble,
                &old,
                status,
                "InvalidSpec",
                message,
                now,
            )
            .await;
        }
        Err(error) => {
            return finish_failed(
                context,
                &ensembles,
                &ensemble,
                &old,
                status,
                "InvalidSpec",
                &error.to_string(),
                now,
            )
            .await;
        }
    };
    let output = format!("{}/{name}", finish::parent(&members.folders[0]));

    if let Some(attempt) = next_attempt {
        if attempt > MAX_ATTEMPTS {
            let message = format!("the evaluation was preempted {MAX_ATTEMPTS} times");
            return finish_failed(
                context,
                &ensembles,
                &ensemble,
                &old,
                status,
                "Preempted",
                &message,
                now,
            )
            .await;
        }
        let message = format!(
            "evaluating {} members on {} test subjects",
            members.folders.len(),
            test.len()
        );
        // The pod's name is the attempt's, so the status can follow the create: a restarted
        // operator finds the pod by its attempt label.
        set_condition(
            &mut status.conditions,
            condition(
                &ensemble,
                CONDITION_SUCCEEDED,
                ConditionStatus::Unknown,
                "Running",
                "",
                now,
            ),
        );
        let job = EnsembleJob {
            ensemble: &ensemble,
            attempt,
            claim: members.claim.clone(),
            members: members.folders.clone(),
            output: output.clone(),
            subjects: test.clone(),
            template: &members.template,
        };
        let pod = match children::ensemble_pod(&job, &context.settings) {
            Ok(pod) => pod,
            Err(error) => {
                return finish_failed(
                    context,
                    &ensembles,
                    &ensemble,
                    &old,
                    status,
                    "InvalidSpec",
                    &error.to_string(),
                    now,
                )
                .await;
            }
        };
        if let Some((_, stale)) = &latest {
            delete_pod(&pods, &stale.name_any()).await?;
        }
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => info!(ensemble = %name, namespace, attempt, "evaluation pod created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) => {
                let message = format!("the API server rejected the evaluation pod: {}", e.message);
                let news = set_condition(
                    &mut status.conditions,
                    condition(
                        &ensemble,
                        CONDITION_RUNNING,
                        ConditionStatus::False,
                        "PodRejected",
                        &message,
                        now,
                    ),
                );
                apply_status(&ensembles, &name, "Ensemble", &old, &status).await?;
                if news {
                    publish(context, &ensemble, true, "PodRejected", &message).await;
                }
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            Err(source) => {
                return Err(ReconcileError::Api {
                    action: format!("creating pod {}", pod.name_any()),
                    source,
                });
            }
        }
        let news = set_condition(
            &mut status.conditions,
            condition(
                &ensemble,
                CONDITION_RUNNING,
                ConditionStatus::True,
                "Running",
                &message,
                now,
            ),
        );
        apply_status(&ensembles, &name, "Ensemble", &old, &status).await?;
        if news {
            publish(context, &ensemble, false, "Started", &message).await;
        }
        return Ok(Action::await_change());
    }
    let (_, pod) = latest.expect("a pod exists when no attempt is to start");
    match end {
        None => Ok(Action::await_change()),
        Some(AttemptEnd::Completed) => {
            let candidate = finish::Candidate {
                source: members.source.clone(),
                claim: members.claim.clone(),
                output: output.clone(),
                networks: members.folders.clone(),
                names: members.names.clone(),
                content: ModelContent::Ensemble {
                    configuration: members.template.clone(),
                    members: members.names.clone(),
                    combine: ensemble.spec.combine,
                },
                seed: members.template.training.seed,
                compare_to: ensemble.spec.compare_to.clone(),
                publish: ensemble.spec.publish.clone(),
                git_commit: ensemble.annotations().get(ANNOTATION_GIT_COMMIT).cloned(),
                manifest_digest: crate::digest::digest_bytes(
                    &serde_json::to_vec(&ensemble.spec).expect("a spec serialises"),
                ),
            };
            let results = match finish::results(
                context,
                &namespace,
                &candidate,
                &dataset_path,
                &rows,
            )
            .await
            {
                Ok(results) => results,
                Err(Err(error)) => return Err(error),
                Err(Ok((reason, message))) => {
                    return finish_failed(
                        context, &ensembles, &ensemble, &old, status, reason, &message, now,
                    )
                    .await;
                }
            };
            status.metrics = results.metrics;
            status.mean_dice = voxel_crds::common::headline_dice(&status.metrics);
            let mut events = Vec::new();
            if let Some(comparison) = results.comparison {
                let message = finish::verdicts(&comparison);
                set_condition(
                    &mut status.conditions,
                    condition(
                        &ensemble,
                        CONDITION_COMPARED,
                        ConditionStatus::True,
                        "Compared",
                        &message,
                        now,
                    ),
                );
                events.push(("Compared", message));
                status.comparison = Some(comparison);
            }
            if let Some(publication) = results.published {
                let message = publication.message();
                set_condition(
                    &mut status.conditions,
                    condition(
                        &ensemble,
                        CONDITION_PUBLISHED,
                        ConditionStatus::True,
                        "Published",
                        &message,
                        now,
                    ),
                );
                events.push(("Published", message));
                status.published_model =
                    Some(models::version_ref(&publication.model, publication.version));
            }
            let dice = status
                .mean_dice
                .map(|d| format!("mean test Dice {d:.3}"))
                .unwrap_or_default();
            let message = format!("evaluated on {} test subjects; {dice}", test.len());
            for (type_, s) in [
                (CONDITION_SUCCEEDED, ConditionStatus::True),
                (CONDITION_RUNNING, ConditionStatus::False),
            ] {
                set_condition(
                    &mut status.conditions,
                    condition(&ensemble, type_, s, "Succeeded", &message, now),
                );
            }
            apply_status(&ensembles, &name, "Ensemble", &old, &status).await?;
            for (reason, message) in events {
                publish(context, &ensemble, false, reason, &message).await;
            }
            publish(context, &ensemble, false, "Succeeded", &message).await;
            Ok(Action::await_change())
        }
        Some(other) => {
            let message = format!(
                "the evaluation pod {} failed ({}): {}",
                pod.name_any(),
                other.reason(),
                observed.and_then(|o| o.message).unwrap_or_default().trim()
            );
            finish_failed(
                context, &ensembles, &ensemble, &old, status, "Failed", &message, now,
            )
            .await
        }
    }
}

/// The members and where they are, or why the Ensemble cannot go on.
async fn members(
    ensemble: &Ensemble,
    context: &Context,
    verify: bool,
) -> Result<Result<Members, Blocked>, ReconcileError> {
    let namespace = ensemble.namespace().unwrap_or_default();
    if let Err(errors) = ensemble.spec.validate() {
        return Ok(Err(Blocked::Invalid("InvalidSpec", errors.to_string())));
    }
    let Some(cv_name) = &ensemble.spec.cross_validation else {
        return published_members(ensemble, context, verify).await;
    };
    let cvs: Api<CrossValidation> = Api::namespaced(context.client.clone(), &namespace);
    let Some(cv) = cvs.get_opt(cv_name).await.map_err(api_error(format!(
        "reading CrossValidation {namespace}/{cv_name}"
    )))?
    else {
        return Ok(Err(Blocked::Waiting(format!(
            "CrossValidation {cv_name} does not exist"
        ))));
    };
    let experiments: Api<Experiment> = Api::namespaced(context.client.clone(), &namespace);
    let mut locations = Vec::new();
    let mut names = Vec::new();
    for fold in 0..cv.spec.folds {
        let fold_name = fold_name(cv_name, fold);
        let experiment = experiments
            .get_opt(&fold_name)
            .await
            .map_err(api_error(format!(
                "reading Experiment {namespace}/{fold_name}"
            )))?;
        // The fold as it is, if the CrossValidation still owns it; else as it recorded it.
        let uid = cv.uid();
        let current = experiment
            .filter(|e| super::children::controlled_by(&e.metadata, uid.as_deref()))
            .and_then(|e| e.status)
            .filter(|s| s.phase == Some(ExperimentPhase::Succeeded))
            .and_then(|s| s.artifacts);
        let recorded = cv
            .status
            .as_ref()
            .and_then(|s| s.folds.iter().find(|f| f.fold == fold))
            .filter(|f| f.state == voxel_crds::cross_validation::FoldState::Succeeded)
            .and_then(|f| f.artifacts.clone());
        let Some(location) = current.or(recorded) else {
            return Ok(Err(Blocked::Waiting(format!(
                "fold Experiment {fold_name} of CrossValidation {cv_name} has not succeeded"
            ))));
        };
        let Ok((claim, folder)) = parse_claim_uri(&location) else {
            return Ok(Err(Blocked::Invalid(
                "UnsupportedArtifacts",
                format!(
                    "{fold_name}: artifacts at {location}; in a cluster an Ensemble reads its members \
                     from a persistentVolumeClaim"
                ),
            )));
        };
        locations.push((claim.to_string(), folder.to_string()));
        names.push(fold_name);
    }
    let claim = locations[0].0.clone();
    if let Some((other, _)) = locations.iter().find(|(c, _)| *c != claim) {
        return Ok(Err(Blocked::Invalid(
            "UnsupportedArtifacts",
            format!("the folds are on two claims, {claim} and {other}; they must share one"),
        )));
    }
    let uid = cv.uid();
    Ok(Ok(Members {
        claim,
        folders: locations.into_iter().map(|(_, f)| f).collect(),
        names,
        template: cv.spec.template.clone(),
        source: ("CrossValidation", cv.name_any(), uid),
    }))
}

/// The networks of the published versions an Ensemble lists, each checked against the digests
/// its version recorded.
async fn published_members(
    ensemble: &Ensemble,
    context: &Context,
    verify: bool,
) -> Result<Result<Members, Blocked>, ReconcileError> {
    let namespace = ensemble.namespace().unwrap_or_default();
    let mut claim: Option<String> = None;
    let mut folders = Vec::new();
    let mut names = Vec::new();
    let mut template = None;
    for (i, member) in ensemble.spec.members.iter().enumerate() {
        let field = format!("spec.members[{i}]");
        let model = match models::resolve(
            &context.client,
            &namespace,
            &member.model,
            member.version,
            member.alias.as_deref(),
            &field,
        )
        .await
        {
            Ok(model) => model,
            Err(models::ModelError::Api { action, source }) => {
                return Err(ReconcileError::Api { action, source });
            }
            Err(error) => return Ok(Err(Blocked::Invalid("MemberNotFound", error.to_string()))),
        };
        let label = format!("{}:{}", model.spec.model_name, model.spec.version);
        let artifact = &model.spec.artifact;
        let Ok((member_claim, base)) = parse_claim_uri(&artifact.location) else {
            return Ok(Err(Blocked::Invalid(
                "UnsupportedArtifacts",
                format!(
                    "{field}: {label} is at {}; in a cluster an Ensemble reads its members from a \
                     persistentVolumeClaim",
                    artifact.location
                ),
            )));
        };
        if claim.as_deref().is_some_and(|c| c != member_claim) {
            return Ok(Err(Blocked::Invalid(
                "UnsupportedArtifacts",
                format!(
                    "{field}: {label} is on claim {member_claim}, the other members on {}; they must share one",
                    claim.unwrap_or_default()
                ),
            )));
        }
        claim = Some(member_claim.to_string());
        // A member is used only as it was published.
        for file in artifact.files.iter().filter(|_| verify) {
            let path = match context
                .mounts
                .resolve(member_claim, &format!("{base}/{}", file.path))
            {
                Ok(path) => path,
                Err(error) => {
                    return Ok(Err(Blocked::Invalid(
                        "ArtifactsNotReadable",
                        format!("{field}: {error}"),
                    )));
                }
            };
            match crate::digest::digest_file(&path) {
                Ok((digest, _)) if digest == file.digest => {}
                Ok((digest, _)) => {
                    return Ok(Err(Blocked::Invalid(
                        "MemberChanged",
                        format!(
                            "{field}: {label}: {} changed since it was published (digest {digest}, published {})",
                            file.path, file.digest
                        ),
                    )));
                }
                Err(error) => {
                    return Ok(Err(Blocked::Invalid(
                        "ArtifactsNotReadable",
                        format!("{field}: {label}: {}: {error}", path.display()),
                    )));
                }
            }
        }
        let networks: Vec<&str> = artifact
            .files
            .iter()
            .filter_map(|f| f.path.strip_suffix("/model.safetensors"))
            .collect();
        if networks.is_empty() {
            return Ok(Err(Blocked::Invalid(
                "MemberChanged",
                format!("{field}: {label} has no trained network among its files"),
            )));
        }
        for (n, network) in networks.iter().enumerate() {
            folders.push(format!("{base}/{network}"));
            names.push(if networks.len() == 1 {
                label.clone()
            } else {
                format!("{label}/{n}")
            });
        }
        let configuration = &model.spec.configuration;
        if template.is_none() {
            template = configuration.experiment.clone().or_else(|| {
                configuration
                    .ensemble
                    .as_ref()
                    .and_then(|e| e.experiment.clone())
            });
        }
    }
    let (Some(claim), Some(template)) = (claim, template) else {
        return Ok(Err(Blocked::Invalid(
            "InvalidSpec",
            "spec.members: no member records the configuration it trained with".into(),
        )));
    };
    Ok(Ok(Members {
        claim,
        folders,
        names,
        template,
        source: ("Ensemble", ensemble.name_any(), ensemble.uid()),
    }))
}

fn join(prefix: Option<&str>, path: &str) -> String {
    match prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(prefix) => format!("{prefix}/{path}"),
        None => path.to_string(),
    }
}

fn condition(
    ensemble: &Ensemble,
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
        observed_generation: ensemble.metadata.generation,
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish_failed(
    context: &Context,
    ensembles: &Api<Ensemble>,
    ensemble: &Ensemble,
    old: &EnsembleStatus,
    mut status: EnsembleStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let news = set_condition(
        &mut status.conditions,
        condition(
            ensemble,
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
            ensemble,
            CONDITION_RUNNING,
            ConditionStatus::False,
            reason,
            message,
            now,
        ),
    );
    apply_status(ensembles, &ensemble.name_any(), "Ensemble", old, &status).await?;
    if news {
        warn!(ensemble = %ensemble.name_any(), reason, message, "ensemble failed");
        publish(context, ensemble, true, reason, message).await;
    }
    Ok(Action::await_change())
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), ReconcileError> {
    match pods.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api {
            action: format!("deleting pod {name}"),
            source,
        }),
    }
}

async fn publish(
    context: &Context,
    ensemble: &Ensemble,
    warning: bool,
    reason: &str,
    message: &str,
) {
    publish_events(
        context,
        &ensemble.object_ref(&()),
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

    #[test]
    fn the_dataset_is_found_under_the_claim_sub_path() {
        assert_eq!(join(Some("/sub/"), "dataset.csv"), "sub/dataset.csv");
        assert_eq!(join(None, "dataset.csv"), "dataset.csv");
    }
}
