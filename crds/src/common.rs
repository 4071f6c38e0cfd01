//! Types shared by every kind: conditions, references to published models, the baseline
//! comparison and publishing settings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{cel::attach, results::StructureSummary};

/// Condition type: work is in progress (trainer pods pending or running, waiting to retry, or
/// evaluating). `False` once the resource has finished, whatever the outcome.
pub const CONDITION_RUNNING: &str = "Running";
/// Condition type: the outcome. `True` when the resource finished with results, `False` when
/// it failed for good (the reason and message say why), `Unknown` while it is not finished.
pub const CONDITION_SUCCEEDED: &str = "Succeeded";
/// Condition type: the comparison with `spec.compareTo` is done (`True`) or could not be made
/// (`False`, for example because the baseline does not exist). Absent without `compareTo`.
pub const CONDITION_COMPARED: &str = "Compared";
/// Condition type: a model version was published under `spec.publish` (`True`), or was not
/// (`False`, for example because a gated promotion found the candidate worse). Absent without
/// `publish`.
pub const CONDITION_PUBLISHED: &str = "Published";

/// Condition type of an Experiment: `True` while `spec.suspend` holds its trainer back.
pub const CONDITION_SUSPENDED: &str = "Suspended";
/// Condition type of an Experiment: `True` when a running trainer finished no epoch within
/// `spec.progressDeadlineSeconds`; `False` again once it does.
pub const CONDITION_STALLED: &str = "Stalled";

/// The condition types Voxel sets, in the order they are listed in a status.
pub const CONDITION_TYPES: [&str; 6] = [
    CONDITION_RUNNING,
    CONDITION_SUCCEEDED,
    CONDITION_SUSPENDED,
    CONDITION_STALLED,
    CONDITION_COMPARED,
    CONDITION_PUBLISHED,
];

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known yet whether the condition holds.
    Unknown,
}

/// One aspect of a resource's state, following the Kubernetes API conventions (the same JSON as
/// `meta/v1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect: `Running`, `Succeeded`, `Compared` or `Published`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase word saying why the condition last changed, for example `Preempted`,
    /// `BadConfiguration` or `BaselineNotFound`.
    pub reason: String,
    /// What happened, for people; may be empty.
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[schemars(schema_with = "time_schema")]
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The schema of a Kubernetes `Time`: an RFC 3339 timestamp.
pub(crate) fn time_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time"})
}

/// The schema of an optional Kubernetes `Time`.
pub(crate) fn optional_time_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time", "nullable": true})
}

/// The condition of type `type_`, if set.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition, replacing the one of the same type. The last transition time is kept
/// when the status did not change, as the API conventions ask; returns whether anything but
/// that time changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            let changed = *existing != condition;
            *existing = condition;
            changed
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// Mean over structures of the mean Dice of each: the headline metric of `kubectl get`.
/// `None` when no structure has a finite Dice.
pub fn headline_dice(metrics: &[StructureSummary]) -> Option<f64> {
    let means: Vec<f64> = metrics.iter().filter_map(|m| m.dice.mean).collect();
    (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64)
}

/// A per-subject metric, named as in the columns of `metrics.csv` (see
/// [`crate::results::METRIC_NAMES`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Dice overlap, a fraction in [0, 1]; higher is better.
    #[default]
    Dice,
    /// Hausdorff distance in mm; lower is better.
    HausdorffMm,
    /// 95th percentile Hausdorff distance (MedPy's HD95) in mm; lower is better.
    Hausdorff95Mm,
    /// The larger directed 95th percentile distance (MONAI's HD95) in mm; lower is better.
    Hausdorff95MaxDirectedMm,
    /// Symmetric mean surface distance in mm; lower is better.
    MeanSurfaceDistanceMm,
}

impl MetricName {
    /// The name as in `metrics.csv` and [`crate::results::METRIC_NAMES`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dice => "dice",
            Self::HausdorffMm => "hausdorff_mm",
            Self::Hausdorff95Mm => "hausdorff95_mm",
            Self::Hausdorff95MaxDirectedMm => "hausdorff95_max_directed_mm",
            Self::MeanSurfaceDistanceMm => "mean_surface_distance_mm",
        }
    }
}

/// How the members of an ensemble are combined.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Combine {
    /// Average the members' posterior probabilities, then take the most likely class per voxel.
    #[default]
    Mean,
    /// Each member votes for its most likely class per voxel; ties go to the lower class index
    /// (background first).
    MajorityVote,
}

/// A published model version, by number or by alias. Exactly one of `version` and `alias` is
/// set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::version_or_alias)]
pub struct ModelReference {
    /// Name of the model in the registry.
    #[schemars(transform = attach::model_name)]
    pub model: String,
    /// A version number, 1 or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u32>,
    /// An alias such as `production`, resolved to the version it points to when the resource
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attach::alias)]
    pub alias: Option<String>,
}

/// One version of a model, as resolved or published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionRef {
    /// Name of the model in the registry.
    pub model: String,
    /// The version number.
    pub version: u32,
}

/// The baseline to compare the results with: a published model version, tested paired by
/// subject on the same test set. Exactly one of `version` and `alias` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::version_or_alias)]
pub struct CompareToSpec {
    /// Name of the baseline model in the registry.
    #[schemars(transform = attach::model_name)]
    pub model: String,
    /// The baseline's version number, 1 or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u32>,
    /// An alias of the baseline (for example `production`), resolved when the comparison starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attach::alias)]
    pub alias: Option<String>,
    /// The metric whose test decides each structure's verdict; every metric is still tested and
    /// reported.
    #[serde(default)]
    pub metric: MetricName,
    /// Significance level applied to the Holm-corrected p-values, greater than 0 and at most
    /// 0.5.
    #[serde(default = "default_alpha")]
    #[schemars(transform = attach::alpha)]
    pub alpha: f64,
    /// Bootstrap resamples for the confidence interval of the median difference, 100 to 100000.
    #[serde(default = "default_bootstrap_samples")]
    #[schemars(range(min = 100, max = 100000))]
    pub bootstrap_samples: u32,
    /// Seed of the bootstrap resampling, so that a comparison can be repeated exactly.
    #[serde(default)]
    pub seed: u64,
}

// The conventional 5% level; the Holm correction already accounts for the structures tested.
fn default_alpha() -> f64 {
    0.05
}
// 2000 resamples put the Monte Carlo error of a 95% interval's ends well below the spread of
// Dice differences seen between subjects.
fn default_bootstrap_samples() -> u32 {
    2000
}

/// Where to publish the result as a new, immutable model version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishSpec {
    /// Name of the model to publish under; the next free version number is taken.
    #[schemars(transform = attach::model_name)]
    pub model: String,
    /// Move an alias to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<PromoteSpec>,
}

/// Moving an alias to a newly published version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromoteSpec {
    /// The alias to move, for example `production`.
    #[schemars(transform = attach::alias)]
    pub alias: String,
    /// Move the alias only if the new version is not significantly worse than the version the
    /// alias points to now, on any structure (tested as `compareTo` would). An alias that points
    /// nowhere yet is always moved.
    #[serde(default = "default_true")]
    pub gated: bool,
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::results::{METRIC_NAMES, MetricAggregate};

    fn condition(type_: &str, status: ConditionStatus, reason: &str, second: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::from_second(second).unwrap()),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn metric_names_match_the_metrics_csv_columns() {
        let names = [
            MetricName::Dice,
            MetricName::HausdorffMm,
            MetricName::Hausdorff95Mm,
            MetricName::Hausdorff95MaxDirectedMm,
            MetricName::MeanSurfaceDistanceMm,
        ];
        for (name, expected) in names.iter().zip(METRIC_NAMES) {
            assert_eq!(name.as_str(), expected);
            assert_eq!(serde_json::to_value(name).unwrap(), expected);
        }
    }

    #[test]
    fn setting_the_same_status_keeps_the_transition_time() {
        let mut conditions = vec![condition(CONDITION_RUNNING, ConditionStatus::True, "A", 10)];
        let changed = set_condition(
            &mut conditions,
            condition(CONDITION_RUNNING, ConditionStatus::True, "A", 20),
        );
        assert!(!changed);
        assert_eq!(conditions[0].last_transition_time.0.as_second(), 10);

        let changed = set_condition(
            &mut conditions,
            condition(CONDITION_RUNNING, ConditionStatus::False, "Done", 30),
        );
        assert!(changed);
        assert_eq!(conditions[0].last_transition_time.0.as_second(), 30);
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn conditions_serialize_like_kubernetes_conditions() {
        let json = serde_json::to_value(condition(
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            "Training",
            0,
        ))
        .unwrap();
        assert_eq!(json["type"], "Succeeded");
        assert_eq!(json["status"], "Unknown");
        assert_eq!(json["lastTransitionTime"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn headline_dice_averages_structures_with_a_mean() {
        let summary = |mean| StructureSummary {
            dice: MetricAggregate {
                mean,
                ..MetricAggregate::default()
            },
            ..StructureSummary::default()
        };
        assert_eq!(
            headline_dice(&[summary(Some(0.75)), summary(Some(0.25)), summary(None)]),
            Some(0.5)
        );
        assert_eq!(headline_dice(&[summary(None)]), None);
    }
}
