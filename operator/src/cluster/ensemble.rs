//! The Ensemble controller: an evaluation pod (the trainer image) that combines the members'
//! posteriors on the test subjects, then the comparison with the baseline and the publication
//! of a Model version.
//!
//! Members are the fold Experiments of a CrossValidation. The pod writes its per-subject
//! metrics next to the members in their artifact claim; the operator reads them there through
//! its claim mounts, keeps the per-structure summary in status, and records the files (with
//! their digests) in the published Model, whose per-subject metrics a later comparison reads
//! from the same place.

use std::{path::PathBuf, sync::Arc, time::Duration};

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
    results::Comparison,
};

use super::{
    apply_status,
    children::{self, EnsembleJob, LABEL_ATTEMPT, LABEL_ENSEMBLE, label_value},
    cross_validation::fold_name,
    experiment::{Context, ReconcileError, api_error, observe_pod},
    models::{self, ANNOTATION_GIT_COMMIT, ANNOTATION_METRICS},
    mounts::parse_claim_uri,
    publish_events,
};
use crate::{
    aggregate::summarize,
    attempts::{AttemptEnd, Transition, classify},
    compare::compare_tables,
    local::dataset::{dataset_digest, read_rows, subjects},
    metrics_table::MetricsTable,
    publication::{Lineage, ModelContent, digest_artifacts, model_resource},
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
    let output = format!("{}/{name}", parent(&members.folders[0]));

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
        apply_status(&ensembles, &name, "Ensemble", &old, &status).await?;
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
                set_condition(
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
                publish(context, &ensemble, true, "PodRejected", &message).await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            Err(source) => {
                return Err(ReconcileError::Api {
                    action: format!("creating pod {}", pod.name_any()),
                    source,
                });
            }
        }
        if news {
            publish(context, &ensemble, false, "Started", &message).await;
        }
        return Ok(Action::await_change());
    }
    let (_, pod) = latest.expect("a pod exists when no attempt is to start");
    match end {
        None => Ok(Action::await_change()),
        Some(AttemptEnd::Completed) => {
            let results =
                match results(context, &ensemble, &members, &output, &dataset_path, &rows).await {
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
                let message = verdicts(&comparison);
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
            if let Some(Publication {
                model,
                version,
                new,
                promotion,
            }) = results.published
            {
                let mut message = if new {
                    format!("published {model} version {version}")
                } else {
                    format!("{model} version {version} was published from these results before")
                };
                match promotion {
                    Some((alias, Ok(()))) => {
                        message.push_str(&format!("; alias {alias} points to it"))
                    }
                    Some((alias, Err(reason))) => {
                        message.push_str(&format!("; alias {alias} did not move: {reason}"))
                    }
                    None => {}
                }
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
                status.published_model = Some(models::version_ref(&model, version));
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
        let status = experiment.and_then(|e| e.status).unwrap_or_default();
        let location = match (status.phase, status.artifacts) {
            (Some(ExperimentPhase::Succeeded), Some(location)) => location,
            _ => {
                return Ok(Err(Blocked::Waiting(format!(
                    "fold Experiment {fold_name} has not succeeded"
                ))));
            }
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

/// What a finished evaluation gives.
struct Results {
    metrics: Vec<voxel_crds::results::StructureSummary>,
    comparison: Option<Comparison>,
    published: Option<Publication>,
}

/// A version published, and what became of the alias the spec promotes.
struct Publication {
    model: String,
    version: u32,
    /// False when the same results had been published before.
    new: bool,
    /// The alias, and whether it moved (`Err` holds why not).
    promotion: Option<(String, Result<(), String>)>,
}

/// Moves the alias of `publish.promote` to a version just published, unless it is gated and the
/// version is significantly worse than the alias's holder (the local registry's rule,
/// [`crate::publication::promotion_allowed`]).
async fn promote_alias(
    context: &Context,
    namespace: &str,
    model: &str,
    promote: &voxel_crds::common::PromoteSpec,
    published: &models::Published,
    candidate: &MetricsTable,
) -> Result<Result<(), String>, models::ModelError> {
    let version = published.version;
    if !published.new {
        // Re-running an old manifest must not pull an alias back to the version it made then.
        return Ok(Err(format!(
            "version {version} was published before; an alias moves only when a version is \
             first published"
        )));
    }
    let versions = models::versions(&context.client, namespace, model).await?;
    let gate = |holder: Option<u32>| -> Result<(), String> {
        let holder = match holder {
            Some(holder) if promote.gated && holder != version => holder,
            _ => return Ok(()),
        };
        let holder_model = versions
            .get(&holder)
            .ok_or_else(|| format!("the alias's holder, version {holder}, does not exist"))?;
        let baseline = baseline_metrics(context, holder_model)?;
        let comparison = compare_tables(
            &baseline,
            candidate,
            &format!("{model}:{holder}"),
            &format!("{model}:{version}"),
            &crate::compare::CompareOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        crate::publication::promotion_allowed(&comparison, holder)
    };
    models::move_alias(
        &context.client,
        namespace,
        model,
        &promote.alias,
        version,
        gate,
    )
    .await
}

/// Reads the evaluation's metrics, compares them and publishes. `Err(Ok(..))` is a failure of
/// the Ensemble (reason, message); `Err(Err(..))` an API error to retry.
async fn results(
    context: &Context,
    ensemble: &Ensemble,
    members: &Members,
    output: &str,
    dataset_path: &std::path::Path,
    rows: &[crate::local::dataset::DatasetRow],
) -> Result<Results, Result<(&'static str, String), ReconcileError>> {
    let namespace = ensemble.namespace().unwrap_or_default();
    let not_readable = |e: super::mounts::MountError| Ok(("ArtifactsNotReadable", e.to_string()));
    let output_dir = context
        .mounts
        .resolve(&members.claim, output)
        .map_err(not_readable)?;
    let metrics_path = output_dir.join("metrics.csv");
    let table = MetricsTable::read(&metrics_path).map_err(|e| Ok(("BadResults", e.to_string())))?;
    let metrics = summarize(&table);

    let comparison = match &ensemble.spec.compare_to {
        None => None,
        Some(spec) => {
            let baseline = models::resolve_baseline(&context.client, &namespace, spec)
                .await
                .map_err(|e| Ok(("BaselineNotFound", e.to_string())))?;
            let baseline_table =
                baseline_metrics(context, &baseline).map_err(|m| Ok(("BaselineNotReadable", m)))?;
            let comparison = compare_tables(
                &baseline_table,
                &table,
                &format!("{}:{}", baseline.spec.model_name, baseline.spec.version),
                &format!("{} {}", members.source.0, members.source.1),
                &crate::local::stages::compare_options(spec),
            )
            .map_err(|e| Ok(("ComparisonFailed", format!("spec.compareTo: {e}"))))?;
            Some(comparison)
        }
    };

    let published = match &ensemble.spec.publish {
        None => None,
        Some(publish) => {
            let base = common_folder(output, &members.folders);
            let mut files: Vec<(PathBuf, String)> = Vec::new();
            for folder in &members.folders {
                for file in ["model.safetensors", "experiment.yaml"] {
                    let relative = format!("{}/{file}", relative_to(folder, base));
                    let path = context
                        .mounts
                        .resolve(&members.claim, &format!("{folder}/{file}"))
                        .map_err(not_readable)?;
                    files.push((path, relative));
                }
            }
            let metrics_relative = format!("{}/metrics.csv", relative_to(output, base));
            files.push((metrics_path.clone(), metrics_relative.clone()));
            let (artifact_files, digest) = digest_artifacts(&files).map_err(|(path, e)| {
                Ok(("ArtifactsNotReadable", format!("{}: {e}", path.display())))
            })?;
            let dataset =
                dataset_digest(dataset_path, rows).map_err(|e| Ok(("BadData", e.to_string())))?;
            let (kind, source_name, source_uid) = members.source.clone();
            let lineage = Lineage {
                source_kind: kind.into(),
                source_name,
                source_uid: source_uid.clone(),
                trainer_image: Some(context.settings.trainer_image.clone()),
                manifest_path: String::new(),
                manifest_digest: crate::digest::digest_bytes(
                    &serde_json::to_vec(&ensemble.spec).expect("a spec serialises"),
                ),
                dataset_digest: dataset,
                seed: members.template.training.seed,
                trainer_version: trainer_version(&context.settings.trainer_image),
                git_commit: ensemble.annotations().get(ANNOTATION_GIT_COMMIT).cloned(),
                runs: members.names.clone(),
            };
            let content = ModelContent::Ensemble {
                configuration: members.template.clone(),
                members: members.names.clone(),
                combine: ensemble.spec.combine,
            };
            let location = format!("pvc://{}/{base}", members.claim);
            let mut resource = model_resource(
                &publish.model,
                1,
                &content,
                &location,
                &artifact_files,
                &digest,
                &metrics,
                comparison.as_ref(),
                &lineage,
            )
            .map_err(|e| Ok(("PublishFailed", e)))?;
            resource
                .annotations_mut()
                .insert(ANNOTATION_METRICS.into(), metrics_relative);
            let key = format!("{}/{digest}", source_uid.unwrap_or_default());
            let published = models::publish(&context.client, &namespace, resource, &key)
                .await
                .map_err(|e| match e {
                    models::ModelError::Api { action, source } => {
                        Err(ReconcileError::Api { action, source })
                    }
                    other => Ok(("PublishFailed", other.to_string())),
                })?;
            info!(
                model = publish.model,
                version = published.version,
                new = published.new,
                "published"
            );
            let promotion = match &publish.promote {
                None => None,
                Some(promote) => Some((
                    promote.alias.clone(),
                    promote_alias(
                        context,
                        &namespace,
                        &publish.model,
                        promote,
                        &published,
                        &table,
                    )
                    .await
                    .map_err(|e| match e {
                        models::ModelError::Api { action, source } => {
                            Err(ReconcileError::Api { action, source })
                        }
                        other => Ok(("PromotionFailed", other.to_string())),
                    })?,
                )),
            };
            Some(Publication {
                model: publish.model.clone(),
                version: published.version,
                new: published.new,
                promotion,
            })
        }
    };
    Ok(Results {
        metrics,
        comparison,
        published,
    })
}

/// The per-subject test metrics of a published version, checked against its recorded digest.
fn baseline_metrics(context: &Context, model: &voxel_crds::Model) -> Result<MetricsTable, String> {
    let label = format!("{}:{}", model.spec.model_name, model.spec.version);
    let relative = model
        .annotations()
        .get(ANNOTATION_METRICS)
        .ok_or_else(|| format!("{label} records no per-subject metrics ({ANNOTATION_METRICS})"))?;
    let recorded = model
        .spec
        .artifact
        .files
        .iter()
        .find(|f| &f.path == relative)
        .ok_or_else(|| format!("{label}: {relative} is not among its artifact files"))?;
    let dir = context
        .mounts
        .resolve_uri(&model.spec.artifact.location)
        .map_err(|e| format!("{label}: {e}"))?;
    let path = dir.join(relative);
    let (digest, _) = crate::digest::digest_file(&path)
        .map_err(|e| format!("{label}: {}: {e}", path.display()))?;
    if digest != recorded.digest {
        return Err(format!(
            "{label}: {} changed since it was published (digest {digest}, published {})",
            path.display(),
            recorded.digest
        ));
    }
    MetricsTable::read(&path).map_err(|e| format!("{label}: {e}"))
}

/// The tag of the trainer image, which is the trainer's version in released images.
fn trainer_version(image: &str) -> String {
    image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map(|(_, tag)| tag.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn verdicts(comparison: &Comparison) -> String {
    let verdicts: Vec<String> = comparison
        .verdicts
        .iter()
        .map(|v| format!("{}: {:?}", v.structure, v.verdict))
        .collect();
    format!("against {}: {}", comparison.baseline, verdicts.join(", "))
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

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The deepest folder that holds `output` and every member folder.
fn common_folder<'a>(output: &'a str, members: &[String]) -> &'a str {
    let mut base = parent(output);
    while !base.is_empty()
        && !members.iter().all(|m| {
            m.strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    {
        base = parent(base);
    }
    base
}

fn relative_to<'a>(path: &'a str, base: &str) -> &'a str {
    if base.is_empty() {
        return path;
    }
    path.strip_prefix(base)
        .map_or(path, |rest| rest.trim_start_matches('/'))
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
    fn paths_of_a_version_are_relative_to_the_folder_of_its_runs() {
        assert_eq!(parent("experiments/team/cv-fold-0"), "experiments/team");
        assert_eq!(
            relative_to("experiments/team/cv-fold-0", "experiments/team"),
            "cv-fold-0"
        );
        assert_eq!(join(Some("/sub/"), "dataset.csv"), "sub/dataset.csv");
        let members = [
            "runs/team/cv-fold-0".to_string(),
            "runs/team/cv-fold-1".to_string(),
        ];
        assert_eq!(common_folder("runs/team/ens", &members), "runs/team");
        let elsewhere = ["other/team/m".to_string()];
        assert_eq!(common_folder("runs/team/ens", &elsewhere), "");
        assert_eq!(relative_to("other/team/m", ""), "other/team/m");
        assert_eq!(join(None, "dataset.csv"), "dataset.csv");
        assert_eq!(
            trainer_version("ghcr.io/voxel-dev/voxel-trainer:0.1.0"),
            "0.1.0"
        );
        assert_eq!(trainer_version("localhost:5000/voxel-trainer"), "unknown");
    }
}
