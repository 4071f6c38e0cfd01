//! The Experiment resource: one training run of one model configuration.
//!
//! The spec is written by users (and by the CrossValidation controller for its folds) and read by
//! the trainer as a whole manifest. Defaults are declared next to each field with the reason for
//! them, so that the generated schema and `kubectl explain` show what an omitted field means.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, Toleration},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cel::attach,
    common::{
        CompareToSpec, Condition, PublishSpec, VersionRef, optional_time_schema, time_schema,
    },
    results::{Comparison, StructureSummary},
};

/// The desired run: what is learned, how, and on which data, and optionally the baseline to
/// compare with and the model to publish under.
// Every `printcolumn(...)` repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "voxel.dev",
    version = "v1alpha1",
    kind = "Experiment",
    namespaced,
    shortname = "vxexp",
    category = "voxel",
    derive = "PartialEq",
    status = "ExperimentStatus",
    doc = "One training run of one model configuration on one data set.",
    printcolumn(
        name = "Running",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Running")].status"#,
        description = "Whether a trainer is running or about to run"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Succeeded")].status"#,
        description = "True when finished with results, False when failed"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.progress.epoch",
        description = "Epochs completed"
    ),
    printcolumn(
        name = "Val Dice",
        type_ = "number",
        json_path = ".status.progress.meanValidationDice",
        description = "Mean validation Dice after the last epoch"
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
pub struct ExperimentSpec {
    /// What is learned: task, network, preprocessing, loss and post-processing.
    pub model: ModelSpec,
    /// How it is learned: epochs, batches, optimizer, schedule, seed and checkpoints.
    pub training: TrainingSpec,
    /// Where the images are, how they are described, and how subjects are split.
    #[schemars(transform = attach::experiment_data)]
    pub data: DataSpec,
    /// A published model version to compare the test results with, paired by subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<CompareToSpec>,
    /// Publish the trained model as a new version of a registry model when the run succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSpec>,
    /// Where trainer pods write checkpoints, weights and results in a cluster. Local mode
    /// writes under its state folder and ignores this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attach::artifacts)]
    pub artifacts: Option<ArtifactStore>,
    /// Compute resources of each trainer pod.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Where trainer pods may run: node selector, tolerations, affinity, priority, spot nodes.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// Failed attempts retried (with exponential back-off from 10 s, capped at 6 min) before
    /// the Experiment fails, as in a batch/v1 Job. Preempted attempts and permanent trainer
    /// errors (bad data, bad configuration) do not count: the first resumes, the second fails
    /// at once.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(max = 100))]
    pub backoff_limit: u32,
    /// Seconds the Experiment may be active (counted from its first attempt, suspended time
    /// included, as in a Job) before it fails with reason `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
    /// Stop the run: trainer pods are deleted, progress and the last checkpoint are kept, and
    /// clearing the flag resumes from that checkpoint.
    #[serde(default)]
    pub suspend: bool,
    /// Delete the Experiment this many seconds after it finished (succeeded or failed); kept
    /// forever when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Seconds without a finished epoch after which a running trainer is marked `Stalled`
    /// (the run continues; the condition tells people to look).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: u64,
}

// A few retries ride out a flaky node or a transient storage error without burning GPU hours
// on a run that fails for a real reason.
fn default_backoff_limit() -> u32 {
    3
}

// Half an hour without an epoch is far beyond any epoch of the shipped examples on one GPU, yet
// short enough that a hung trainer is noticed within a shift.
fn default_progress_deadline() -> u64 {
    1800
}

/// The storage trainer pods write their artifacts to. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::artifact_store)]
pub struct ArtifactStore {
    /// A PersistentVolumeClaim mounted read-write into trainer pods; each Experiment writes to
    /// its own folder `<subPath>/<namespace>/<experiment>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
    /// An S3-compatible bucket; each Experiment writes under `<prefix>/<namespace>/<experiment>/`.
    /// The trainer works in a scratch folder of its pod and uploads after every checkpoint; a
    /// new attempt downloads the last checkpoint first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
}

/// An S3-compatible bucket. Credentials come only from a Secret in the Experiment's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// The bucket.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/` needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint URL of an S3-compatible service (`https://minio.storage:9000`); AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket (`us-east-1` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The Secret holding the access key, in the Experiment's namespace.
    pub credentials_secret: S3CredentialsSecret,
}

/// Where in a Secret the S3 access key is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id in the Secret.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key of the secret access key in the Secret.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// Compute resources of a trainer pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs requested (and limited to); 0 trains on the CPU.
    #[serde(default = "default_gpus")]
    #[schemars(range(max = 16))]
    pub gpus: u32,
    /// Extended resource name of a GPU; the operator's `--gpu-resource` (default
    /// `nvidia.com/gpu`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub gpu_resource_name: Option<String>,
    /// CPU requested, as a Kubernetes quantity (`4`, `3500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory requested and limited to, as a Kubernetes quantity (`16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

fn default_gpus() -> u32 {
    1
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_resource_name: None,
            cpu: None,
            memory: None,
        }
    }
}

/// Where trainer pods may run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Labels a node must have, as in a pod's `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the trainer pods tolerate, as in a pod's `tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity, as in a pod's `affinity`; with `spot` the spot-node preference is
    /// added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the trainer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// Run on preemptible (spot) GPU nodes: adds the tolerations of the spot taints of GKE,
    /// AKS, EKS and Karpenter and requires a node with one of their spot labels. A reclaimed
    /// node is then a resumable event, not a failure (that holds without `spot` too).
    #[serde(default)]
    pub spot: bool,
}

/// The learning task.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Task {
    /// Voxel-wise segmentation of one or more structures.
    Segmentation,
    /// One label per subject.
    Classification,
    /// One continuous value per subject.
    Regression,
}

/// The network family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Architecture {
    /// A 3D U-Net: convolution blocks, max-pool down, transposed convolution up, skip
    /// concatenation.
    UNet3D,
}

/// What the network learns and how its inputs and outputs are prepared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The learning task. Only `Segmentation` is trained by this release.
    pub task: Task,
    /// The network family.
    #[schemars(transform = attach::architecture)]
    pub architecture: Architecture,
    /// Image channels fed to the network, in order; each names a `channel` value of the dataset
    /// CSV (for example `ct` or `mr`).
    pub image_channels: Vec<String>,
    /// Structures to segment, in order; each names the `channel` of a binary mask in the
    /// dataset CSV. The network predicts background plus one class per structure.
    pub structures: Vec<String>,
    /// Width and depth of the network.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Intensity normalisation, patch and tile sizes, and patch sampling.
    pub preprocessing: PreprocessingSpec,
    /// Random transforms applied to training patches.
    #[serde(default)]
    pub augmentation: AugmentationSpec,
    /// The training loss.
    #[serde(default)]
    pub loss: LossSpec,
    /// What is done to predicted masks before they are written and scored.
    #[serde(default)]
    pub postprocessing: PostprocessingSpec,
}

/// Normalisation layer used inside every convolution block.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Normalization {
    /// Group normalisation; independent of the batch size, so it suits the small batches of
    /// 3D training.
    #[default]
    GroupNorm,
    /// Batch normalisation with running statistics for inference.
    BatchNorm,
}

/// Width and depth of the network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Feature channels of the first level; each deeper level doubles them.
    #[serde(default = "default_base_channels")]
    #[schemars(range(min = 1, max = 512))]
    pub base_channels: u32,
    /// Resolution levels including the bottleneck; each level halves the spatial size, so patch
    /// and tile sizes must be multiples of 2^(levels-1).
    #[serde(default = "default_levels")]
    #[schemars(range(min = 1, max = 7))]
    pub levels: u32,
    /// Normalisation layer inside every convolution block.
    #[serde(default)]
    pub normalization: Normalization,
    /// Number of groups for `GroupNorm` (capped at the channel count of a layer).
    #[serde(default = "default_norm_groups")]
    #[schemars(range(min = 1))]
    pub norm_groups: u32,
    /// Negative slope of the LeakyReLU activations.
    #[serde(default = "default_leaky_slope")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub leaky_relu_slope: f64,
}

// 16 channels and 4 levels is the smallest U-Net that still sees a 3 cm context at 1 mm.
fn default_base_channels() -> u32 {
    16
}
fn default_levels() -> u32 {
    4
}
fn default_norm_groups() -> u32 {
    4
}
fn default_leaky_slope() -> f64 {
    0.01
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            base_channels: default_base_channels(),
            levels: default_levels(),
            normalization: Normalization::default(),
            norm_groups: default_norm_groups(),
            leaky_relu_slope: default_leaky_slope(),
        }
    }
}

/// How intensities of one image channel are mapped before they reach the network.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NormalizationMethod {
    /// Subtract the mean and divide by the standard deviation of the whole volume (MR).
    ZScore,
    /// Clip to the window `[level - width/2, level + width/2]` in Hounsfield units and map it
    /// linearly to [-1, 1] (CT).
    CtWindow,
    /// Clip to the window between two intensity percentiles of the volume and map it linearly
    /// to [-1, 1] (MR with outliers).
    RobustWindow,
}

/// Intensity normalisation of one image channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelNormalization {
    /// The image channel this applies to; one of `model.imageChannels`.
    pub channel: String,
    /// The normalisation method.
    pub method: NormalizationMethod,
    /// Window centre in HU for `CtWindow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_level: Option<f64>,
    /// Window width in HU for `CtWindow`; must be positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_width: Option<f64>,
    /// Lower percentile (0-100) for `RobustWindow`; defaults to 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_percentile: Option<f64>,
    /// Upper percentile (0-100) for `RobustWindow`; defaults to 99.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_percentile: Option<f64>,
}

/// Normalisation, patch and tile geometry, and patch sampling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreprocessingSpec {
    /// Normalisation per image channel. A channel without an entry gets `ZScore`.
    #[serde(default)]
    pub normalization: Vec<ChannelNormalization>,
    /// Size of training patches in voxels along i, j, k (NIfTI axis order). Images smaller than
    /// a patch are padded.
    pub crop_size: [u32; 3],
    /// Size of inference tiles in voxels along i, j, k; defaults to the crop size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_size: Option<[u32; 3]>,
    /// Fraction of a tile shared with its neighbour during sliding-window inference, in [0, 1).
    #[serde(default = "default_tile_overlap")]
    #[schemars(range(min = 0.0, max = 0.95))]
    pub tile_overlap: f64,
    /// Relative weights for drawing the class a patch is centred on: background first, then one
    /// per structure. Defaults to equal weights, which centres most patches on foreground.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f64>>,
}

// Half-overlapping tiles average two predictions for most voxels, which removes tile seams.
fn default_tile_overlap() -> f64 {
    0.5
}

/// Random transforms applied to training patches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AugmentationSpec {
    /// Axes (0 = i, 1 = j, 2 = k) along which a patch may be mirrored. Empty by default: a flip
    /// along an anatomical axis can swap the meaning of structures (left/right, anterior/
    /// posterior).
    #[serde(default)]
    pub flip_axes: Vec<u8>,
    /// Probability of mirroring along each listed axis.
    #[serde(default = "default_flip_probability")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub flip_probability: f64,
}

fn default_flip_probability() -> f64 {
    0.5
}

/// The training loss.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum LossKind {
    /// Soft Dice over the structures (background excluded).
    SoftDice,
    /// Voxel-wise cross entropy over background and structures.
    CrossEntropy,
    /// `diceWeight * SoftDice + (1 - diceWeight) * CrossEntropy`.
    #[default]
    DiceCrossEntropy,
}

/// The training loss and its mixing weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LossSpec {
    /// The loss function.
    #[serde(default, rename = "type")]
    pub kind: LossKind,
    /// Weight of the soft Dice term in `DiceCrossEntropy`, in [0, 1].
    #[serde(default = "default_dice_weight")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dice_weight: f64,
}

fn default_dice_weight() -> f64 {
    0.5
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            kind: LossKind::default(),
            dice_weight: default_dice_weight(),
        }
    }
}

/// Post-processing of predicted masks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostprocessingSpec {
    /// Keep only the largest 26-connected component of each structure.
    #[serde(default)]
    pub largest_component: bool,
}

/// How the network is trained.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// Number of passes; each draws one patch per training subject.
    #[schemars(range(min = 1, max = 100000))]
    pub epochs: u32,
    /// Patches per optimisation step.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: u32,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Seed of every random choice: initial weights, patch sampling, augmentation.
    #[serde(default)]
    #[schemars(transform = attach::training_seed)]
    pub seed: u64,
    /// Ask LibTorch for deterministic algorithms (slower on GPU; the CPU is deterministic for a
    /// fixed thread count either way).
    #[serde(default = "default_true")]
    pub deterministic: bool,
    /// Numeric precision of forward passes.
    #[serde(default)]
    pub precision: Precision,
    /// Write a resumable checkpoint every this many epochs (and always after the last).
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every_epochs: u32,
}

fn default_batch_size() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_checkpoint_every() -> u32 {
    5
}

/// Numeric precision of forward passes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Precision {
    /// Full 32-bit floats everywhere.
    #[default]
    Float32,
    /// bfloat16 autocast for convolutions; weights, optimizer and losses stay in 32 bits.
    BFloat16,
}

/// The optimizer family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum OptimizerKind {
    /// Adam with bias correction; `weightDecay` is added to the gradient (L2).
    #[default]
    Adam,
    /// Stochastic gradient descent with (optionally Nesterov) momentum.
    Sgd,
}

/// The optimizer and its hyperparameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OptimizerSpec {
    /// The optimizer family.
    #[serde(default, rename = "type")]
    pub kind: OptimizerKind,
    /// Peak learning rate (reached after warm-up).
    #[serde(default = "default_learning_rate")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub learning_rate: f64,
    /// L2 weight decay.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub weight_decay: f64,
    /// Momentum for `Sgd`.
    #[serde(default = "default_momentum")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub momentum: f64,
    /// Nesterov momentum for `Sgd`.
    #[serde(default)]
    pub nesterov: bool,
    /// Adam's exponential decay rates of the first and second moment estimates.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's term added to the denominator for numerical stability.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

// 1e-3 is Adam's customary rate; U-Nets with normalisation layers tolerate it well.
fn default_learning_rate() -> f64 {
    1e-3
}
fn default_momentum() -> f64 {
    0.9
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_epsilon() -> f64 {
    1e-8
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::default(),
            learning_rate: default_learning_rate(),
            weight_decay: 0.0,
            momentum: default_momentum(),
            nesterov: false,
            betas: default_betas(),
            epsilon: default_epsilon(),
        }
    }
}

/// Shape of the learning-rate schedule after warm-up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ScheduleKind {
    /// The peak rate throughout.
    #[default]
    Constant,
    /// Half a cosine from the peak rate down to `minLearningRate` at the last step.
    Cosine,
    /// `(1 - progress)^power` from the peak rate down to `minLearningRate`.
    Polynomial,
    /// Multiply by `gamma` every `stepEpochs` epochs.
    Step,
}

/// The learning-rate schedule, evaluated at every optimisation step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Shape after warm-up.
    #[serde(default, rename = "type")]
    pub kind: ScheduleKind,
    /// Epochs of linear warm-up from zero to the peak rate.
    #[serde(default)]
    pub warmup_epochs: u32,
    /// Floor of `Cosine` and `Polynomial`.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub min_learning_rate: f64,
    /// Exponent of `Polynomial`.
    #[serde(default = "default_power")]
    pub power: f64,
    /// Period of `Step`, in epochs.
    #[serde(default = "default_step_epochs")]
    #[schemars(range(min = 1))]
    pub step_epochs: u32,
    /// Factor of `Step`.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

// 0.9 is the "poly" schedule of the segmentation literature.
fn default_power() -> f64 {
    0.9
}
fn default_step_epochs() -> u32 {
    30
}
fn default_gamma() -> f64 {
    0.1
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::default(),
            warmup_epochs: 0,
            min_learning_rate: 0.0,
            power: default_power(),
            step_epochs: default_step_epochs(),
            gamma: default_gamma(),
        }
    }
}

/// Where the data is and how subjects are split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    /// The storage holding the dataset CSV and the images.
    pub source: DataSource,
    /// Path of the dataset CSV (`subject,filePath,channel` plus optional columns) inside the
    /// source; its `filePath`s are relative to the CSV's own folder.
    pub dataset: String,
    /// How subjects are divided into training, validation and test sets.
    #[serde(default)]
    pub split: SplitSpec,
}

/// The storage holding the data. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::data_source)]
pub struct DataSource {
    /// A directory on this machine (local mode). A relative path is relative to the manifest's
    /// folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// A PersistentVolumeClaim mounted read-only into trainer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
}

/// A PersistentVolumeClaim holding the data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim, in the Experiment's namespace.
    pub claim_name: String,
    /// Folder inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Subject-level split. Either explicit lists or fractions; a subject's images never end up in
/// two sets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::split)]
pub struct SplitSpec {
    /// Subjects held out for the final test. Overrides `testFraction`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_subjects: Vec<String>,
    /// Subjects used for validation after every epoch. Overrides `validationFraction`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_subjects: Vec<String>,
    /// Fraction of subjects held out for the final test, in (0, 1), when no list is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attach::test_fraction)]
    pub test_fraction: Option<f64>,
    /// Fraction of subjects used for validation, in [0, 1), when no list is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attach::validation_fraction)]
    pub validation_fraction: Option<f64>,
    /// Seed of the random split by fractions.
    #[serde(default)]
    pub seed: u64,
    /// Validate on one fold of a k-fold deal of the subjects outside the test set, and train on
    /// the other folds. A CrossValidation sets it on the Experiment of each fold; it excludes
    /// `validationSubjects` and `validationFraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<FoldSelection>,
}

/// One fold of a k-fold deal of the subjects outside the test set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = attach::fold_selection)]
pub struct FoldSelection {
    /// Number of folds the subjects are dealt into.
    #[schemars(transform = attach::fold_count)]
    pub folds: u32,
    /// The fold that validates, from 0.
    pub index: u32,
    /// Seed of the deal.
    #[serde(default)]
    pub seed: u64,
}

/// What has happened to an Experiment. Its outcome is in the conditions: `Running`,
/// `Succeeded`, and `Compared`/`Published` when `spec.compareTo`/`spec.publish` are set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    /// The latest observations of the Experiment's state (types `Running`, `Succeeded`,
    /// `Compared`, `Published`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Suspended, Succeeded or Failed: a summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExperimentPhase>,
    /// When the first attempt was created (RFC 3339); `activeDeadlineSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub start_time: Option<Time>,
    /// When the Experiment succeeded or failed (RFC 3339); `ttlSecondsAfterFinished` counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub completion_time: Option<Time>,
    /// Live training progress, scraped from the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TrainingProgress>,
    /// Every trainer pod started for this Experiment, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Attempts ended by preemption (spot node reclaimed, node drained); they resume from the
    /// last checkpoint and do not count as retries.
    #[serde(default)]
    pub preemptions: u32,
    /// Attempts that failed and were retried with back-off.
    #[serde(default)]
    pub retries: u32,
    /// Final per-structure metrics on the held-out test set.
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
    /// Where the checkpoints, weights, per-subject metrics and summary are: `s3://bucket/path`,
    /// `pvc://claim/path`, or a local folder in local mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
}

/// The phase of an Experiment, derived from its conditions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExperimentPhase {
    /// Waiting for a trainer pod to be scheduled, or for the back-off before a retry.
    Pending,
    /// A trainer pod is running.
    Running,
    /// Stopped by `spec.suspend`; resumes from the last checkpoint when cleared.
    Suspended,
    /// Finished with results.
    Succeeded,
    /// Failed for good.
    Failed,
}

/// Training progress as reported by the trainer after each epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingProgress {
    /// Epochs completed.
    pub epoch: u32,
    /// Epochs in total (`spec.training.epochs`).
    pub epochs: u32,
    /// Mean training loss of the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation Dice of each structure after the last epoch (fraction in [0, 1]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_dice: Vec<StructureValue>,
    /// Mean of `validationDice` over structures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_validation_dice: Option<f64>,
    /// Estimated seconds until training ends, from the pace of the epochs so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_seconds_left: Option<u64>,
    /// When `epoch` last grew (RFC 3339); `spec.progressDeadlineSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub last_epoch_time: Option<Time>,
}

/// One number for one structure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StructureValue {
    /// The structure, as named in `spec.model.structures`.
    pub structure: String,
    /// The value.
    pub value: f64,
}

/// One trainer pod and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Name of the pod (or of the local process, in local mode).
    pub pod: String,
    /// When the attempt started (RFC 3339).
    #[schemars(schema_with = "time_schema")]
    pub start: Time,
    /// When the attempt ended (RFC 3339); absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "time_schema")]
    pub end: Option<Time>,
    /// Exit code of the trainer; absent while it runs or when the pod vanished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How the attempt ended, as a CamelCase word: `Completed`, `Preempted`,
    /// `BadConfiguration`, `BadInput`, `Error`, `OOMKilled`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The trainer's termination message, if it left one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
