//! The Voxel API: Rust types of the `voxel.dev/v1alpha1` custom resources.
//!
//! This crate knows nothing of how resources are run. The operator, local mode and the trainer
//! all read manifests through these types, so a field means the same thing everywhere.
//!
//! - [`experiment`], [`cross_validation`], [`ensemble`], [`model`]: the four kinds.
//! - [`common`]: conditions, model references, `compareTo` and `publish`, shared by the kinds.
//! - [`results`]: metric summaries and baseline comparisons, as they appear in statuses.
//! - [`validation`] and [`cel`]: the rules of a valid spec, checked in Rust and by the API
//!   server with the same messages.
//! - [`manifest`]: reading a manifest of any kind; [`split`]: the subject split a `SplitSpec`
//!   means.

pub mod cel;
pub mod common;
pub mod cross_validation;
pub mod ensemble;
pub mod experiment;
pub mod manifest;
pub mod model;
pub mod results;
pub mod split;
pub mod validation;

pub use cross_validation::{CrossValidation, CrossValidationSpec, CrossValidationStatus};
pub use ensemble::{Ensemble, EnsembleSpec, EnsembleStatus};
pub use experiment::{Experiment, ExperimentSpec, ExperimentStatus};
pub use model::{Model, ModelVersionSpec, ModelVersionStatus};
pub use validation::{FieldError, ValidationErrors};

/// API group of every Voxel resource.
pub const GROUP: &str = "voxel.dev";
/// API version served by this release.
pub const VERSION: &str = "v1alpha1";
