//! Data: the dataset CSV, NIfTI volumes, validation, normalisation, splits and patch sampling.

pub mod dataset;
pub mod normalize;
pub mod sampling;
pub mod split;
pub mod subject;
pub mod volume;
