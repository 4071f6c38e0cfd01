//! Fixtures shared by the trainer's integration tests: small real datasets built from the
//! hippocampus MRI shipped in `examples/`, in temporary folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The example data folder (real MRI, see `examples/hippocampus/data/README.md`).
pub fn example_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hippocampus/data")
}

/// The first `n` subjects of the example dataset, in CSV order.
pub fn example_subjects(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(example_data().join("dataset_small.csv")).unwrap();
    let mut ids: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        let id = line.split(',').next().unwrap().to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.truncate(n);
    ids
}

/// Copies the image and both masks of `subjects` into `dir` and writes `dir/dataset.csv`.
pub fn copy_subjects(dir: &Path, subjects: &[String]) -> PathBuf {
    let data = example_data();
    let mut csv = String::from("subject,filePath,channel\n");
    for id in subjects {
        for (channel, rel) in [
            ("mr", format!("images/{id}.nii.gz")),
            ("anterior", format!("masks/{id}_anterior.nii.gz")),
            ("posterior", format!("masks/{id}_posterior.nii.gz")),
        ] {
            let target = dir.join(&rel);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(data.join(&rel), &target).unwrap();
            csv += &format!("{id},{rel},{channel}\n");
        }
    }
    let path = dir.join("dataset.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// A small, fast Experiment over `dataset.csv` in `dir` (relative `localPath: .`).
pub fn tiny_experiment(dir: &Path, epochs: u32, extra_training: &str) -> PathBuf {
    let manifest = format!(
        r#"apiVersion: voxel.dev/v1alpha1
kind: Experiment
metadata:
  name: tiny
spec:
  model:
    task: Segmentation
    architecture: UNet3D
    imageChannels: [mr]
    structures: [anterior, posterior]
    network: {{baseChannels: 4, levels: 2}}
    preprocessing:
      cropSize: [16, 16, 16]
      tileSize: [24, 32, 24]
  training:
    epochs: {epochs}
    batchSize: 2
    optimizer: {{type: Adam, learningRate: 0.01}}
    schedule: {{type: Cosine, warmupEpochs: 1}}
    seed: 3
    checkpointEveryEpochs: 1
{extra_training}  data:
    source: {{localPath: .}}
    dataset: dataset.csv
    split: {{testFraction: 0.25, validationFraction: 0.25, seed: 1}}
"#
    );
    let path = dir.join("experiment.yaml");
    std::fs::write(&path, manifest).unwrap();
    path
}

/// The trainer binary built for these tests.
pub fn trainer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxel-trainer"))
}
