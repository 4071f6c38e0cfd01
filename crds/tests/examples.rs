//! Every example manifest shipped in `examples/` parses and passes validation, whatever its
//! kind.

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

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut found = Vec::new();
    manifests(&root, &mut found);
    assert!(!found.is_empty(), "no manifests under {}", root.display());
    found.sort();
    found
}

#[test]
fn every_example_manifest_is_valid() {
    for path in examples() {
        if let Err(e) = voxel_crds::manifest::read_manifest(&path) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_examples_cover_experiments_and_cross_validations() {
    let kinds: Vec<&str> = examples()
        .iter()
        .map(|path| voxel_crds::manifest::read_manifest(path).unwrap().kind())
        .collect();
    for kind in ["Experiment", "CrossValidation"] {
        assert!(kinds.contains(&kind), "no example of kind {kind}");
    }
}
