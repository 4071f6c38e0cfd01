//! The CrossValidation resource: k folds of one Experiment template.
//!
//! The template's `data.split` (test list or fraction) defines the held-out test set; the other
//! subjects are dealt into `folds` folds from `seed`. Fold `f` trains on the other folds and
//! validates on fold `f`. Each fold is a child Experiment; optionally an Ensemble of the fold
//! models is evaluated on the test set, and the result is compared and published here.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cel::attach,
    common::{Combine, CompareToSpec, Condition, PublishSpec, VersionRef},
    experiment::ExperimentSpec,
    results::{Comparison, StructureSummary},
};

/// The desired cross-validation: the folds and their seed, the Experiment template, the
/// ensemble of the fold models, and optionally the baseline and the model to publish under.
// Every `printcolumn(...)` repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "voxel.dev",
    version = "v1alpha1",
    kind = "CrossValidation",
    namespaced,
    shortname = "vxcv",
    category = "voxel",
    derive = "PartialEq",
    status = "CrossValidationStatus",
    doc = "Trains one Experiment template on k folds of the subjects, aggregates the fold \
           metrics, and optionally evaluates the ensemble of the fold models on the held-out \
           test set.",
    printcolumn(
        name = "Folds",
        type_ = "integer",
        json_path = ".spec.folds",
        description = "Number of folds"
    ),
    printcolumn(
        name = "Running",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Running")].status"#,
        description = "Whether folds or the ensemble are running"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Succeeded")].status"#,
        description = "True when finished with results, False when failed"
    ),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.foldsSucceeded",
        description = "Folds finished with results"
    ),
    printcolumn(
        name = "Test Dice",
        type_ = "number",
        json_path = ".status.meanDice",
        description = "Mean test Dice over structures (ensemble if built, else over folds)"
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
#[schemars(transform = attach::cross_validation_spec)]
pub struct CrossValidationSpec {
    /// Number of folds, 2 to 20. Cannot change after creation.
    #[serde(default = "default_folds")]
    #[schemars(transform = attach::folds)]
    pub folds: u32,
    /// Most folds training at the same time.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1))]
    pub parallelism: u32,
    /// Seed of the fold assignment: the same subjects, folds and seed always give the same
    /// folds. Cannot change after creation.
    #[serde(default)]
    #[schemars(transform = attach::fold_seed)]
    pub seed: u64,
    /// The spec of every fold's Experiment. Its `data.split` test list or fraction defines the
    /// held-out test set; validation subjects are set per fold, and `compareTo` and `publish`
    /// belong to the CrossValidation, so the template leaves all of these empty.
    pub template: ExperimentSpec,
    /// Whether and how the fold models are combined and evaluated on the test set.
    #[serde(default)]
    pub ensemble: EnsembleOptions,
    /// A published model version to compare the result with (the ensemble when built, else
    /// the fold models), paired by subject on the test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<CompareToSpec>,
    /// Publish the result (the ensemble of the fold models when built) as a new model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSpec>,
}

// Five folds is the customary balance between training-set size and the spread estimate.
fn default_folds() -> u32 {
    5
}
// One fold at a time fits any machine; raise it where there are GPUs to spare.
fn default_parallelism() -> u32 {
    1
}

/// The ensemble of the fold models.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleOptions {
    /// Build the ensemble of the fold models and evaluate it on the test set.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How the fold models' predictions are combined.
    #[serde(default)]
    pub combine: Combine,
}

fn default_true() -> bool {
    true
}

impl Default for EnsembleOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            combine: Combine::default(),
        }
    }
}

/// What has happened to a CrossValidation. Its outcome is in the conditions: `Running`,
/// `Succeeded`, and `Compared`/`Published` when `spec.compareTo`/`spec.publish` are set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrossValidationStatus {
    /// The latest observations of the CrossValidation's state (types `Running`, `Succeeded`,
    /// `Compared`, `Published`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The subjects of each fold, as assigned from `spec.seed`: the record of the assignment
    /// actually used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold_assignment: Vec<FoldAssignment>,
    /// `sha256:` of the template's `model`, `training` and `data`, and of `folds` and `seed`,
    /// that the folds were made from: an edit of them after the first fold started fails the
    /// run rather than mix two configurations in one ensemble.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_digest: Option<String>,
    /// The held-out test subjects, shared by every fold and the ensemble.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_subjects: Vec<String>,
    /// One entry per fold: its Experiment, its state and its test metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldStatus>,
    /// Number of folds finished with results.
    #[serde(default)]
    pub folds_succeeded: u32,
    /// Mean and standard deviation over the folds of each fold's mean test metric, per
    /// structure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<StructureSummary>,
    /// Name of the Ensemble of the fold models, when `spec.ensemble.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<String>,
    /// The ensemble's per-structure metrics on the test set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ensemble_metrics: Vec<StructureSummary>,
    /// Mean over structures of the mean test Dice of the ensemble when built, else of
    /// `aggregate`: the headline of `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_dice: Option<f64>,
    /// The comparison with `spec.compareTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The model version published under `spec.publish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_model: Option<VersionRef>,
}

/// The subjects that validate one fold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoldAssignment {
    /// The fold, counted from 0.
    pub fold: u32,
    /// Its validation subjects, sorted; the fold trains on the other folds' subjects.
    pub subjects: Vec<String>,
}

/// Where one fold's Experiment is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum FoldState {
    /// Not created yet, waiting for a free slot of `spec.parallelism`.
    #[default]
    Pending,
    /// Its Experiment is running.
    Running,
    /// Its Experiment finished with results.
    Succeeded,
    /// Its Experiment failed for good.
    Failed,
}

/// One fold's Experiment and its results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoldStatus {
    /// The fold, counted from 0.
    pub fold: u32,
    /// Name of the fold's Experiment.
    pub experiment: String,
    /// Where the fold's Experiment is.
    pub state: FoldState,
    /// The fold model's per-structure metrics on the test set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<StructureSummary>,
    /// Where the fold's Experiment wrote its model (`pvc://claim/path` or `s3://bucket/key`),
    /// kept when the Experiment is deleted after it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
}
