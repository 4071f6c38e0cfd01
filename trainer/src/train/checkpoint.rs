//! Resumable checkpoints: weights, optimizer state and the position of the run.
//!
//! A checkpoint is a folder `checkpoints/epoch-NNNNN/` written under a temporary name and
//! renamed when complete, so a run killed while writing leaves the previous checkpoint intact.
//! Random draws need no saved generator state: every epoch derives its generators from the
//! seed and the epoch number (see `data::sampling::stream_seed`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn::VarStore};

use crate::train::{EpochRecord, optimizer::Optimizer};

const WEIGHTS: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
/// Checkpoints kept; older ones are deleted once a newer one is complete.
const KEEP: usize = 2;

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// Epochs completed.
    pub epoch: u32,
    /// Optimisation steps taken (the schedule position).
    pub step: u64,
    /// The run's seed, from which every epoch's random streams derive.
    pub seed: u64,
    /// Every epoch's record so far, to rewrite `epoch_metrics.csv` on resume.
    pub records: Vec<EpochRecord>,
}

fn folder_name(epoch: u32) -> String {
    format!("epoch-{epoch:05}")
}

/// Writes a checkpoint for `state.epoch` and prunes older ones.
pub fn save(
    root: &Path,
    vs: &VarStore,
    optimizer: &Optimizer,
    state: &RunState,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let name = folder_name(state.epoch);
    let partial = root.join(format!(".partial-{name}"));
    let done = root.join(&name);
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    vs.save(partial.join(WEIGHTS))
        .context("saving checkpoint weights")?;
    let optimizer_state = optimizer.state_tensors();
    Tensor::write_safetensors(&optimizer_state, partial.join(OPTIMIZER))
        .context("saving optimizer state")?;
    std::fs::write(partial.join(STATE), serde_json::to_string_pretty(state)?)?;
    if done.exists() {
        std::fs::remove_dir_all(&done)?;
    }
    std::fs::rename(&partial, &done)?;
    let mut all = list(root)?;
    while all.len() > KEEP {
        let (_, oldest) = all.remove(0);
        std::fs::remove_dir_all(oldest)?;
    }
    Ok(done)
}

/// Complete checkpoints, oldest first.
fn list(root: &Path) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
            e.path().join(STATE).exists().then(|| (epoch, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Restores the latest checkpoint into `vs` and `optimizer`; `None` when there is none.
pub fn restore_latest(
    root: &Path,
    vs: &mut VarStore,
    optimizer: &mut Optimizer,
) -> anyhow::Result<Option<RunState>> {
    let Some((_, folder)) = list(root)?.pop() else {
        return Ok(None);
    };
    let state: RunState = serde_json::from_str(
        &std::fs::read_to_string(folder.join(STATE))
            .with_context(|| format!("reading {}", folder.join(STATE).display()))?,
    )
    .with_context(|| format!("parsing {}", folder.join(STATE).display()))?;
    vs.load(folder.join(WEIGHTS))
        .with_context(|| format!("loading checkpoint weights from {}", folder.display()))?;
    let named = Tensor::read_safetensors(folder.join(OPTIMIZER))
        .with_context(|| format!("loading optimizer state from {}", folder.display()))?;
    optimizer.load_state(named)?;
    Ok(Some(state))
}
