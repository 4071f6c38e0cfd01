//! Reading manifests: the same YAML a user applies to a cluster.
//!
//! A manifest holds one resource (multi-document YAML is not read). It is parsed by its `kind`
//! and validated with the same rules the API server applies. A relative
//! `spec.data.source.localPath` is kept as written: callers resolve it against the manifest's
//! folder.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::{
    CrossValidation, Ensemble, Experiment, Model, ValidationErrors, validation::validate_name,
};

/// The kinds a manifest may hold, in the order they are listed in messages.
pub const KINDS: [&str; 4] = ["Experiment", "CrossValidation", "Ensemble", "Model"];

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The YAML does not describe the expected resource.
    #[error("manifest {path} is not a valid {kind}: {source}")]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The kind it was read as.
        kind: &'static str,
        /// What the YAML parser said, with the line and column.
        source: serde_yaml::Error,
    },
    /// apiVersion or kind name another resource than the one expected.
    #[error(
        "manifest {path}: expected apiVersion {expected_api} and kind {expected_kind}, found {found_api} {found_kind}"
    )]
    WrongKind {
        /// The manifest file.
        path: PathBuf,
        /// `voxel.dev/v1alpha1`.
        expected_api: String,
        /// The kind expected.
        expected_kind: &'static str,
        /// The manifest's apiVersion (empty when missing).
        found_api: String,
        /// The manifest's kind (empty when missing).
        found_kind: String,
    },
    /// apiVersion or kind is not one of Voxel's.
    #[error(
        "manifest {path}: expected apiVersion {expected_api} and kind {}, found {found_api} {found_kind}",
        KINDS.join(", ")
    )]
    UnknownKind {
        /// The manifest file.
        path: PathBuf,
        /// `voxel.dev/v1alpha1`.
        expected_api: String,
        /// The manifest's apiVersion (empty when missing).
        found_api: String,
        /// The manifest's kind (empty when missing).
        found_kind: String,
    },
    /// A rule of the spec is violated.
    #[error("manifest {path}: {source}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// Every violated rule.
        source: ValidationErrors,
    },
}

/// A validated resource of any Voxel kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// One training run.
    Experiment(Box<Experiment>),
    /// k folds of one Experiment template.
    CrossValidation(Box<CrossValidation>),
    /// Trained models combined.
    Ensemble(Box<Ensemble>),
    /// A published model version.
    Model(Box<Model>),
}

impl Manifest {
    /// The resource's kind, as in [`KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Experiment(_) => "Experiment",
            Self::CrossValidation(_) => "CrossValidation",
            Self::Ensemble(_) => "Ensemble",
            Self::Model(_) => "Model",
        }
    }

    /// The resource's `metadata.name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        let metadata = match self {
            Self::Experiment(r) => &r.metadata,
            Self::CrossValidation(r) => &r.metadata,
            Self::Ensemble(r) => &r.metadata,
            Self::Model(r) => &r.metadata,
        };
        metadata.name.as_deref()
    }
}

/// Reads and validates a manifest of any Voxel kind.
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestError> {
    parse_manifest(&read(path)?, path)
}

/// Parses and validates a manifest of any Voxel kind; `path` is only used in messages.
pub fn parse_manifest(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let (found_api, found_kind) = header(text, path, "Voxel resource")?;
    let expected_api = api_version();
    let kind = KINDS.iter().find(|k| **k == found_kind);
    let (Some(kind), true) = (kind, found_api == expected_api) else {
        return Err(ManifestError::UnknownKind {
            path: path.to_owned(),
            expected_api,
            found_api,
            found_kind,
        });
    };
    let invalid = |source| ManifestError::Invalid {
        path: path.to_owned(),
        source,
    };
    Ok(match *kind {
        "Experiment" => {
            let resource: Experiment = parse(text, path, kind)?;
            validate_name(resource.metadata.name.as_deref()).map_err(invalid)?;
            resource.spec.validate().map_err(invalid)?;
            Manifest::Experiment(Box::new(resource))
        }
        "CrossValidation" => {
            let resource: CrossValidation = parse(text, path, kind)?;
            validate_name(resource.metadata.name.as_deref()).map_err(invalid)?;
            resource.spec.validate().map_err(invalid)?;
            Manifest::CrossValidation(Box::new(resource))
        }
        "Ensemble" => {
            let resource: Ensemble = parse(text, path, kind)?;
            validate_name(resource.metadata.name.as_deref()).map_err(invalid)?;
            resource.spec.validate().map_err(invalid)?;
            Manifest::Ensemble(Box::new(resource))
        }
        _ => {
            let resource: Model = parse(text, path, kind)?;
            validate_name(resource.metadata.name.as_deref()).map_err(invalid)?;
            resource.spec.validate().map_err(invalid)?;
            Manifest::Model(Box::new(resource))
        }
    })
}

/// Reads and validates an Experiment manifest.
pub fn read_experiment(path: &Path) -> Result<Experiment, ManifestError> {
    parse_experiment(&read(path)?, path)
}

/// Parses and validates an Experiment manifest; `path` is only used in messages.
pub fn parse_experiment(text: &str, path: &Path) -> Result<Experiment, ManifestError> {
    let (found_api, found_kind) = header(text, path, "Experiment")?;
    let expected_api = api_version();
    if found_api != expected_api || found_kind != "Experiment" {
        return Err(ManifestError::WrongKind {
            path: path.to_owned(),
            expected_api,
            expected_kind: "Experiment",
            found_api,
            found_kind,
        });
    }
    let experiment: Experiment = parse(text, path, "Experiment")?;
    validate_name(experiment.metadata.name.as_deref()).map_err(|source| {
        ManifestError::Invalid {
            path: path.to_owned(),
            source,
        }
    })?;
    experiment
        .spec
        .validate()
        .map_err(|source| ManifestError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    Ok(experiment)
}

/// The fields of a manifest that no Voxel type reads, as dotted paths
/// (`spec.training.learningrate`), for warnings: a mistyped field silently takes its default,
/// and the API server drops it as well (`kubectl apply` warns of it). Empty when the manifest
/// does not parse or is of no Voxel kind; those are errors [`parse_manifest`] reports.
pub fn unknown_fields(text: &str) -> Vec<String> {
    fn ignored<T: DeserializeOwned>(text: &str) -> Vec<String> {
        let mut paths = Vec::new();
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let parsed: Result<T, _> =
            serde_ignored::deserialize(deserializer, |path| paths.push(path.to_string()));
        if parsed.is_err() {
            return Vec::new();
        }
        // The derived types read apiVersion and kind through `header`, not as fields.
        paths.retain(|p| p != "apiVersion" && p != "kind");
        paths
    }
    let Ok((_, kind)) = header(text, Path::new(""), "Voxel resource") else {
        return Vec::new();
    };
    match kind.as_str() {
        "Experiment" => ignored::<Experiment>(text),
        "CrossValidation" => ignored::<CrossValidation>(text),
        "Ensemble" => ignored::<Ensemble>(text),
        "Model" => ignored::<Model>(text),
        _ => Vec::new(),
    }
}

fn api_version() -> String {
    format!("{}/{}", crate::GROUP, crate::VERSION)
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The manifest's apiVersion and kind, empty when missing.
fn header(text: &str, path: &Path, kind: &'static str) -> Result<(String, String), ManifestError> {
    let header: serde_yaml::Value = parse(text, path, kind)?;
    let field = |name: &str| {
        header
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    Ok((field("apiVersion"), field("kind")))
}

/// Parses the whole text (not an already parsed value) so that errors carry line numbers.
fn parse<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    kind: &'static str,
) -> Result<T, ManifestError> {
    serde_yaml::from_str(text).map_err(|source| ManifestError::Parse {
        path: path.to_owned(),
        kind,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/hippocampus/experiment.yaml"
        ))
        .unwrap();
        assert_eq!(unknown_fields(&text), Vec::<String>::new());
        let typo = text
            .replace("learningRate:", "learningrate:")
            .replace("metadata:\n", "metadata:\n  labelz: {a: b}\n");
        assert_eq!(
            unknown_fields(&typo),
            vec![
                "metadata.labelz".to_string(),
                "spec.training.optimizer.learningrate".to_string()
            ]
        );
    }

    const ENSEMBLE: &str = r#"
apiVersion: voxel.dev/v1alpha1
kind: Ensemble
metadata: {name: pair}
spec:
  members:
    - {model: hippocampus, version: 1}
    - {model: hippocampus, alias: production}
  data:
    source: {localPath: data}
    dataset: dataset.csv
    split: {testFraction: 0.1, seed: 7}
"#;

    #[test]
    fn a_manifest_is_read_by_its_kind() {
        let manifest = parse_manifest(ENSEMBLE, Path::new("e.yaml")).unwrap();
        assert_eq!(manifest.kind(), "Ensemble");
        assert_eq!(manifest.name(), Some("pair"));
        let Manifest::Ensemble(ensemble) = manifest else {
            panic!("not an ensemble");
        };
        assert_eq!(ensemble.spec.members.len(), 2);
        assert_eq!(
            ensemble.spec.data.source.local_path.as_deref(),
            Some("data"),
            "a relative localPath stays relative"
        );
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_list_of_kinds() {
        let text = ENSEMBLE.replace("kind: Ensemble", "kind: Sweep");
        let message = parse_manifest(&text, Path::new("e.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "manifest e.yaml: expected apiVersion voxel.dev/v1alpha1 and kind Experiment, \
             CrossValidation, Ensemble, Model, found voxel.dev/v1alpha1 Sweep"
        );
        let text = ENSEMBLE.replace("voxel.dev/v1alpha1", "voxel.dev/v2");
        let message = parse_manifest(&text, Path::new("e.yaml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("found voxel.dev/v2 Ensemble"), "{message}");
    }

    #[test]
    fn a_manifest_of_another_kind_is_not_an_experiment() {
        let message = parse_experiment(ENSEMBLE, Path::new("e.yaml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("kind Experiment, found voxel.dev/v1alpha1 Ensemble"));
    }

    #[test]
    fn parse_errors_name_the_kind_and_the_line() {
        let text = ENSEMBLE
            .replace("combine", "x")
            .replace("  data:", "  combine: Median\n  data:");
        let message = parse_manifest(&text, Path::new("e.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("not a valid Ensemble") && message.contains("Median"),
            "{message}"
        );
        assert!(message.contains("line"), "{message}");
    }
}
