//! The decisions of one Experiment's run: how a trainer attempt ended, whether and when the next
//! one starts, and when the run is over.
//!
//! Everything here is pure: the cluster controller turns its pods into [`PodObservation`]s and
//! asks [`plan`] what to do; the answer names the pods to create or delete and the status to
//! write. The same trainer exit codes mean the same thing in local mode (see
//! [`crate::local::process`]).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use voxel_crds::{
    Experiment,
    common::{
        CONDITION_RUNNING, CONDITION_STALLED, CONDITION_SUCCEEDED, CONDITION_SUSPENDED, Condition,
        ConditionStatus, set_condition,
    },
    experiment::{Attempt, ExperimentPhase, ExperimentStatus},
    results::{MetricAggregate, StructureSummary},
};

/// Exit code of the trainer for an invalid command line.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of the trainer for invalid input data: never retried.
pub const EXIT_BAD_DATA: i32 = 65;
/// Exit code of the trainer for an invalid configuration: never retried.
pub const EXIT_BAD_CONFIG: i32 = 78;
/// Exit code of a process ended by SIGTERM (128 + 15): what a drained or reclaimed node does.
pub const EXIT_SIGTERM: i32 = 143;

/// First delay before retrying a failed attempt; it doubles with every retry.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest delay before a retry (the same cap as a batch/v1 Job's).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The phase of a pod, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Accepted, not running yet (unscheduled, or its container is starting).
    Pending,
    /// Its container is running.
    Running,
    /// Its container exited 0.
    Succeeded,
    /// Its container exited otherwise, or the pod was evicted.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

/// What the controller saw of the pod of the latest attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObservation {
    /// The pod's name.
    pub name: String,
    /// Its phase.
    pub phase: PodPhase,
    /// Reason and message of a `DisruptionTarget` condition that is `True`.
    pub disruption: Option<(String, String)>,
    /// The pod is bound to a node that no longer exists or no longer reports.
    pub node_lost: bool,
    /// `status.reason` of the pod (`Evicted`, `Preempting`, ...).
    pub pod_reason: Option<String>,
    /// Exit code of the trainer container, once it terminated.
    pub exit_code: Option<i32>,
    /// Reason of the container's termination (`Completed`, `Error`, `OOMKilled`).
    pub container_reason: Option<String>,
    /// The trainer's termination message.
    pub message: Option<String>,
    /// When the container finished.
    pub finished_at: Option<Timestamp>,
    /// The pod is being deleted.
    pub deleting: bool,
    /// When the trainer container started (running or terminated); `progressDeadlineSeconds`
    /// counts from here, not from the pod's creation.
    pub started_at: Option<Timestamp>,
    /// Why a pending pod is not running yet, as the scheduler or kubelet says it
    /// (`Unschedulable: 0/3 nodes ...`, `ImagePullBackOff: ...`).
    pub waiting: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    /// The trainer finished and evaluated; the message holds its summary.
    Completed,
    /// The pod was taken away (spot reclaim, drain, eviction, node lost, SIGTERM): the next
    /// attempt resumes from the checkpoint and nothing counts against `backoffLimit`.
    Preempted {
        /// A CamelCase word: the disruption's reason, `NodeLost`, `Evicted` or `Terminated`.
        reason: String,
    },
    /// The trainer refused its input: retrying cannot help.
    Permanent {
        /// `BadData`, `BadConfiguration` or `InvalidCommandLine`.
        reason: &'static str,
    },
    /// Any other failure: retried with back-off up to `backoffLimit`.
    Failed {
        /// The container's reason (`OOMKilled`, `Error`) or `Error`.
        reason: String,
    },
}

impl AttemptEnd {
    /// The word recorded as the attempt's reason.
    pub fn reason(&self) -> String {
        match self {
            Self::Completed => "Completed".into(),
            Self::Preempted { reason } | Self::Failed { reason } => reason.clone(),
            Self::Permanent { reason } => (*reason).into(),
        }
    }
}

/// How the pod of an attempt ended, or `None` while it may still run.
///
/// A disruption wins over the exit code: a reclaimed node SIGTERMs the trainer, which then exits
/// non-zero, and that is a preemption, not a failure of the run. It ends the attempt once the
/// trainer has exited (or never started, or its node is gone), so that two trainers never
/// write the same checkpoint folder.
pub fn classify(pod: &PodObservation) -> Option<AttemptEnd> {
    // A disrupted trainer that still runs is in its grace period, perhaps writing a
    // checkpoint: the next attempt waits for it to exit, unless its node is gone.
    let still_running = matches!(pod.phase, PodPhase::Running | PodPhase::Unknown);
    if let Some((reason, _)) = &pod.disruption
        && pod.phase != PodPhase::Succeeded
        && (!still_running || pod.node_lost)
    {
        let reason = if reason.is_empty() {
            "Preempted"
        } else {
            reason
        };
        return Some(AttemptEnd::Preempted {
            reason: reason.into(),
        });
    }
    if pod.node_lost && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
        return Some(AttemptEnd::Preempted {
            reason: "NodeLost".into(),
        });
    }
    match pod.phase {
        PodPhase::Pending | PodPhase::Running | PodPhase::Unknown => None,
        PodPhase::Succeeded => Some(AttemptEnd::Completed),
        PodPhase::Failed => Some(classify_failure(pod)),
    }
}

fn classify_failure(pod: &PodObservation) -> AttemptEnd {
    if pod.pod_reason.as_deref() == Some("Evicted") {
        return AttemptEnd::Preempted {
            reason: "Evicted".into(),
        };
    }
    match pod.exit_code {
        Some(EXIT_BAD_DATA) => AttemptEnd::Permanent { reason: "BadData" },
        Some(EXIT_BAD_CONFIG) => AttemptEnd::Permanent {
            reason: "BadConfiguration",
        },
        Some(EXIT_USAGE) => AttemptEnd::Permanent {
            reason: "InvalidCommandLine",
        },
        Some(EXIT_SIGTERM) => AttemptEnd::Preempted {
            reason: "Terminated".into(),
        },
        _ => AttemptEnd::Failed {
            reason: pod
                .container_reason
                .clone()
                .filter(|r| !r.is_empty() && r != "Completed")
                .unwrap_or_else(|| "Error".into()),
        },
    }
}

/// The delay before retry number `retry` (1 for the first retry).
pub fn backoff(retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(16);
    BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// The name of the pod of attempt `attempt` (1-based) of an Experiment: deterministic, so that
/// an operator restarted mid-create finds the pod it made instead of making a second one.
pub fn pod_name(experiment: &str, attempt: usize) -> String {
    const MAX: usize = 63;
    let suffix = format!("-attempt-{attempt}");
    if experiment.len() + suffix.len() <= MAX {
        return format!("{experiment}{suffix}");
    }
    // Long names keep a readable prefix and a digest of the whole name, so that two long
    // names sharing a prefix still get different pods.
    let digest = crate::digest::digest_bytes(experiment.as_bytes());
    let digest = digest.trim_start_matches("sha256:");
    let keep = MAX - suffix.len() - 9;
    let prefix = experiment[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}{suffix}", &digest[..8])
}

/// What the controller knows when it plans.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The Experiment with the status last written.
    pub experiment: &'a Experiment,
    /// The pod of the latest attempt, if it exists.
    pub pod: Option<PodObservation>,
    /// The time of this reconcile.
    pub now: Timestamp,
}

/// What should happen now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write (unchanged when nothing happened).
    pub status: ExperimentStatus,
    /// Create the pod of this attempt (1-based).
    pub create_attempt: Option<usize>,
    /// Delete this pod (suspended, deadline passed, or a finished attempt's leftover).
    pub delete_pod: Option<String>,
    /// Delete the Experiment itself (`ttlSecondsAfterFinished` passed).
    pub delete_experiment: bool,
    /// Look again after this long even if nothing changes (back-off, deadlines, scraping).
    pub requeue_after: Option<Duration>,
    /// Condition changes worth an Event: (type, status, reason, message).
    pub transitions: Vec<Transition>,
}

/// A condition that changed status or reason: one Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `Normal` for progress, `Warning` for failures and preemptions.
    pub warning: bool,
    /// The CamelCase reason.
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// A finished attempt that should fail the Experiment, or the whole run's success.
enum Outcome {
    Succeeded,
    Failed { reason: String, message: String },
}

/// Decides the next step of an Experiment's run.
pub fn plan(input: &PlanInput) -> Plan {
    let spec = &input.experiment.spec;
    let generation = input.experiment.metadata.generation;
    let mut status = input.experiment.status.clone().unwrap_or_default();
    let mut plan = Plan {
        status: status.clone(),
        create_attempt: None,
        delete_pod: None,
        delete_experiment: false,
        requeue_after: None,
        transitions: Vec::new(),
    };
    let now = Time(input.now);
    let mut events = Vec::new();

    // A finished run stays finished, whatever happens to its pods afterwards.
    if let Some(outcome) = terminal_phase(&status) {
        if let Some(pod) = &input.pod
            && !pod.deleting
            && matches!(pod.phase, PodPhase::Pending | PodPhase::Running)
        {
            plan.delete_pod = Some(pod.name.clone());
        }
        if let (Some(ttl), Some(done)) = (spec.ttl_seconds_after_finished, &status.completion_time)
        {
            let expires = done.0 + Duration::from_secs(ttl);
            if input.now >= expires {
                plan.delete_experiment = true;
            } else {
                plan.requeue_after = Some(until(input.now, expires));
            }
        }
        debug_assert!(matches!(
            outcome,
            ExperimentPhase::Succeeded | ExperimentPhase::Failed
        ));
        plan.status = status;
        return plan;
    }

    // Record how the latest attempt ended, once.
    let mut outcome = None;
    let mut retry_at = None;
    if let (Some(pod), Some(last)) = (&input.pod, status.attempts.last_mut())
        && last.pod == pod.name
        && last.end.is_none()
        && let Some(end) = classify(pod)
    {
        last.end = Some(Time(pod.finished_at.unwrap_or(input.now)));
        last.exit_code = pod.exit_code;
        last.reason = Some(end.reason());
        last.message = pod.message.clone().filter(|m| !m.is_empty());
        let message = last.message.clone().unwrap_or_default();
        match end {
            AttemptEnd::Completed => {
                // The success message is the trainer's summary: results, not prose.
                last.message = None;
                let structures = &spec.model.structures;
                match results_from_message(&message, structures) {
                    Some(metrics) => {
                        status.mean_dice = voxel_crds::common::headline_dice(&metrics);
                        status.metrics = metrics;
                        outcome = Some(Outcome::Succeeded);
                    }
                    None => {
                        outcome = Some(Outcome::Failed {
                            reason: "ResultsMissing".into(),
                            message: format!(
                                "the trainer exited 0 but its termination message is \
                                         not a summary of {structures:?}: {message:.200}"
                            ),
                        })
                    }
                }
            }
            AttemptEnd::Preempted { reason } => {
                status.preemptions += 1;
                // A pod on a lost node stays "Running" in the API until removed.
                if !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) && !pod.deleting {
                    plan.delete_pod = Some(pod.name.clone());
                }
                events.push(Transition {
                    warning: true,
                    reason: "Preempted".into(),
                    message: format!(
                        "attempt {} ({}) was preempted ({reason}); the next resumes from \
                                 the last checkpoint",
                        status.attempts.len(),
                        pod.name
                    ),
                });
            }
            AttemptEnd::Permanent { reason } => {
                outcome = Some(Outcome::Failed {
                    reason: reason.into(),
                    message: format!("the trainer refused its input: {message}"),
                })
            }
            AttemptEnd::Failed { reason } => {
                let failures = failed_attempts(&status.attempts);
                if failures > spec.backoff_limit {
                    outcome = Some(Outcome::Failed {
                        reason: "BackoffLimitExceeded".into(),
                        message: format!(
                            "{failures} attempts failed (backoffLimit {}); the last \
                                     ended with {reason}: {message}",
                            spec.backoff_limit
                        ),
                    });
                } else {
                    status.retries += 1;
                    events.push(Transition {
                        warning: true,
                        reason: "AttemptFailed".into(),
                        message: format!(
                            "attempt {} ended with {reason}: {message}; retrying in {} s",
                            status.attempts.len(),
                            backoff(status.retries).as_secs()
                        ),
                    });
                }
            }
        }
    }
    if outcome.is_none()
        && let Some(last) = status.attempts.last()
    {
        let ended_failed =
            last.end.is_some() && last.reason.as_deref().is_some_and(is_retried_reason);
        if ended_failed {
            let at = last.end.as_ref().expect("checked above").0 + backoff(status.retries.max(1));
            retry_at = Some(at);
        }
    }

    // The deadline counts from the first attempt, suspended time included.
    if outcome.is_none()
        && let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, &status.start_time)
    {
        let expires = start.0 + Duration::from_secs(deadline);
        if input.now >= expires {
            outcome = Some(Outcome::Failed {
                reason: "DeadlineExceeded".into(),
                message: format!("the run was active longer than {deadline} s"),
            });
        } else {
            plan.requeue_after = min_requeue(plan.requeue_after, until(input.now, expires));
        }
    }

    let pod_alive = input
        .pod
        .as_ref()
        .is_some_and(|p| classify(p).is_none() && !p.deleting);
    let latest_open = status.attempts.last().is_some_and(|a| a.end.is_none());

    if let Some(outcome) = outcome {
        finish(&mut status, outcome, &now, generation, &mut events);
        if pod_alive {
            plan.delete_pod = input.pod.as_ref().map(|p| p.name.clone());
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            plan.requeue_after = Some(Duration::from_secs(ttl));
        }
    } else if spec.suspend {
        if let Some(pod) = input.pod.as_ref().filter(|_| pod_alive) {
            plan.delete_pod = Some(pod.name.clone());
        }
        if let Some(last) = status.attempts.last_mut().filter(|a| a.end.is_none()) {
            last.end = Some(now.clone());
            last.reason = Some("Suspended".into());
        }
        set(
            &mut status,
            &mut events,
            generation,
            &now,
            CONDITION_SUSPENDED,
            ConditionStatus::True,
            "Suspended",
            "spec.suspend is set; the run resumes from its last checkpoint when cleared",
        );
        set(
            &mut status,
            &mut events,
            generation,
            &now,
            CONDITION_RUNNING,
            ConditionStatus::False,
            "Suspended",
            "suspended",
        );
        status.phase = Some(ExperimentPhase::Suspended);
    } else {
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_SUSPENDED)
        {
            set(
                &mut status,
                &mut events,
                generation,
                &now,
                CONDITION_SUSPENDED,
                ConditionStatus::False,
                "Resumed",
                "spec.suspend was cleared",
            );
        }
        // A pod of an ended attempt whose trainer may still run (suspended, deleted by
        // someone) holds back the next attempt: two trainers must never share a checkpoint
        // folder. One on a lost node cannot run anything any more.
        let previous_running = input.pod.as_ref().is_some_and(|p| {
            !latest_open && matches!(p.phase, PodPhase::Running | PodPhase::Unknown) && !p.node_lost
        });
        let needs_attempt = !latest_open
            && !previous_running
            && input.pod.as_ref().is_none_or(|p| !pod_alive || p.deleting);
        if previous_running {
            let pod = input.pod.as_ref().expect("checked above");
            status.phase = Some(ExperimentPhase::Pending);
            set(
                &mut status,
                &mut events,
                generation,
                &now,
                CONDITION_RUNNING,
                ConditionStatus::True,
                "WaitingForPreviousPod",
                &format!(
                    "pod {} is still stopping; the next attempt starts once it has",
                    pod.name
                ),
            );
        } else if latest_open && input.pod.is_none() {
            // The pod of the open attempt is gone without a trace (deleted by someone, or never
            // created because the operator stopped in between): create it (again).
            plan.create_attempt = Some(status.attempts.len());
        } else if needs_attempt {
            match retry_at {
                Some(at) if input.now < at => {
                    plan.requeue_after = min_requeue(plan.requeue_after, until(input.now, at));
                    status.phase = Some(ExperimentPhase::Pending);
                    let message = format!(
                        "waiting {} s (back-off) before attempt {}",
                        backoff(status.retries.max(1)).as_secs(),
                        status.attempts.len() + 1
                    );
                    set(
                        &mut status,
                        &mut events,
                        generation,
                        &now,
                        CONDITION_RUNNING,
                        ConditionStatus::True,
                        "BackingOff",
                        &message,
                    );
                }
                _ => {
                    let attempt = status.attempts.len() + 1;
                    let pod = pod_name(
                        input.experiment.metadata.name.as_deref().unwrap_or(""),
                        attempt,
                    );
                    status.attempts.push(Attempt {
                        pod,
                        start: now.clone(),
                        end: None,
                        exit_code: None,
                        reason: None,
                        message: None,
                    });
                    status.start_time.get_or_insert_with(|| now.clone());
                    plan.create_attempt = Some(attempt);
                    status.phase = Some(ExperimentPhase::Pending);
                    let (reason, message) = match attempt {
                        1 => (
                            "Started".to_string(),
                            "the first trainer pod was created".to_string(),
                        ),
                        n => (
                            "Resumed".to_string(),
                            format!("attempt {n} resumes from the last checkpoint"),
                        ),
                    };
                    set(
                        &mut status,
                        &mut events,
                        generation,
                        &now,
                        CONDITION_RUNNING,
                        ConditionStatus::True,
                        &reason,
                        &message,
                    );
                }
            }
        } else if let Some(pod) = input.pod.as_ref().filter(|_| pod_alive) {
            let running = pod.phase == PodPhase::Running;
            status.phase = Some(if running {
                ExperimentPhase::Running
            } else {
                ExperimentPhase::Pending
            });
            let (reason, message) = if running {
                ("Training", format!("pod {} is training", pod.name))
            } else {
                let why = pod.waiting.as_deref().unwrap_or("waiting to be scheduled");
                ("PodPending", format!("pod {} is pending: {why}", pod.name))
            };
            set(
                &mut status,
                &mut events,
                generation,
                &now,
                CONDITION_RUNNING,
                ConditionStatus::True,
                reason,
                &message,
            );
            if running {
                check_stall(
                    &mut status,
                    &mut events,
                    generation,
                    &now,
                    input,
                    spec.progress_deadline_seconds,
                );
            }
        }
        if !status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_SUCCEEDED)
        {
            set(
                &mut status,
                &mut events,
                generation,
                &now,
                CONDITION_SUCCEEDED,
                ConditionStatus::Unknown,
                "NotFinished",
                "",
            );
        }
    }

    status.observed_generation = generation;
    plan.status = status;
    plan.transitions = events;
    plan
}

/// The per-structure test results in a trainer's success message (its `summary.json`,
/// `{"subjects": n, "structures": {name: {metric: aggregate}}}`), in the order of `structures`;
/// `None` unless every structure is there.
pub fn results_from_message(message: &str, structures: &[String]) -> Option<Vec<StructureSummary>> {
    #[derive(serde::Deserialize)]
    struct Summary {
        structures: BTreeMap<String, BTreeMap<String, MetricAggregate>>,
    }
    let summary: Summary = serde_json::from_str(message.trim()).ok()?;
    structures
        .iter()
        .map(|name| {
            let metrics = summary.structures.get(name)?;
            let mut result = StructureSummary {
                structure: name.clone(),
                ..StructureSummary::default()
            };
            for (metric, aggregate) in metrics {
                if let Some(slot) = result.metric_mut(metric) {
                    *slot = aggregate.clone();
                }
            }
            Some(result)
        })
        .collect()
}

/// Whether an attempt that ended with this reason is followed by a retry after a back-off.
fn is_retried_reason(reason: &str) -> bool {
    !matches!(
        reason,
        "Completed" | "Suspended" | "BadData" | "BadConfiguration" | "InvalidCommandLine"
    ) && !is_preemption_reason(reason)
}

fn is_preemption_reason(reason: &str) -> bool {
    matches!(
        reason,
        "Preempted"
            | "NodeLost"
            | "Evicted"
            | "Terminated"
            | "TerminationByKubelet"
            | "PreemptionByScheduler"
            | "DeletionByTaintManager"
            | "EvictionByEvictionAPI"
            | "DeletionByPodGC"
    )
}

/// Attempts that ended in a failure that counts against `backoffLimit`.
fn failed_attempts(attempts: &[Attempt]) -> u32 {
    attempts
        .iter()
        .filter(|a| a.end.is_some() && a.reason.as_deref().is_some_and(is_retried_reason))
        .count() as u32
}

fn terminal_phase(status: &ExperimentStatus) -> Option<ExperimentPhase> {
    status
        .phase
        .filter(|p| matches!(p, ExperimentPhase::Succeeded | ExperimentPhase::Failed))
}

fn finish(
    status: &mut ExperimentStatus,
    outcome: Outcome,
    now: &Time,
    generation: Option<i64>,
    events: &mut Vec<Transition>,
) {
    status.completion_time = Some(now.clone());
    if let Some(progress) = &mut status.progress {
        progress.estimated_seconds_left = None;
    }
    match outcome {
        Outcome::Succeeded => {
            status.phase = Some(ExperimentPhase::Succeeded);
            set(
                status,
                events,
                generation,
                now,
                CONDITION_SUCCEEDED,
                ConditionStatus::True,
                "Completed",
                "trained and evaluated on the test subjects",
            );
            set(
                status,
                events,
                generation,
                now,
                CONDITION_RUNNING,
                ConditionStatus::False,
                "Completed",
                "finished",
            );
        }
        Outcome::Failed { reason, message } => {
            status.phase = Some(ExperimentPhase::Failed);
            if let Some(last) = status.attempts.last_mut().filter(|a| a.end.is_none()) {
                last.end = Some(now.clone());
                last.reason = Some(reason.clone());
            }
            set(
                status,
                events,
                generation,
                now,
                CONDITION_SUCCEEDED,
                ConditionStatus::False,
                &reason,
                &message,
            );
            set(
                status,
                events,
                generation,
                now,
                CONDITION_RUNNING,
                ConditionStatus::False,
                &reason,
                "finished",
            );
        }
    }
    if status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_STALLED && c.status == ConditionStatus::True)
    {
        set(
            status,
            events,
            generation,
            now,
            CONDITION_STALLED,
            ConditionStatus::False,
            "Finished",
            "",
        );
    }
}

fn check_stall(
    status: &mut ExperimentStatus,
    events: &mut Vec<Transition>,
    generation: Option<i64>,
    now: &Time,
    input: &PlanInput,
    deadline_s: u64,
) {
    // From the trainer's start: time spent pending for a node is not a stall.
    let attempt_start = input
        .pod
        .as_ref()
        .and_then(|p| p.started_at)
        .or_else(|| status.attempts.last().map(|a| a.start.0));
    let last_epoch = status
        .progress
        .as_ref()
        .and_then(|p| p.last_epoch_time.as_ref())
        .map(|t| t.0);
    let since = match (attempt_start, last_epoch) {
        (Some(a), Some(e)) => a.max(e),
        (a, e) => match a.or(e) {
            Some(t) => t,
            None => return,
        },
    };
    let deadline = since + Duration::from_secs(deadline_s);
    let stalled = input.now >= deadline;
    let was_stalled = status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_STALLED && c.status == ConditionStatus::True);
    if stalled {
        set(
            status,
            events,
            generation,
            now,
            CONDITION_STALLED,
            ConditionStatus::True,
            "NoProgress",
            &format!("no epoch finished in the last {deadline_s} s"),
        );
    } else if was_stalled {
        set(
            status,
            events,
            generation,
            now,
            CONDITION_STALLED,
            ConditionStatus::False,
            "Progressing",
            "an epoch finished",
        );
    }
}

/// Sets a condition; records an Event when its status or reason changed.
#[allow(clippy::too_many_arguments)]
fn set(
    status: &mut ExperimentStatus,
    events: &mut Vec<Transition>,
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    value: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let before = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason.clone()));
    set_condition(
        &mut status.conditions,
        Condition {
            type_: type_.into(),
            status: value,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now.clone(),
            observed_generation: generation,
        },
    );
    let changed = before.as_ref() != Some(&(value, reason.to_string()));
    // The first `Unknown` of `Succeeded` is bookkeeping, not news.
    if changed && value != ConditionStatus::Unknown {
        let warning = matches!(
            (type_, value),
            (CONDITION_SUCCEEDED, ConditionStatus::False)
                | (CONDITION_STALLED, ConditionStatus::True)
        );
        events.push(Transition {
            warning,
            reason: reason.into(),
            message: if message.is_empty() {
                format!("{type_} is {value:?}")
            } else {
                message.into()
            },
        });
    }
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    let seconds = at.as_second() - now.as_second();
    Duration::from_secs(seconds.max(1) as u64)
}

fn min_requeue(current: Option<Duration>, next: Duration) -> Option<Duration> {
    Some(current.map_or(next, |c| c.min(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Experiment with `extra` spec fields and the status given as YAML.
    fn experiment(extra_spec: &str, status: &str) -> Experiment {
        let yaml = format!(
            r#"
apiVersion: voxel.dev/v1alpha1
kind: Experiment
metadata: {{name: hippo, namespace: lab, uid: u-1, generation: 2}}
spec:
  model: {{task: Segmentation, architecture: UNet3D, imageChannels: [mr], structures: [anterior, posterior], preprocessing: {{cropSize: [16, 16, 16]}}}}
  training: {{epochs: 4, seed: 1}}
  data: {{source: {{persistentVolumeClaim: {{claimName: mri}}}}, dataset: d.csv}}
{extra_spec}
status:
{status}
"#
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn at(time: &str) -> Timestamp {
        time.parse().unwrap()
    }

    const T0: &str = "2026-12-04T10:00:00Z";

    /// The status of a run whose attempt `n` started at T0 and is still open.
    fn open_attempts(n: usize) -> String {
        let mut text = String::from("  startTime: \"2026-12-04T09:00:00Z\"\n  attempts:\n");
        for i in 1..n {
            text += &format!(
                "    - {{pod: hippo-attempt-{i}, start: \"2026-12-04T09:00:00Z\", end: \
                 \"2026-12-04T09:30:00Z\", reason: TerminationByKubelet, exitCode: 143}}\n"
            );
        }
        text += &format!("    - {{pod: hippo-attempt-{n}, start: \"{T0}\"}}\n");
        text
    }

    fn pod(phase: PodPhase) -> PodObservation {
        PodObservation {
            name: "hippo-attempt-1".into(),
            phase,
            disruption: None,
            node_lost: false,
            pod_reason: None,
            exit_code: None,
            container_reason: None,
            message: None,
            finished_at: None,
            deleting: false,
            started_at: None,
            waiting: None,
        }
    }

    fn exited(code: i32, reason: &str, message: &str) -> PodObservation {
        PodObservation {
            exit_code: Some(code),
            container_reason: Some(reason.into()),
            message: Some(message.into()),
            finished_at: Some(at("2026-12-04T10:05:00Z")),
            ..pod(if code == 0 {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            })
        }
    }

    const SUMMARY: &str = r#"{"epochs":4,"subjects":8,"structures":{"anterior":{"dice":{"mean":0.8,"std":0.1,"count":8,"nan":0,"infinite":0}},"posterior":{"dice":{"mean":0.6,"std":0.1,"count":8,"nan":0,"infinite":0}}}}"#;

    #[test]
    fn attempt_endings_are_classified_by_disruption_node_and_exit_code() {
        let disrupted = |phase| {
            PodObservation {
                disruption: Some(("TerminationByKubelet".into(), "reclaimed".into())),
                ..exited(143, "Error", "")
            }
            .with_phase(phase)
        };
        let preempted = |r: &str| Some(AttemptEnd::Preempted { reason: r.into() });
        let permanent = |r| Some(AttemptEnd::Permanent { reason: r });
        let failed = |r: &str| Some(AttemptEnd::Failed { reason: r.into() });
        let table: Vec<(&str, PodObservation, Option<AttemptEnd>)> = vec![
            ("pending", pod(PodPhase::Pending), None),
            ("running", pod(PodPhase::Running), None),
            ("unknown phase", pod(PodPhase::Unknown), None),
            (
                "exit 0",
                exited(0, "Completed", SUMMARY),
                Some(AttemptEnd::Completed),
            ),
            (
                "bad data",
                exited(65, "Error", "bad data"),
                permanent("BadData"),
            ),
            (
                "bad configuration",
                exited(78, "Error", ""),
                permanent("BadConfiguration"),
            ),
            (
                "bad command line",
                exited(2, "Error", ""),
                permanent("InvalidCommandLine"),
            ),
            (
                "SIGTERM without a disruption",
                exited(143, "Error", ""),
                preempted("Terminated"),
            ),
            ("crash", exited(1, "Error", "boom"), failed("Error")),
            (
                "out of memory",
                exited(137, "OOMKilled", ""),
                failed("OOMKilled"),
            ),
            ("no reason given", exited(1, "", ""), failed("Error")),
            (
                "disruption target",
                disrupted(PodPhase::Failed),
                preempted("TerminationByKubelet"),
            ),
            (
                "disrupted, still in its grace period",
                disrupted(PodPhase::Running),
                None,
            ),
            (
                "disrupted before it started",
                disrupted(PodPhase::Pending),
                preempted("TerminationByKubelet"),
            ),
            (
                "disrupted on a lost node",
                PodObservation {
                    node_lost: true,
                    ..disrupted(PodPhase::Running)
                },
                preempted("TerminationByKubelet"),
            ),
            (
                "succeeded despite a disruption",
                disrupted(PodPhase::Succeeded),
                Some(AttemptEnd::Completed),
            ),
            (
                "node lost",
                PodObservation {
                    node_lost: true,
                    ..pod(PodPhase::Running)
                },
                preempted("NodeLost"),
            ),
            (
                "evicted",
                PodObservation {
                    pod_reason: Some("Evicted".into()),
                    ..exited(137, "Error", "")
                },
                preempted("Evicted"),
            ),
            (
                "finished before its node went",
                PodObservation {
                    node_lost: true,
                    ..exited(0, "Completed", SUMMARY)
                },
                Some(AttemptEnd::Completed),
            ),
        ];
        for (case, observation, expected) in table {
            assert_eq!(classify(&observation), expected, "{case}");
        }
    }

    impl PodObservation {
        fn with_phase(mut self, phase: PodPhase) -> Self {
            self.phase = phase;
            self
        }
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_minutes() {
        let table = [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 320),
            (7, 360),
            (40, 360),
        ];
        for (retry, seconds) in table {
            assert_eq!(
                backoff(retry),
                Duration::from_secs(seconds),
                "retry {retry}"
            );
        }
    }

    #[test]
    fn pod_names_are_deterministic_and_fit_a_label() {
        assert_eq!(pod_name("hippo", 3), "hippo-attempt-3");
        let long = "x".repeat(80);
        let name = pod_name(&long, 12);
        assert!(name.len() <= 63 && name.ends_with("-attempt-12"), "{name}");
        assert_eq!(name, pod_name(&long, 12));
        assert_ne!(
            pod_name(&format!("{long}a"), 1),
            pod_name(&format!("{long}b"), 1)
        );
    }

    fn plan_for(experiment: &Experiment, pod: Option<PodObservation>, now: &str) -> Plan {
        plan(&PlanInput {
            experiment,
            pod,
            now: at(now),
        })
    }

    fn condition<'a>(status: &'a ExperimentStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_}"))
    }

    #[test]
    fn a_new_experiment_records_its_first_attempt_and_asks_for_its_pod() {
        let e = experiment("", "  {}");
        let plan = plan_for(&e, None, T0);
        assert_eq!(plan.create_attempt, Some(1));
        let status = &plan.status;
        assert_eq!(status.attempts.len(), 1);
        assert_eq!(status.attempts[0].pod, "hippo-attempt-1");
        assert_eq!(status.start_time, Some(Time(at(T0))));
        assert_eq!(status.phase, Some(ExperimentPhase::Pending));
        assert_eq!(condition(status, CONDITION_RUNNING).reason, "Started");
        assert_eq!(
            condition(status, CONDITION_SUCCEEDED).status,
            ConditionStatus::Unknown
        );
        assert_eq!(status.observed_generation, Some(2));
        assert!(plan.transitions.iter().any(|t| t.reason == "Started"));
    }

    #[test]
    fn an_open_attempt_whose_pod_is_missing_gets_the_same_pod_again() {
        let e = experiment("", &open_attempts(1));
        let plan = plan_for(&e, None, "2026-12-04T10:01:00Z");
        assert_eq!(plan.create_attempt, Some(1));
        assert_eq!(plan.status.attempts.len(), 1);
    }

    #[test]
    fn a_running_pod_is_left_alone_and_a_converged_status_is_unchanged() {
        let e = experiment("", &open_attempts(1));
        let first = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:01:00Z");
        assert_eq!(
            (first.create_attempt, first.delete_pod.clone()),
            (None, None)
        );
        assert_eq!(first.status.phase, Some(ExperimentPhase::Running));
        // Planning again from the written status changes nothing, not even a timestamp.
        let mut written = e.clone();
        written.status = Some(first.status.clone());
        let second = plan_for(
            &written,
            Some(pod(PodPhase::Running)),
            "2026-12-04T10:02:00Z",
        );
        assert_eq!(second.status, first.status);
        assert!(second.transitions.is_empty(), "{:?}", second.transitions);
    }

    #[test]
    fn a_preempted_attempt_is_resumed_at_once_without_counting_as_a_retry() {
        let e = experiment("  backoffLimit: 0", &open_attempts(1));
        let disrupted = PodObservation {
            disruption: Some(("TerminationByKubelet".into(), "spot reclaimed".into())),
            ..exited(143, "Error", "")
        };
        let plan = plan_for(&e, Some(disrupted), "2026-12-04T10:06:00Z");
        assert_eq!(plan.create_attempt, Some(2));
        let status = &plan.status;
        assert_eq!((status.preemptions, status.retries), (1, 0));
        assert_eq!(
            status.attempts[0].reason.as_deref(),
            Some("TerminationByKubelet")
        );
        assert_eq!(status.attempts[0].exit_code, Some(143));
        assert_eq!(status.attempts[1].pod, "hippo-attempt-2");
        assert_eq!(condition(status, CONDITION_RUNNING).reason, "Resumed");
        assert!(
            plan.transitions
                .iter()
                .any(|t| t.reason == "Preempted" && t.warning)
        );
        assert_eq!(plan.delete_pod, None, "a failed pod keeps its logs");
    }

    #[test]
    fn a_pod_on_a_lost_node_is_deleted_and_replaced() {
        let e = experiment("", &open_attempts(1));
        let lost = PodObservation {
            node_lost: true,
            ..pod(PodPhase::Running)
        };
        let plan = plan_for(&e, Some(lost), "2026-12-04T10:06:00Z");
        assert_eq!(plan.create_attempt, Some(2));
        assert_eq!(plan.delete_pod.as_deref(), Some("hippo-attempt-1"));
        assert_eq!(plan.status.attempts[0].reason.as_deref(), Some("NodeLost"));
    }

    #[test]
    fn a_failed_attempt_waits_out_its_back_off_then_retries() {
        let e = experiment("  backoffLimit: 2", &open_attempts(1));
        let plan = plan_for(
            &e,
            Some(exited(1, "Error", "CUDA error")),
            "2026-12-04T10:05:02Z",
        );
        assert_eq!(plan.create_attempt, None);
        assert_eq!(plan.status.retries, 1);
        assert_eq!(plan.status.phase, Some(ExperimentPhase::Pending));
        assert_eq!(
            condition(&plan.status, CONDITION_RUNNING).reason,
            "BackingOff"
        );
        // The attempt ended at 10:05:00; the first back-off is 10 s.
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(8)));
        let mut written = e.clone();
        written.status = Some(plan.status.clone());
        let failed_pod = exited(1, "Error", "CUDA error");
        let early = plan_for(&written, Some(failed_pod.clone()), "2026-12-04T10:05:09Z");
        assert_eq!(early.create_attempt, None);
        let due = plan_for(&written, Some(failed_pod), "2026-12-04T10:05:10Z");
        assert_eq!(due.create_attempt, Some(2));
        assert_eq!(due.status.retries, 1);
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_experiment() {
        let mut status =
            String::from("  startTime: \"2026-12-04T09:00:00Z\"\n  retries: 1\n  attempts:\n");
        status += "    - {pod: hippo-attempt-1, start: \"2026-12-04T09:00:00Z\", end: \"2026-12-04T09:10:00Z\", reason: Error, exitCode: 1}\n";
        status += &format!("    - {{pod: hippo-attempt-2, start: \"{T0}\"}}\n");
        let e = experiment("  backoffLimit: 1", &status);
        let failed_pod = PodObservation {
            name: "hippo-attempt-2".into(),
            ..exited(1, "Error", "boom")
        };
        let plan = plan_for(&e, Some(failed_pod), "2026-12-04T10:06:00Z");
        assert_eq!(plan.create_attempt, None);
        assert_eq!(plan.status.phase, Some(ExperimentPhase::Failed));
        let succeeded = condition(&plan.status, CONDITION_SUCCEEDED);
        assert_eq!(
            (succeeded.status, succeeded.reason.as_str()),
            (ConditionStatus::False, "BackoffLimitExceeded")
        );
        assert!(succeeded.message.contains("boom"), "{}", succeeded.message);
        assert_eq!(
            plan.status.completion_time,
            Some(Time(at("2026-12-04T10:06:00Z")))
        );
    }

    #[test]
    fn a_permanent_error_fails_at_once_with_the_trainers_message() {
        let e = experiment("  backoffLimit: 5", &open_attempts(1));
        let message = "bad data (exit 65): dataset d.csv line 3: no such file";
        let plan = plan_for(
            &e,
            Some(exited(65, "Error", message)),
            "2026-12-04T10:06:00Z",
        );
        assert_eq!(plan.create_attempt, None);
        assert_eq!(plan.status.retries, 0);
        assert_eq!(plan.status.phase, Some(ExperimentPhase::Failed));
        let succeeded = condition(&plan.status, CONDITION_SUCCEEDED);
        assert_eq!(succeeded.reason, "BadData");
        assert!(succeeded.message.contains(message), "{}", succeeded.message);
        assert!(
            plan.transitions
                .iter()
                .any(|t| t.warning && t.reason == "BadData")
        );
    }

    #[test]
    fn a_completed_attempt_brings_the_test_metrics_or_fails_without_them() {
        let e = experiment("", &open_attempts(1));
        let plan = plan_for(
            &e,
            Some(exited(0, "Completed", SUMMARY)),
            "2026-12-04T10:06:00Z",
        );
        let status = &plan.status;
        assert_eq!(status.phase, Some(ExperimentPhase::Succeeded));
        assert_eq!(status.metrics.len(), 2);
        assert_eq!(status.metrics[0].structure, "anterior");
        assert_eq!(status.metrics[0].dice.mean, Some(0.8));
        assert!((status.mean_dice.unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(status.attempts[0].message, None);
        assert_eq!(
            condition(status, CONDITION_RUNNING).status,
            ConditionStatus::False
        );

        let garbage = plan_for(
            &e,
            Some(exited(0, "Completed", "done")),
            "2026-12-04T10:06:00Z",
        );
        assert_eq!(garbage.status.phase, Some(ExperimentPhase::Failed));
        assert_eq!(
            condition(&garbage.status, CONDITION_SUCCEEDED).reason,
            "ResultsMissing"
        );
    }

    #[test]
    fn suspending_deletes_the_pod_and_resuming_starts_the_next_attempt() {
        let e = experiment("  suspend: true", &open_attempts(1));
        let plan = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:06:00Z");
        assert_eq!(plan.delete_pod.as_deref(), Some("hippo-attempt-1"));
        assert_eq!(plan.create_attempt, None);
        assert_eq!(plan.status.phase, Some(ExperimentPhase::Suspended));
        assert_eq!(plan.status.attempts[0].reason.as_deref(), Some("Suspended"));
        assert_eq!(
            condition(&plan.status, CONDITION_SUSPENDED).status,
            ConditionStatus::True
        );

        // Cleared: the next attempt starts at once (no back-off, no retry counted).
        let mut resumed = experiment("", "  {}");
        resumed.status = Some(plan.status.clone());
        // Its pod still stops: the next attempt waits, as two trainers must never share the
        // checkpoint folder.
        let deleting = PodObservation {
            deleting: true,
            ..pod(PodPhase::Running)
        };
        let waiting = plan_for(&resumed, Some(deleting), "2026-12-04T11:00:00Z");
        assert_eq!(waiting.create_attempt, None);
        assert_eq!(
            condition(&waiting.status, CONDITION_RUNNING).reason,
            "WaitingForPreviousPod"
        );
        // Once the trainer has exited (or the pod is gone), the next attempt starts at once.
        let stopped = PodObservation {
            deleting: true,
            ..exited(143, "Error", "")
        };
        let next = plan_for(&resumed, Some(stopped), "2026-12-04T11:00:05Z");
        assert_eq!(next.create_attempt, Some(2));
        let gone = plan_for(&resumed, None, "2026-12-04T11:00:05Z");
        assert_eq!(gone.create_attempt, Some(2));
        assert_eq!(next.status.retries, 0);
        assert_eq!(
            condition(&next.status, CONDITION_SUSPENDED).status,
            ConditionStatus::False
        );
        assert_eq!(next.status.phase, Some(ExperimentPhase::Pending));
    }

    #[test]
    fn the_active_deadline_fails_a_running_experiment_and_stops_its_pod() {
        let e = experiment("  activeDeadlineSeconds: 3600", &open_attempts(1));
        let before = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T09:59:00Z");
        assert_eq!(before.status.phase, Some(ExperimentPhase::Running));
        assert_eq!(before.requeue_after, Some(Duration::from_secs(60)));
        let after = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:00:00Z");
        assert_eq!(after.status.phase, Some(ExperimentPhase::Failed));
        assert_eq!(
            condition(&after.status, CONDITION_SUCCEEDED).reason,
            "DeadlineExceeded"
        );
        assert_eq!(after.delete_pod.as_deref(), Some("hippo-attempt-1"));
        assert_eq!(
            after.status.attempts[0].reason.as_deref(),
            Some("DeadlineExceeded")
        );
    }

    #[test]
    fn every_terminal_path_cleans_up_and_stays_terminal() {
        let terminal = |phase: &str| {
            format!(
                "  phase: {phase}\n  completionTime: \"{T0}\"\n  attempts:\n    - {{pod: \
                 hippo-attempt-1, start: \"2026-12-04T09:00:00Z\", end: \"{T0}\", reason: X}}\n"
            )
        };
        for phase in ["Succeeded", "Failed"] {
            let e = experiment("  ttlSecondsAfterFinished: 600", &terminal(phase));
            // A pod left running is stopped; none is created, whatever happened to the pods.
            let running = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:01:00Z");
            assert_eq!(
                running.delete_pod.as_deref(),
                Some("hippo-attempt-1"),
                "{phase}"
            );
            assert_eq!(running.create_attempt, None, "{phase}");
            assert_eq!(
                running.status,
                e.status.clone().unwrap(),
                "{phase}: status untouched"
            );
            let vanished = plan_for(&e, None, "2026-12-04T10:01:00Z");
            assert_eq!(
                (vanished.create_attempt, vanished.delete_pod.clone()),
                (None, None)
            );
            assert_eq!(vanished.requeue_after, Some(Duration::from_secs(540)));
            assert!(!vanished.delete_experiment);
            // A finished pod is kept for its logs until the Experiment goes.
            let finished = plan_for(&e, Some(exited(1, "Error", "")), "2026-12-04T10:01:00Z");
            assert_eq!(finished.delete_pod, None);
            let expired = plan_for(&e, None, "2026-12-04T10:10:00Z");
            assert!(
                expired.delete_experiment,
                "{phase}: ttlSecondsAfterFinished"
            );
        }
        let kept = experiment("", &terminal("Succeeded"));
        let plan = plan_for(&kept, None, "2030-01-01T00:00:00Z");
        assert!(!plan.delete_experiment && plan.requeue_after.is_none());
    }

    #[test]
    fn a_trainer_without_an_epoch_for_too_long_is_stalled_until_it_finishes_one() {
        let mut status = open_attempts(1);
        status += "  progress: {epoch: 1, epochs: 4, lastEpochTime: \"2026-12-04T10:10:00Z\"}\n";
        let e = experiment("  progressDeadlineSeconds: 600", &status);
        let fine = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:19:59Z");
        assert!(
            fine.status
                .conditions
                .iter()
                .all(|c| c.type_ != CONDITION_STALLED)
        );
        let stalled = plan_for(&e, Some(pod(PodPhase::Running)), "2026-12-04T10:20:00Z");
        let condition_ = condition(&stalled.status, CONDITION_STALLED);
        assert_eq!(
            (condition_.status, condition_.reason.as_str()),
            (ConditionStatus::True, "NoProgress")
        );
        assert!(
            stalled
                .transitions
                .iter()
                .any(|t| t.warning && t.reason == "NoProgress")
        );

        // Time spent pending for a node does not count: the trainer started at 10:15.
        let late_start = PodObservation {
            started_at: Some(at("2026-12-04T10:15:00Z")),
            ..pod(PodPhase::Running)
        };
        let mut no_epoch = e.clone();
        no_epoch.status.as_mut().unwrap().progress = None;
        let pending_long = plan_for(&no_epoch, Some(late_start), "2026-12-04T10:20:00Z");
        assert!(
            pending_long
                .status
                .conditions
                .iter()
                .all(|c| c.type_ != CONDITION_STALLED)
        );

        let mut progressed = e.clone();
        let mut s = stalled.status.clone();
        s.progress.as_mut().unwrap().last_epoch_time = Some(Time(at("2026-12-04T10:21:00Z")));
        progressed.status = Some(s);
        let again = plan_for(
            &progressed,
            Some(pod(PodPhase::Running)),
            "2026-12-04T10:22:00Z",
        );
        assert_eq!(
            condition(&again.status, CONDITION_STALLED).status,
            ConditionStatus::False
        );
    }
}
