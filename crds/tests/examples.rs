//! Every example manifest shipped in `examples/` parses and passes validation.

use std::path::{Path, PathBuf};

fn manifests(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            found.push(path);
        }
    }
}

#[test]
fn every_example_manifest_is_a_valid_experiment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut found = Vec::new();
    manifests(&root, &mut found);
    assert!(!found.is_empty(), "no manifests under {}", root.display());
    for path in found {
        if let Err(e) = voxel_crds::manifest::read_experiment(&path) {
            panic!("{e}");
        }
    }
}
