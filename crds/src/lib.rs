//! The Voxel API: Rust types of the `voxel.dev/v1alpha1` custom resources.
//!
//! This crate knows nothing of how resources are run. The operator, local mode and the trainer
//! all read manifests through these types, so a field means the same thing everywhere.

pub mod experiment;
pub mod manifest;
pub mod results;
pub mod validation;

pub use experiment::{Experiment, ExperimentSpec};
pub use validation::{FieldError, ValidationErrors};

/// API group of every Voxel resource.
pub const GROUP: &str = "voxel.dev";
/// API version served by this release.
pub const VERSION: &str = "v1alpha1";
