//! The Ensemble resource: trained models whose predictions are combined and evaluated together.
//!
//! The members are either published model versions or the fold models of a CrossValidation.
//! Their posteriors are averaged (or they vote) per voxel; the combination is evaluated on the
//! test set of `data`, compared with a baseline and published like any model.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cel::attach,
    common::{Combine, CompareToSpec, Condition, ModelReference, PublishSpec, VersionRef},
    experiment::{DataSpec, PostprocessingSpec},
    results::{Comparison, StructureSummary},
};

/// The desired ensemble: its members, how they are combined, the test set, and optionally the
/// baseline and the model to publish under.
// Every `printcolumn(...)` repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "voxel.dev",
    version = "v1alpha1",
    kind = "Ensemble",
    namespaced,
    shortname = "vxens",
    category = "voxel",
    derive = "PartialEq",
    status = "EnsembleStatus",
    doc = "Combines trained models (published versions, or the folds of a CrossValidation) and \
           evaluates the combination on a test set.",
    printcolumn(
        name = "Combine",
        type_ = "string",
        json_path = ".spec.combine",
        description = "How the members' predictions are combined"
    ),
    printcolumn(
        name = "Running",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Running")].status"#,
        description = "Whether the evaluation is running"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Succeeded")].status"#,
        description = "True when finished with results, False when failed"
    ),
    printcolumn(
        name = "Test Dice",
        type_ = "number",
        json_path = ".status.meanDice",
        description = "Mean test Dice over structures"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Succeeded")].reason"#,
        priority = 1,
        description = "Why the outcome is what it is"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::ensemble_spec)]
pub struct EnsembleSpec {
    /// The published model versions to combine (at least two). Exactly one of `members` and
    /// `crossValidation` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = attach::ensemble_members)]
    pub members: Vec<ModelReference>,
    /// Name of a CrossValidation in the same namespace whose fold models are combined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub cross_validation: Option<String>,
    /// How the members' predictions are combined.
    #[serde(default)]
    pub combine: Combine,
    /// The dataset to evaluate on; its `split` test list or fraction selects the test subjects.
    /// Use the members' own test split, or subjects none of them trained on.
    pub data: DataSpec,
    /// Post-processing of the combined masks; defaults to the first member's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocessing: Option<PostprocessingSpec>,
    /// A published model version to compare the ensemble with, paired by subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<CompareToSpec>,
    /// Publish the ensemble as a new model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSpec>,
}

/// What has happened to an Ensemble. Its outcome is in the conditions: `Running`,
/// `Succeeded`, and `Compared`/`Published` when `spec.compareTo`/`spec.publish` are set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleStatus {
    /// The latest observations of the Ensemble's state (types `Running`, `Succeeded`,
    /// `Compared`, `Published`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The members as resolved when the evaluation started: aliases replaced by the versions
    /// they pointed to. Empty for the folds of a CrossValidation, which are not published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<VersionRef>,
    /// The ensemble's per-structure metrics on the test set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<StructureSummary>,
    /// Mean over structures of the mean test Dice: the headline of `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_dice: Option<f64>,
    /// The comparison with `spec.compareTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The model version published under `spec.publish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_model: Option<VersionRef>,
}
