//! The Voxel operator library: pure decisions shared by the cluster controllers and local mode,
//! the statistics of baseline comparisons, the local model registry and the local executor.
