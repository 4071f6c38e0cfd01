//! `voxel-trainer`: loads medical images, trains segmentation networks with LibTorch, runs
//! sliding-window inference and scores predictions with the metrics researchers use.
//!
//! It never talks to the Kubernetes API. Its contract with the operator is the resolved
//! configuration it is given, the files it writes (see [`outputs`]), its exit code (see
//! [`error`]) and termination message (see [`termination`]), and the live metrics it serves
//! while training (see [`progress_metrics`]).

pub mod data;
pub mod error;
pub mod evaluate;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod network;
pub mod outputs;
pub mod progress_metrics;
pub mod resolve;
pub mod sync;
pub mod termination;
pub mod train;
