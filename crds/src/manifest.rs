//! Reading manifests: the same YAML a user applies to a cluster.

use std::path::{Path, PathBuf};

use crate::{Experiment, ValidationErrors};

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML does not describe the expected resource.
    #[error("manifest {path} is not a valid {kind}: {source}")]
    Parse {
        path: PathBuf,
        kind: &'static str,
        source: serde_yaml::Error,
    },
    /// apiVersion or kind name another resource.
    #[error(
        "manifest {path}: expected apiVersion {expected_api} and kind {expected_kind}, found {found_api} {found_kind}"
    )]
    WrongKind {
        path: PathBuf,
        expected_api: String,
        expected_kind: &'static str,
        found_api: String,
        found_kind: String,
    },
    /// A rule of the spec is violated.
    #[error("manifest {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: ValidationErrors,
    },
}

/// Reads and validates an Experiment manifest.
pub fn read_experiment(path: &Path) -> Result<Experiment, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_experiment(&text, path)
}

/// Parses and validates an Experiment manifest; `path` is only used in messages.
pub fn parse_experiment(text: &str, path: &Path) -> Result<Experiment, ManifestError> {
    let header: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            kind: "Experiment",
            source,
        })?;
    let found_api = header
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let found_kind = header
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let expected_api = format!("{}/{}", crate::GROUP, crate::VERSION);
    if found_api != expected_api || found_kind != "Experiment" {
        return Err(ManifestError::WrongKind {
            path: path.to_owned(),
            expected_api,
            expected_kind: "Experiment",
            found_api,
            found_kind,
        });
    }
    // Parsed again from the text (not from `header`) so that errors carry line numbers.
    let experiment: Experiment =
        serde_yaml::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            kind: "Experiment",
            source,
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
