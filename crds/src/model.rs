//! The Model resource: one published, immutable version of a registry model.
//!
//! A Model object is named `<modelName>-v<version>` (see [`model_object_name`]), so two
//! publishers racing for the same version number cannot both create it: the second is refused
//! and takes the next number. Its spec never changes (a CEL rule says so); only the aliases in
//! its status move.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cel::attach,
    common::{Combine, time_schema},
    experiment::{ExperimentSpec, PostprocessingSpec},
    results::{Comparison, StructureSummary},
};

/// The published version: its configuration, artifact, metrics and lineage. Never changes.
// Every `printcolumn(...)` repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "voxel.dev",
    version = "v1alpha1",
    kind = "Model",
    namespaced,
    shortname = "vxmodel",
    category = "voxel",
    derive = "PartialEq",
    status = "ModelVersionStatus",
    doc = "One published version of a model: its configuration, weights, metrics and lineage. \
           The spec never changes.",
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.modelName",
        description = "Name of the model in the registry"
    ),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".spec.version",
        description = "Version number"
    ),
    printcolumn(
        name = "Aliases",
        type_ = "string",
        json_path = ".status.aliases",
        description = "Aliases pointing at this version"
    ),
    printcolumn(
        name = "Test Dice",
        type_ = "number",
        json_path = ".spec.meanDice",
        description = "Mean test Dice over structures"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.lineage.source.kind",
        description = "Kind of resource that published it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::model_spec)]
pub struct ModelVersionSpec {
    /// Name of the model in the registry.
    #[schemars(transform = attach::model_name)]
    pub model_name: String,
    /// The version number: 1 for the first version of a model, then one more each time.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// What was trained: one network's resolved configuration, or an ensemble.
    pub configuration: ModelConfiguration,
    /// Where the weights and results are, with their digests.
    pub artifact: ArtifactSpec,
    /// Per-structure metrics on the test set it was evaluated on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<StructureSummary>,
    /// Mean over structures of the mean test Dice: the headline of `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_dice: Option<f64>,
    /// The comparison with the baseline named by the publisher's `compareTo`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// Where the version came from.
    pub lineage: LineageSpec,
    /// When it was published (RFC 3339).
    #[schemars(schema_with = "time_schema")]
    pub published_at: Time,
}

/// What a published version is. Exactly one of `experiment` and `ensemble` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::model_configuration)]
pub struct ModelConfiguration {
    /// The resolved configuration of a single network, every default written out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentSpec>,
    /// The members of an ensemble and how they are combined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleConfiguration>,
}

/// A published ensemble.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleConfiguration {
    /// The members, in order: a fold Experiment's name, or `model:version` for a published
    /// version. Each member's weights and resolved configuration are under `members/<name>/`
    /// in the artifact.
    #[schemars(transform = attach::ensemble_configuration_members)]
    pub members: Vec<String>,
    /// How the members' predictions are combined.
    pub combine: Combine,
    /// The configuration every member was trained with, when they share one (the folds of a
    /// CrossValidation, which differ only in their split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentSpec>,
    /// Post-processing of the combined masks, when it differs from the members'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocessing: Option<PostprocessingSpec>,
}

/// The stored files of a version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSpec {
    /// Where the files are: `s3://bucket/path`, `pvc://claim/path`, or a folder of the local
    /// registry.
    pub location: String,
    /// Digest over the files: SHA-256 of the sorted lines `<digest>  <path>` of `files`.
    #[schemars(transform = attach::digest)]
    pub digest: String,
    /// Every file, sorted by path.
    #[schemars(transform = attach::artifact_files)]
    pub files: Vec<ArtifactFileSpec>,
}

/// One stored file of a version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactFileSpec {
    /// Path relative to the artifact location, with `/` separators.
    pub path: String,
    /// SHA-256 of the file's bytes.
    #[schemars(transform = attach::digest)]
    pub digest: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Where a published version came from, so that it can be traced and reproduced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineageSpec {
    /// The resource that published it.
    pub source: LineageSource,
    /// SHA-256 of the publishing resource's manifest (its spec, as applied).
    #[schemars(transform = attach::digest)]
    pub manifest_digest: String,
    /// SHA-256 over the dataset CSV and every file it lists.
    #[schemars(transform = attach::digest)]
    pub dataset_digest: String,
    /// The training seed (`spec.training.seed`; for the folds of a CrossValidation, the
    /// template's).
    pub seed: u64,
    /// Version of the trainer that trained it (`voxel-trainer --version`).
    pub trainer_version: String,
    /// Container image of the trainer, in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_image: Option<String>,
    /// Git commit of the manifest, when the publishing resource is annotated with one or the
    /// manifest lives in a Git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The trainer runs it came from (pods or local runs), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<String>,
}

/// The kind of resource that published a version.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SourceKind {
    /// An Experiment: one network.
    Experiment,
    /// A CrossValidation: the ensemble of its fold models.
    CrossValidation,
    /// An Ensemble of published versions or of a CrossValidation's folds.
    Ensemble,
}

/// The resource that published a version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineageSource {
    /// Its kind.
    pub kind: SourceKind,
    /// Its name (in the Model's namespace).
    pub name: String,
    /// Its UID, in a cluster; tells a resource apart from a later one of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The moving parts of a published version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The aliases that point at this version now, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The object name of version `version` of `model`: `<model>-v<version>`. Creating the object
/// is how a version number is claimed.
pub fn model_object_name(model: &str, version: u32) -> String {
    format!("{model}-v{version}")
}
