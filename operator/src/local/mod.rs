//! Local mode: the same manifests run on this machine, with trainer runs as local processes and
//! a directory as the model registry.
//!
//! A run keeps everything in `<state>/runs/<kind>/<name>/`: the manifests it gave the trainer,
//! each trainer's output folder and log, the comparison and the report. Rerunning a manifest
//! reuses what already finished (a fold whose manifest is unchanged is not trained again) and
//! resumes interrupted trainers from their last checkpoint.

pub mod cross_validation;
pub mod dataset;
pub mod ensemble;
pub mod experiment;
pub mod process;
pub mod progress;
pub mod report;
pub mod stages;

use std::path::{Path, PathBuf};

use voxel_crds::manifest::Manifest;

pub use report::RunReport;

/// Exit code of invalid input data (sysexits `EX_DATAERR`).
pub const EXIT_BAD_DATA: u8 = 65;
/// Exit code of an invalid manifest (sysexits `EX_CONFIG`).
pub const EXIT_BAD_CONFIG: u8 = 78;

/// A failure of a local run, classified as the trainer classifies its own.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The manifest or what it refers to is invalid: rerunning cannot help.
    #[error("{0}")]
    Config(String),
    /// The data is invalid: rerunning cannot help.
    #[error("{0}")]
    Data(String),
    /// Anything else (a trainer that failed for a reason that may pass, I/O).
    #[error("{0}")]
    Other(String),
}

impl LocalError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Config(_) => EXIT_BAD_CONFIG,
            LocalError::Data(_) => EXIT_BAD_DATA,
            LocalError::Other(_) => 1,
        }
    }
}

impl LocalError {
    /// A trainer run that ended with `code`, classified as the trainer classified it: invalid
    /// data (65) and configuration (78) keep their meaning, anything else may pass on retry.
    pub fn from_trainer(code: Option<i32>, message: String) -> Self {
        match code.and_then(|c| u8::try_from(c).ok()) {
            Some(EXIT_BAD_DATA) => LocalError::Data(message),
            Some(EXIT_BAD_CONFIG) => LocalError::Config(message),
            _ => LocalError::Other(message),
        }
    }
}

impl From<crate::registry::RegistryError> for LocalError {
    fn from(e: crate::registry::RegistryError) -> Self {
        match e {
            crate::registry::RegistryError::Io { .. } => LocalError::Other(e.to_string()),
            _ => LocalError::Config(e.to_string()),
        }
    }
}

impl From<dataset::DatasetError> for LocalError {
    fn from(e: dataset::DatasetError) -> Self {
        LocalError::Data(e.to_string())
    }
}

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |e| LocalError::Other(format!("{}: {e}", path.display()))
}

/// Where and how local runs happen.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Folder of run state (`<state>/runs/…`), by default `.voxel` in the current folder.
    pub state_dir: PathBuf,
    /// Folder of the model registry, by default `<state>/registry`.
    pub registry: PathBuf,
    /// The `voxel-trainer` executable.
    pub trainer: PathBuf,
    /// CPU cores to share between the trainers running at once.
    pub cores: usize,
    /// Retries of a trainer run that failed for a reason that may pass.
    pub retries: u32,
    /// Start from scratch: remove what an earlier run of the same manifest left.
    pub fresh: bool,
}

impl LocalOptions {
    /// The run folder of a resource.
    pub fn run_dir(&self, kind: &str, name: &str) -> PathBuf {
        self.state_dir
            .join("runs")
            .join(kind.to_ascii_lowercase())
            .join(name)
    }

    /// The run folder of a resource, created if missing and emptied first with `--fresh`.
    pub(crate) fn prepare_run_dir(&self, kind: &str, name: &str) -> Result<PathBuf, LocalError> {
        // Manifests are validated before they get here; this guards the removal below.
        if !voxel_crds::validation::is_subdomain(name) {
            return Err(LocalError::Config(format!(
                "metadata.name: {}, found {name:?}",
                voxel_crds::validation::SUBDOMAIN_MESSAGE
            )));
        }
        let run_dir = self.run_dir(kind, name);
        if self.fresh && run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(io_error(&run_dir))?;
        }
        std::fs::create_dir_all(&run_dir).map_err(io_error(&run_dir))?;
        Ok(run_dir)
    }
}

/// Runs a manifest of any runnable kind and returns what it produced.
pub fn run_manifest(path: &Path, options: &LocalOptions) -> Result<RunReport, LocalError> {
    let manifest =
        voxel_crds::manifest::read_manifest(path).map_err(|e| LocalError::Config(e.to_string()))?;
    let manifest_text = std::fs::read(path).map_err(io_error(path))?;
    let source = stages::Source {
        manifest_path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        manifest_digest: crate::digest::digest_bytes(&manifest_text),
    };
    match manifest {
        Manifest::Experiment(experiment) => experiment::run(&experiment, &source, options),
        Manifest::CrossValidation(cv) => cross_validation::run(&cv, &source, options),
        Manifest::Ensemble(ensemble) => ensemble::run(&ensemble, &source, options),
        Manifest::Model(_) => Err(LocalError::Config(format!(
            "{}: a Model is what a run publishes; it cannot be run",
            path.display()
        ))),
    }
}

/// Resolves `spec.data.source.localPath` against the manifest's folder, as the trainer does.
pub(crate) fn data_root(
    source: &voxel_crds::experiment::DataSource,
    manifest: &Path,
) -> Result<PathBuf, LocalError> {
    let local = source.local_path.as_deref().ok_or_else(|| {
        LocalError::Config(
            "spec.data.source: local mode reads data from localPath; a persistentVolumeClaim \
             exists only in a cluster"
                .into(),
        )
    })?;
    let local = Path::new(local);
    let root = if local.is_absolute() {
        local.to_path_buf()
    } else {
        manifest.parent().unwrap_or(Path::new(".")).join(local)
    };
    Ok(std::path::absolute(&root).unwrap_or(root))
}
