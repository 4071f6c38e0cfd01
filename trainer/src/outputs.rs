//! Names of every file the trainer writes: the contract with users, tests and the operator.

/// Final weights of a trained model (safetensors).
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// The Experiment manifest with every default filled in and paths made absolute.
pub const RESOLVED_CONFIG: &str = "experiment.yaml";
/// One row per epoch: losses, learning rate and validation Dice per structure.
pub const EPOCH_METRICS: &str = "epoch_metrics.csv";
/// Per-subject, per-structure metrics of the test subjects.
pub const TEST_METRICS: &str = "metrics.csv";
/// Mean and standard deviation per structure and metric, with counts.
pub const SUMMARY: &str = "summary.json";
/// The subjects of each set.
pub const SPLIT: &str = "split.json";
/// Folder of resumable checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// Folder of the test subjects' predictions written after training.
pub const TEST_PREDICTIONS: &str = "predictions";
/// Class map of one subject's prediction (0 background, `s + 1` structure `s`).
pub const SEGMENTATION: &str = "segmentation.nii.gz";
/// Extension of every mask written.
pub const MASK_EXTENSION: &str = ".nii.gz";
/// Columns of [`TEST_METRICS`], in order.
pub const METRICS_COLUMNS: [&str; 7] = [
    "subject",
    "structure",
    "dice",
    "hausdorff_mm",
    "hausdorff95_mm",
    "hausdorff95_max_directed_mm",
    "mean_surface_distance_mm",
];
