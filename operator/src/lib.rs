//! The Voxel operator library: pure decisions shared by the cluster controllers and local mode,
//! the cluster controllers (`voxel operator`), the statistics of baseline comparisons, the local
//! model registry and the local executor.

pub mod aggregate;
pub mod attempts;
pub mod cluster;
pub mod compare;
pub mod crd_gen;
pub mod cross_validation;
pub mod digest;
pub mod folds;
pub mod local;
pub mod metrics_table;
pub mod models;
pub mod publication;
pub mod registry;
pub mod stats;
