//! The CustomResourceDefinitions of the Voxel API, generated from the Rust types of
//! `voxel-crds`.
//!
//! `voxel crds` prints them; `voxel crds --output-dir charts/voxel/crds` writes the copies
//! committed with the Helm chart, and a test fails when those drift from the types.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;
use voxel_crds::{CrossValidation, Ensemble, Experiment, Model};

/// The first lines of every generated file.
const HEADER: &str = "# Generated from the voxel-crds types by `voxel crds`; do not edit.\n\
                      # Regenerate with `voxel crds --output-dir charts/voxel/crds`.\n";

/// Every CRD of the API, in a stable order: Experiment, CrossValidation, Ensemble, Model.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        Experiment::crd(),
        CrossValidation::crd(),
        Ensemble::crd(),
        Model::crd(),
    ]
    .into_iter()
    .map(unwrap_descriptions)
    .collect()
}

/// The file a CRD is written to: its name, for example `experiments.voxel.dev.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    let name = crd.metadata.name.as_deref().unwrap_or("unnamed");
    format!("{name}.yaml")
}

/// Every CRD as `(file name, YAML)`, in the order of [`crds`].
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| (file_name(crd), format!("{HEADER}{}", to_yaml(crd))))
        .collect()
}

/// Every CRD as one multi-document YAML stream, in the order of [`crds`].
pub fn crd_yaml() -> String {
    let documents: Vec<String> = crds().iter().map(to_yaml).collect();
    format!("{HEADER}---\n{}", documents.join("---\n"))
}

/// Writes one file per CRD into `dir` (created if missing) and returns their paths.
pub fn write_crd_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    crd_files()
        .into_iter()
        .map(|(name, yaml)| {
            let path = dir.join(name);
            std::fs::write(&path, yaml)?;
            Ok(path)
        })
        .collect()
}

fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // A CRD is plain data (strings, numbers, maps); serialising it cannot fail.
    serde_yaml::to_string(crd).expect("a CRD serialises to YAML")
}

/// Joins the lines of every description into paragraphs, and gives integers OpenAPI formats. Doc comments are wrapped at 100
/// columns; `kubectl explain` wraps text to the terminal itself, so line breaks inside a
/// paragraph would only break its lines in odd places.
fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    // The CRD came from the types and goes back into them unchanged but for text.
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises to JSON");
    unwrap_in(&mut value);
    serde_json::from_value(value).expect("a CRD with other descriptions is still a CRD")
}

fn unwrap_in(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = unwrap_text(text),
                    // schemars names Rust's unsigned widths; the API server knows only the
                    // OpenAPI formats and warns of others (the minimum of 0 stays).
                    Value::String(format) if key == "format" => {
                        if let Some(openapi) = openapi_format(format) {
                            *format = openapi.into();
                        }
                    }
                    _ => unwrap_in(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_in),
        _ => {}
    }
}

/// The OpenAPI integer format of a schemars one it does not know.
fn openapi_format(format: &str) -> Option<&'static str> {
    match format {
        "uint8" | "uint16" | "int8" | "int16" => Some("int32"),
        "uint32" | "uint64" | "uint" => Some("int64"),
        _ => None,
    }
}

fn unwrap_text(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_keep_paragraphs_but_not_line_breaks() {
        assert_eq!(
            unwrap_text("One line\nwrapped.\n\nSecond paragraph."),
            "One line wrapped.\n\nSecond paragraph."
        );
    }

    #[test]
    fn every_kind_is_generated_once_in_a_stable_order() {
        let names: Vec<String> = crd_files().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "experiments.voxel.dev.yaml",
                "crossvalidations.voxel.dev.yaml",
                "ensembles.voxel.dev.yaml",
                "models.voxel.dev.yaml",
            ]
        );
        assert_eq!(
            crd_yaml()
                .matches("\nkind: CustomResourceDefinition\n")
                .count(),
            4
        );
    }
}
