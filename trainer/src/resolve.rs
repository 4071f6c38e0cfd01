//! The resolved configuration: the manifest with every default written out and the data
//! location made absolute, saved next to the results so that they can be traced and reused.

use std::path::{Path, PathBuf};

use voxel_crds::{Experiment, experiment::DataSource};

use crate::{error::bad_config, outputs};

/// The dataset CSV an Experiment points to. `data_root` (the mount path in a trainer pod)
/// overrides `spec.data.source`; a relative `localPath` is relative to the manifest's folder.
pub fn resolved_dataset_path(
    experiment: &Experiment,
    manifest: &Path,
    data_root: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let source = &experiment.spec.data.source;
    let root = match (data_root, &source.local_path) {
        (Some(root), _) => root.to_path_buf(),
        (None, Some(local)) => {
            let local = Path::new(local);
            if local.is_absolute() {
                local.to_path_buf()
            } else {
                manifest.parent().unwrap_or(Path::new(".")).join(local)
            }
        }
        (None, None) => {
            return Err(bad_config(
                "spec.data.source: only localPath can be read directly; for a \
                 persistentVolumeClaim pass --data-root with the volume's mount path",
            ));
        }
    };
    let root = std::path::absolute(&root).unwrap_or(root);
    Ok(root.join(&experiment.spec.data.dataset))
}

/// The Experiment with the data source replaced by the absolute folder of `dataset_path`'s
/// root, so that the saved copy works from anywhere.
pub fn resolve(experiment: &Experiment, dataset_path: &Path) -> Experiment {
    let mut resolved = experiment.clone();
    let dataset = Path::new(&experiment.spec.data.dataset);
    // Strip the dataset's own relative path to recover the root it was joined to.
    let mut root = dataset_path.to_path_buf();
    for _ in dataset.components() {
        root.pop();
    }
    resolved.spec.data.source = DataSource {
        local_path: Some(root.display().to_string()),
        persistent_volume_claim: None,
    };
    resolved.metadata.managed_fields = None;
    resolved
}

/// Writes the resolved configuration into `output`, or checks that the one already there (from
/// an interrupted run being resumed) describes the same run.
pub fn write_or_check(resolved: &Experiment, output: &Path) -> anyhow::Result<()> {
    let path = output.join(outputs::RESOLVED_CONFIG);
    if path.exists() {
        let previous = voxel_crds::manifest::read_experiment(&path).map_err(|e| {
            bad_config(format!(
                "output folder {}: cannot read the previous run: {e}",
                output.display()
            ))
        })?;
        // The run is its model, training and data. What happens around it (where and how pods
        // run, retries, deadlines, the comparison, the publication) may change between
        // attempts: more memory after an OOMKilled attempt must not make the next one refuse
        // to resume.
        let training_part = |spec: &voxel_crds::ExperimentSpec| {
            (spec.model.clone(), spec.training.clone(), spec.data.clone())
        };
        if training_part(&previous.spec) != training_part(&resolved.spec) {
            return Err(bad_config(format!(
                "output folder {} holds a run of a different configuration (model, training or \
                 data); choose a new folder or delete it (`voxel run --fresh` starts over)",
                output.display()
            )));
        }
        return Ok(());
    }
    let text = serde_yaml::to_string(resolved)?;
    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
