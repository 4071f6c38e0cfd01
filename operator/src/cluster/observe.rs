//! What the controller reads from the cluster, turned into the plain values that
//! [`crate::attempts::plan`] decides on: a trainer pod as a [`PodObservation`], the trainer's
//! metrics endpoint as [`TrainingProgress`].

use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use voxel_crds::experiment::{StructureValue, TrainingProgress};

use crate::attempts::{PodObservation, PodPhase};

use super::children::TRAINER_CONTAINER;

/// Metric names the trainer serves (see `voxel_trainer::progress_metrics`).
const EPOCHS_COMPLETED: &str = "voxel_trainer_epochs_completed";
const EPOCHS: &str = "voxel_trainer_epochs";
const TRAIN_LOSS: &str = "voxel_trainer_train_loss";
const VALIDATION_DICE: &str = "voxel_trainer_validation_dice";
const ESTIMATED_SECONDS_LEFT: &str = "voxel_trainer_estimated_seconds_left";

/// How the node a pod is bound to looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The pod is not bound yet.
    Unbound,
    /// The node exists and its `Ready` condition is not `False`/`Unknown`.
    Ready,
    /// The node object is gone, or it stopped reporting.
    Lost,
}

/// The state of the node `node` (None when the pod's node does not exist).
pub fn node_state(pod: &Pod, node: Option<&Node>) -> NodeState {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    if !bound {
        return NodeState::Unbound;
    }
    let Some(node) = node else {
        return NodeState::Lost;
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    match ready {
        Some("False") | Some("Unknown") => NodeState::Lost,
        _ => NodeState::Ready,
    }
}

/// A trainer pod as the planner sees it.
pub fn observe_pod(pod: &Pod, node: NodeState) -> PodObservation {
    let status = pod.status.clone().unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        _ => PodPhase::Pending,
    };
    let disruption = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let state = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == TRAINER_CONTAINER)
        .and_then(|c| c.state.clone())
        .unwrap_or_default();
    let terminated = state.terminated.clone();
    let started_at = state
        .running
        .as_ref()
        .and_then(|r| r.started_at.clone())
        .or_else(|| terminated.as_ref().and_then(|t| t.started_at.clone()))
        .map(|t| t.0);
    // Why it is not running: the container's waiting reason, else the scheduler's.
    let waiting = state
        .waiting
        .as_ref()
        .and_then(|w| {
            let reason = w.reason.clone()?;
            Some(match &w.message {
                Some(message) if !message.is_empty() => format!("{reason}: {message}"),
                _ => reason,
            })
        })
        .or_else(|| {
            let scheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            Some(format!(
                "{}: {}",
                scheduled
                    .reason
                    .clone()
                    .unwrap_or_else(|| "NotScheduled".into()),
                scheduled.message.clone().unwrap_or_default()
            ))
        });
    PodObservation {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase,
        disruption,
        node_lost: node == NodeState::Lost,
        pod_reason: status.reason.clone(),
        exit_code: terminated.as_ref().map(|t| t.exit_code),
        container_reason: terminated.as_ref().and_then(|t| t.reason.clone()),
        message: terminated
            .as_ref()
            .and_then(|t| t.message.clone())
            .or(status.message.clone()),
        finished_at: terminated.and_then(|t| t.finished_at).map(|t| t.0),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        started_at,
        waiting,
    }
}

/// The trainer's progress from the text of its metrics endpoint, `None` when the text holds no
/// epoch count. `previous` carries over when the last epoch grew: `lastEpochTime` moves to
/// `now` only when `epoch` changed.
pub fn progress_from_metrics(
    text: &str,
    previous: Option<&TrainingProgress>,
    now: Timestamp,
) -> Option<TrainingProgress> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .and_then(|s| gauge(&s.value))
    };
    let epoch = value(EPOCHS_COMPLETED)? as u32;
    let epochs = value(EPOCHS).unwrap_or(0.0) as u32;
    let mut validation_dice: Vec<StructureValue> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == VALIDATION_DICE)
        .filter_map(|s| {
            Some(StructureValue {
                structure: s.labels.get("structure")?.to_string(),
                value: gauge(&s.value)?,
            })
        })
        .collect();
    validation_dice.sort_by(|a, b| a.structure.cmp(&b.structure));
    let mean_validation_dice = (!validation_dice.is_empty()).then(|| {
        validation_dice.iter().map(|v| v.value).sum::<f64>() / validation_dice.len() as f64
    });
    let last_epoch_time = match previous {
        Some(p) if p.epoch == epoch => p.last_epoch_time.clone(),
        _ if epoch > 0 => Some(Time(now)),
        _ => None,
    };
    Some(TrainingProgress {
        epoch,
        epochs,
        train_loss: value(TRAIN_LOSS),
        validation_dice,
        mean_validation_dice,
        estimated_seconds_left: value(ESTIMATED_SECONDS_LEFT).map(|s| s.round() as u64),
        last_epoch_time,
    })
}

/// A finite gauge or untyped value.
fn gauge(value: &prometheus_parse::Value) -> Option<f64> {
    let v = match value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v)
        | prometheus_parse::Value::Counter(v) => *v,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, NodeCondition, NodeStatus,
        PodCondition, PodSpec, PodStatus,
    };

    use super::*;

    fn pod(phase: &str, exit: Option<(i32, &str)>, conditions: Vec<PodCondition>) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("hippo-attempt-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("gpu-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(conditions),
                container_statuses: exit.map(|(code, message)| {
                    vec![ContainerStatus {
                        name: TRAINER_CONTAINER.into(),
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                                message: Some(message.into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn node(ready: &str) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_terminated_trainer_gives_its_exit_code_and_message() {
        let p = observe_pod(
            &pod("Failed", Some((65, "bad data (exit 65): x")), vec![]),
            NodeState::Ready,
        );
        assert_eq!(p.phase, PodPhase::Failed);
        assert_eq!(p.exit_code, Some(65));
        assert_eq!(p.container_reason.as_deref(), Some("Error"));
        assert_eq!(p.message.as_deref(), Some("bad data (exit 65): x"));
        assert!(!p.node_lost && p.disruption.is_none());
    }

    #[test]
    fn a_disruption_target_condition_is_seen() {
        let condition = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("TerminationByKubelet".into()),
            message: Some("spot instance reclaimed".into()),
            ..Default::default()
        };
        let p = observe_pod(&pod("Failed", Some((143, "")), vec![]), NodeState::Ready);
        assert!(p.disruption.is_none());
        let p = observe_pod(
            &pod("Failed", Some((143, "")), vec![condition]),
            NodeState::Ready,
        );
        assert_eq!(p.disruption.unwrap().0, "TerminationByKubelet");
    }

    #[test]
    fn a_pending_pod_says_why() {
        let mut unscheduled = pod(
            "Pending",
            None,
            vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()),
                ..Default::default()
            }],
        );
        let p = observe_pod(&unscheduled, NodeState::Unbound);
        assert_eq!(
            p.waiting.as_deref(),
            Some("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
        );
        unscheduled.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: TRAINER_CONTAINER.into(),
            state: Some(ContainerState {
                waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("pull access denied".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let p = observe_pod(&unscheduled, NodeState::Ready);
        assert_eq!(
            p.waiting.as_deref(),
            Some("ImagePullBackOff: pull access denied")
        );
    }

    #[test]
    fn a_missing_or_unready_node_is_lost() {
        let p = pod("Running", None, vec![]);
        assert_eq!(node_state(&p, None), NodeState::Lost);
        assert_eq!(node_state(&p, Some(&node("Unknown"))), NodeState::Lost);
        assert_eq!(node_state(&p, Some(&node("False"))), NodeState::Lost);
        assert_eq!(node_state(&p, Some(&node("True"))), NodeState::Ready);
        let mut unbound = p.clone();
        unbound.spec.as_mut().unwrap().node_name = None;
        assert_eq!(node_state(&unbound, None), NodeState::Unbound);
    }

    const METRICS: &str = "\
# HELP voxel_trainer_epochs_completed Epochs finished.
# TYPE voxel_trainer_epochs_completed gauge
voxel_trainer_epochs_completed 3
# TYPE voxel_trainer_epochs gauge
voxel_trainer_epochs 8
# TYPE voxel_trainer_train_loss gauge
voxel_trainer_train_loss 0.4125
# TYPE voxel_trainer_validation_dice gauge
voxel_trainer_validation_dice{structure=\"posterior\"} 0.5
voxel_trainer_validation_dice{structure=\"anterior\"} 0.7
# TYPE voxel_trainer_estimated_seconds_left gauge
voxel_trainer_estimated_seconds_left 41.6
# EOF
";

    #[test]
    fn the_metrics_endpoint_becomes_progress() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let p = progress_from_metrics(METRICS, None, now).unwrap();
        assert_eq!((p.epoch, p.epochs), (3, 8));
        assert_eq!(p.train_loss, Some(0.4125));
        assert_eq!(p.validation_dice[0].structure, "anterior");
        assert!((p.mean_validation_dice.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(p.estimated_seconds_left, Some(42));
        assert_eq!(p.last_epoch_time, Some(Time(now)));

        // The same epoch later keeps its time; a new epoch moves it.
        let later: Timestamp = "2026-12-04T10:05:00Z".parse().unwrap();
        let same = progress_from_metrics(METRICS, Some(&p), later).unwrap();
        assert_eq!(same.last_epoch_time, Some(Time(now)));
        let next = METRICS.replace("completed 3", "completed 4");
        let moved = progress_from_metrics(&next, Some(&p), later).unwrap();
        assert_eq!(moved.last_epoch_time, Some(Time(later)));
    }

    #[test]
    fn unknown_values_are_left_out() {
        let text = "voxel_trainer_epochs_completed 0\nvoxel_trainer_train_loss NaN\n\
                    voxel_trainer_estimated_seconds_left NaN\n";
        let p = progress_from_metrics(text, None, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(p.epoch, 0);
        assert!(p.train_loss.is_none() && p.estimated_seconds_left.is_none());
        assert!(p.last_epoch_time.is_none());
        assert!(progress_from_metrics("garbage", None, Timestamp::UNIX_EPOCH).is_none());
    }
}
