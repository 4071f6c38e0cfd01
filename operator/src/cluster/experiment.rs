//! The Experiment controller: each reconcile is fetch → validate → observe → plan → apply.
//!
//! The decisions are [`crate::attempts::plan`]'s and the children are built by
//! [`super::children`]; this file only reads from and writes to the API server. The status is
//! written with server-side apply under one field manager, before any pod is created for the
//! attempt it records, so that an operator restarted between the two finds the attempt and
//! creates (or finds) the same pod instead of a second one.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Node, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Recorder, Reporter},
        watcher,
    },
};
use thiserror::Error;
use tracing::{debug, info, warn};
use voxel_crds::{
    Experiment,
    common::{
        CONDITION_COMPARED, CONDITION_PUBLISHED, CONDITION_RUNNING, CONDITION_SUCCEEDED, Condition,
        ConditionStatus, set_condition,
    },
    experiment::{ExperimentPhase, ExperimentStatus},
};

use super::{
    FIELD_MANAGER,
    children::{self, Settings},
    metrics::OperatorMetrics,
    observe,
};
use crate::attempts::{self, PlanInput, PodObservation, Transition};

/// How often a running trainer's metrics endpoint is scraped.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(10);

/// Failures of one reconcile; the controller retries them with back-off.
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// A short label for the errors-by-kind metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 422 => "invalid",
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
        }
    }
}

pub(crate) fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings of trainer pods.
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's own metrics.
    pub metrics: Arc<OperatorMetrics>,
    /// Scrapes trainer metrics endpoints.
    pub http: reqwest::Client,
    /// How often a running trainer is scraped.
    pub scrape_interval: Duration,
    /// The claims mounted into the operator, to read results from.
    pub mounts: super::mounts::ClaimMounts,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<OperatorMetrics>,
        reporter: Reporter,
        scrape_interval: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client without TLS settings builds");
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            http,
            scrape_interval,
            mounts: super::mounts::ClaimMounts::default(),
        }
    }
}

/// Runs the Experiment controller until `shutdown` resolves. `namespace` limits it to one
/// namespace.
pub async fn run(
    context: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let (experiments, pods, maps): (Api<Experiment>, Api<Pod>, Api<ConfigMap>) = match namespace {
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
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=voxel-operator");
    Controller::new(experiments, watcher::Config::default())
        .owns(pods, children.clone())
        .owns(maps, children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(experiment = %object, "reconciled"),
                Err(error) => debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(
    experiment: Arc<Experiment>,
    error: &ReconcileError,
    context: Arc<Context>,
) -> Action {
    warn!(
        experiment = %experiment.name_any(),
        namespace = experiment.namespace().unwrap_or_default(),
        %error,
        "reconcile failed; retrying"
    );
    context.metrics.reconcile_error(error.kind());
    Action::requeue(Duration::from_secs(5))
}

/// One reconcile of one Experiment.
pub async fn reconcile(
    experiment: Arc<Experiment>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&experiment, &context).await;
    context.metrics.reconciled(started.elapsed());
    result
}

async fn reconcile_inner(cached: &Experiment, context: &Context) -> Result<Action, ReconcileError> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let experiments: Api<Experiment> = Api::namespaced(context.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);

    // Fetch: the cache may lag behind the status this operator wrote a moment ago, and
    // deciding on a stale status would count one preemption twice.
    let Some(experiment) = experiments
        .get_opt(&name)
        .await
        .map_err(api_error(format!("reading Experiment {namespace}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    if experiment.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the pods and ConfigMaps it owns.
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let old_status = experiment.status.clone().unwrap_or_default();
    // A spec refused as invalid and then edited gets a fresh start.
    let mut experiment = experiment;
    let refused = old_status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SUCCEEDED && c.reason == "InvalidSpec");
    if refused && old_status.observed_generation != experiment.metadata.generation {
        experiment.status = Some(ExperimentStatus::default());
    }
    let experiment = experiment;

    // Validate (pure): the schema has checked most of this, but an operator can meet objects
    // written before a rule existed.
    let mut problem = invalid(&experiment, &context.settings);
    // A baseline that does not exist fails the run before anything trains.
    if problem.is_none()
        && old_status.attempts.is_empty()
        && let Some(compare_to) = &experiment.spec.compare_to
    {
        match super::models::resolve_baseline(&context.client, &namespace, compare_to).await {
            Ok(_) => {}
            Err(super::models::ModelError::Api { action, source }) => {
                return Err(ReconcileError::Api { action, source });
            }
            Err(error) => problem = Some(error.to_string()),
        }
    }
    if let Some(problem) = problem {
        let mut status = experiment.status.clone().unwrap_or_default();
        let transitions = reject(&mut status, &experiment, &problem, now);
        write_status(&experiments, &name, &old_status, &status).await?;
        if !transitions.is_empty() {
            context.metrics.experiment_finished("failed");
            // A trainer started before the spec became invalid is stopped.
            if let Some(last) = old_status.attempts.last()
                && let Some(pod) = pods
                    .get_opt(&last.pod)
                    .await
                    .map_err(api_error(format!("reading pod {namespace}/{}", last.pod)))?
                && !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            {
                delete_pod(&pods, &last.pod, None).await?;
            }
        }
        publish(context, &experiment, &transitions).await;
        return Ok(Action::await_change());
    }

    // Observe.
    let pod = match old_status.attempts.last() {
        Some(last) => pods
            .get_opt(&last.pod)
            .await
            .map_err(api_error(format!("reading pod {namespace}/{}", last.pod)))?,
        None => None,
    };
    let observation = match &pod {
        Some(pod) => Some(observe_pod(context, pod).await?),
        None => None,
    };
    let mut observed = experiment.clone();
    if let Some(pod) = pod.as_ref().filter(|p| running(p))
        && let Some(progress) = scrape(context, pod, old_status.progress.as_ref(), now).await
    {
        observed
            .status
            .get_or_insert_with(ExperimentStatus::default)
            .progress = Some(progress);
    }

    // Plan (pure).
    let mut plan = attempts::plan(&PlanInput {
        experiment: &observed,
        pod: observation.clone(),
        now,
    });
    if let Ok(location) = children::artifact_location(&experiment, &context.settings) {
        plan.status.artifacts = Some(location.uri());
    }

    // Apply: the status first, then the children it records.
    let wrote = write_status(&experiments, &name, &old_status, &plan.status).await?;
    if wrote {
        count_outcomes(context, &old_status, &plan.status);
    }
    let mut transitions = plan.transitions.clone();
    if let Some(attempt) = plan.create_attempt
        && let Err(rejection) = create_children(context, &experiment, attempt).await
    {
        let ReconcileError::Api { source, .. } = &rejection;
        let kube::Error::Api(status) = source else {
            return Err(rejection);
        };
        // The API server refused the pod (quota, admission, an invalid field): say so in
        // the status instead of claiming the run is under way.
        let message = format!(
            "the API server rejected the trainer pod: {}",
            status.message
        );
        let mut status = plan.status.clone();
        let transition = pod_rejected(&mut status, &experiment, &message, now);
        write_status(&experiments, &name, &plan.status, &status).await?;
        // Nothing started.
        transitions.retain(|t| t.reason != "Started" && t.reason != "Resumed");
        transitions.extend(transition);
        publish(context, &experiment, &transitions).await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    if plan.create_attempt == Some(1) {
        context.metrics.experiment_started();
    }
    if let Some(stale) = &plan.delete_pod {
        delete_pod(&pods, stale, observation.as_ref()).await?;
    }
    // A succeeded run is compared and published once.
    if plan.status.phase == Some(ExperimentPhase::Succeeded)
        && (experiment.spec.compare_to.is_some() || experiment.spec.publish.is_some())
        && !plan
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_PUBLISHED || c.type_ == CONDITION_COMPARED)
    {
        let mut status = plan.status.clone();
        transitions.extend(finish_run(context, &experiment, &mut status, now).await?);
        write_status(&experiments, &name, &plan.status, &status).await?;
    }
    if plan.delete_experiment {
        info!(experiment = %name, namespace, "ttlSecondsAfterFinished passed; deleting");
        experiments
            .delete(&name, &DeleteParams::background())
            .await
            .map_err(api_error(format!("deleting Experiment {namespace}/{name}")))?;
    }
    publish(context, &experiment, &transitions).await;

    let running = plan.status.phase == Some(ExperimentPhase::Running);
    let requeue = match (plan.requeue_after, running) {
        (Some(after), true) => Some(after.min(context.scrape_interval)),
        (None, true) => Some(context.scrape_interval),
        (after, false) => after,
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Compares a succeeded Experiment's test metrics with its baseline and publishes it, into
/// `status`; returns the Events to publish. A failure of either is a `False` condition: the
/// training itself succeeded.
async fn finish_run(
    context: &Context,
    experiment: &Experiment,
    status: &mut ExperimentStatus,
    now: Timestamp,
) -> Result<Vec<Transition>, ReconcileError> {
    let namespace = experiment.namespace().unwrap_or_default();
    let name = experiment.name_any();
    let spec = &experiment.spec;
    let failed_type = if spec.publish.is_some() {
        CONDITION_PUBLISHED
    } else {
        CONDITION_COMPARED
    };
    let outcome = async {
        let location = status.artifacts.clone().unwrap_or_default();
        let (claim, output) = super::mounts::parse_claim_uri(&location)
            .map_err(|e| Ok(("UnsupportedArtifacts", e.to_string())))?;
        let data = spec
            .data
            .source
            .persistent_volume_claim
            .as_ref()
            .ok_or_else(|| {
                Ok((
                    "InvalidSpec",
                    children::BuildError::DataNotMountable.to_string(),
                ))
            })?;
        let dataset = match data.sub_path.as_deref().map(|p| p.trim_matches('/')) {
            Some(sub) if !sub.is_empty() => format!("{sub}/{}", spec.data.dataset),
            _ => spec.data.dataset.clone(),
        };
        let dataset_path = context
            .mounts
            .resolve(&data.claim_name, &dataset)
            .map_err(|e| Ok(("DataNotReadable", e.to_string())))?;
        let rows = crate::local::dataset::read_rows(&dataset_path)
            .map_err(|e| Ok(("BadData", e.to_string())))?;
        let candidate = super::finish::Candidate {
            source: ("Experiment", name.clone(), experiment.uid()),
            claim: claim.to_string(),
            output: output.to_string(),
            networks: vec![output.to_string()],
            names: vec![name.clone()],
            content: crate::publication::ModelContent::Single {
                configuration: spec.clone(),
            },
            seed: spec.training.seed,
            compare_to: spec.compare_to.clone(),
            publish: spec.publish.clone(),
            git_commit: experiment
                .annotations()
                .get(super::models::ANNOTATION_GIT_COMMIT)
                .cloned(),
            manifest_digest: crate::digest::digest_bytes(
                &serde_json::to_vec(spec).expect("a spec serialises"),
            ),
        };
        super::finish::results(context, &namespace, &candidate, &dataset_path, &rows).await
    }
    .await;
    let condition = |type_: &str, status: ConditionStatus, reason: &str, message: &str| Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(now),
        observed_generation: experiment.metadata.generation,
    };
    let mut transitions = Vec::new();
    match outcome {
        Err(Err(error)) => return Err(error),
        Err(Ok((reason, message))) => {
            set_condition(
                &mut status.conditions,
                condition(failed_type, ConditionStatus::False, reason, &message),
            );
            transitions.push(Transition {
                warning: true,
                reason: reason.into(),
                message,
            });
        }
        Ok(results) => {
            if let Some(comparison) = results.comparison {
                let message = super::finish::verdicts(&comparison);
                set_condition(
                    &mut status.conditions,
                    condition(
                        CONDITION_COMPARED,
                        ConditionStatus::True,
                        "Compared",
                        &message,
                    ),
                );
                transitions.push(Transition {
                    warning: false,
                    reason: "Compared".into(),
                    message,
                });
                status.comparison = Some(comparison);
            }
            if let Some(publication) = results.published {
                let message = publication.message();
                set_condition(
                    &mut status.conditions,
                    condition(
                        CONDITION_PUBLISHED,
                        ConditionStatus::True,
                        "Published",
                        &message,
                    ),
                );
                transitions.push(Transition {
                    warning: false,
                    reason: "Published".into(),
                    message,
                });
                status.published_model = Some(super::models::version_ref(
                    &publication.model,
                    publication.version,
                ));
            }
        }
    }
    Ok(transitions)
}

/// Why an Experiment cannot run on this cluster, if it cannot.
fn invalid(experiment: &Experiment, settings: &Settings) -> Option<String> {
    if let Err(errors) = experiment.spec.validate() {
        return Some(errors.to_string());
    }
    children::trainer_pod(experiment, 1, settings)
        .err()
        .map(|e| e.to_string())
}

/// Fails an Experiment whose spec cannot run; returns the Event to publish (none when it had
/// already been failed for this).
fn reject(
    status: &mut ExperimentStatus,
    experiment: &Experiment,
    problem: &str,
    now: Timestamp,
) -> Vec<Transition> {
    let generation = experiment.metadata.generation;
    let already =
        status.phase == Some(ExperimentPhase::Failed) && status.observed_generation == generation;
    if already || matches!(status.phase, Some(ExperimentPhase::Succeeded)) {
        return Vec::new();
    }
    status.phase = Some(ExperimentPhase::Failed);
    status.observed_generation = generation;
    status.completion_time.get_or_insert(Time(now));
    if let Some(last) = status.attempts.last_mut().filter(|a| a.end.is_none()) {
        last.end = Some(Time(now));
        last.reason = Some("InvalidSpec".into());
    }
    for (type_, reason) in [
        (CONDITION_SUCCEEDED, "InvalidSpec"),
        (CONDITION_RUNNING, "InvalidSpec"),
    ] {
        set_condition(
            &mut status.conditions,
            Condition {
                type_: type_.into(),
                status: ConditionStatus::False,
                reason: reason.into(),
                message: problem.into(),
                last_transition_time: Time(now),
                observed_generation: generation,
            },
        );
    }
    vec![Transition {
        warning: true,
        reason: "InvalidSpec".into(),
        message: problem.into(),
    }]
}

/// Marks the pod of the latest attempt as refused by the API server.
fn pod_rejected(
    status: &mut ExperimentStatus,
    experiment: &Experiment,
    message: &str,
    now: Timestamp,
) -> Option<Transition> {
    status.phase = Some(ExperimentPhase::Pending);
    let changed = set_condition(
        &mut status.conditions,
        Condition {
            type_: CONDITION_RUNNING.into(),
            status: ConditionStatus::False,
            reason: "PodRejected".into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: experiment.metadata.generation,
        },
    );
    changed.then(|| Transition {
        warning: true,
        reason: "PodRejected".into(),
        message: message.into(),
    })
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod.metadata.deletion_timestamp.is_none()
}

pub(crate) async fn observe_pod(
    context: &Context,
    pod: &Pod,
) -> Result<PodObservation, ReconcileError> {
    let node = match pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
        Some(node) => Api::<Node>::all(context.client.clone())
            .get_opt(node)
            .await
            .map_err(api_error(format!("reading node {node}")))?,
        None => None,
    };
    Ok(observe::observe_pod(
        pod,
        observe::node_state(pod, node.as_ref()),
    ))
}

/// The trainer's progress from its metrics endpoint; `None` (and the previous progress kept)
/// when it does not answer.
async fn scrape(
    context: &Context,
    pod: &Pod,
    previous: Option<&voxel_crds::experiment::TrainingProgress>,
    now: Timestamp,
) -> Option<voxel_crds::experiment::TrainingProgress> {
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let url = format!("http://{ip}:{}/metrics", children::METRICS_PORT);
    let text = match context
        .http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
    {
        Ok(response) => response.text().await.ok()?,
        Err(error) => {
            debug!(%url, %error, "trainer metrics not available yet");
            return None;
        }
    };
    observe::progress_from_metrics(&text, previous, now)
}

/// Writes the status with server-side apply when it differs from what was read; returns
/// whether it wrote.
async fn write_status(
    experiments: &Api<Experiment>,
    name: &str,
    old: &ExperimentStatus,
    new: &ExperimentStatus,
) -> Result<bool, ReconcileError> {
    super::apply_status(experiments, name, "Experiment", old, new).await
}

/// Creates the ConfigMap (or brings it up to date) and the pod of `attempt`; a pod that
/// already exists is the one this attempt made before a restart.
async fn create_children(
    context: &Context,
    experiment: &Experiment,
    attempt: usize,
) -> Result<(), ReconcileError> {
    let namespace = experiment.namespace().unwrap_or_default();
    let map = children::config_map(experiment);
    let map_name = map.name_any();
    Api::<ConfigMap>::namespaced(context.client.clone(), &namespace)
        .patch(
            &map_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&map),
        )
        .await
        .map_err(api_error(format!(
            "applying ConfigMap {namespace}/{map_name}"
        )))?;
    let pod = children::trainer_pod(experiment, attempt, &context.settings)
        .expect("checked by invalid() before planning");
    let pod_name = pod.name_any();
    match Api::<Pod>::namespaced(context.client.clone(), &namespace)
        .create(&PostParams::default(), &pod)
        .await
    {
        Ok(_) => {
            info!(experiment = %experiment.name_any(), namespace, pod = pod_name, attempt, "trainer pod created");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(pod = pod_name, "trainer pod exists already");
            Ok(())
        }
        Err(source) => Err(ReconcileError::Api {
            action: format!("creating pod {namespace}/{pod_name}"),
            source,
        }),
    }
}

/// Deletes a trainer pod; one on a lost node is deleted at once, since no kubelet will confirm.
async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    observation: Option<&PodObservation>,
) -> Result<(), ReconcileError> {
    let mut params = DeleteParams::background();
    if observation.is_some_and(|o| o.node_lost) {
        params = params.grace_period(0);
    }
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api {
            action: format!("deleting pod {name}"),
            source,
        }),
    }
}

/// Publishes an Event per transition; a failure to publish is logged, never fatal.
async fn publish(context: &Context, experiment: &Experiment, transitions: &[Transition]) {
    super::publish_events(context, &experiment.object_ref(&()), transitions).await;
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.into();
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[..end].into()
}

/// Counts Experiments finishing and attempts preempted or retried, from a status change.
fn count_outcomes(context: &Context, old: &ExperimentStatus, new: &ExperimentStatus) {
    let metrics = &context.metrics;
    if old.phase != new.phase {
        match new.phase {
            Some(ExperimentPhase::Succeeded) => metrics.experiment_finished("succeeded"),
            Some(ExperimentPhase::Failed) => metrics.experiment_finished("failed"),
            Some(ExperimentPhase::Running) => {
                if let Some(last) = new.attempts.last() {
                    let waited = Timestamp::now().as_second() - last.start.0.as_second();
                    metrics.pending_for_gpu(waited.max(0) as f64);
                }
            }
            _ => {}
        }
    }
    for _ in old.preemptions..new.preemptions {
        metrics.attempt_preempted();
    }
    for _ in old.retries..new.retries {
        metrics.attempt_retried();
    }
}
