//! The stages every kind of run ends with: the comparison with the baseline, the publication of a
//! model version and the promotion of an alias.

use std::path::{Path, PathBuf};

use tracing::info;
use voxel_crds::{
    common::{CompareToSpec, PublishSpec},
    results::{Comparison, StructureSummary},
};

use super::{LocalError, io_error};
use crate::{
    compare::{CompareOptions, compare_tables},
    digest::digest_file,
    metrics_table::MetricsTable,
    publication::{self, Lineage, ModelContent},
    registry::{ModelReference, NewVersion, Published, Registry, VERSION_METRICS, VersionSelector},
};

/// The manifest a run came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Absolute path of the manifest file.
    pub manifest_path: PathBuf,
    /// `sha256:<hex>` of the manifest file's bytes.
    pub manifest_digest: String,
}

/// What a finished run offers for comparison and publication.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Kind of the resource that produced it.
    pub kind: &'static str,
    /// Name of that resource.
    pub name: String,
    /// Per-subject test metrics (`metrics.csv` columns).
    pub metrics_csv: PathBuf,
    /// Per-structure summary of those metrics.
    pub summary: Vec<StructureSummary>,
    /// Weights and configuration: source file and path inside the version's artifacts.
    pub artifacts: Vec<(PathBuf, PathBuf)>,
    /// What the published model is (one network, or an ensemble of them).
    pub content: ModelContent,
    /// Digest of the dataset it was trained and tested on.
    pub dataset_digest: String,
    /// The training seed.
    pub seed: u64,
    /// The trainer runs it came from.
    pub runs: Vec<String>,
}

/// The outcome of a publication.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The model name.
    pub model: String,
    /// The version published (or found already published).
    pub version: u32,
    /// False when the same publication existed already.
    pub new: bool,
    /// Digest of the artifacts.
    pub digest: String,
    /// The alias asked for, and whether it moved (`Err` holds why not).
    pub promotion: Option<(String, Result<(), String>)>,
}

/// The comparison options a `compareTo` asks for.
pub fn compare_options(spec: &CompareToSpec) -> CompareOptions {
    CompareOptions {
        primary_metric: spec.metric,
        alpha: spec.alpha,
        bootstrap_samples: spec.bootstrap_samples as usize,
        seed: spec.seed,
    }
}

fn baseline_reference(spec: &CompareToSpec) -> ModelReference {
    let selector = match (&spec.version, &spec.alias) {
        (Some(version), _) => VersionSelector::Version(*version),
        (None, Some(alias)) => VersionSelector::Alias(alias.clone()),
        (None, None) => VersionSelector::Latest,
    };
    ModelReference {
        model: spec.model.clone(),
        selector,
    }
}

fn read_table(path: &Path) -> Result<MetricsTable, LocalError> {
    MetricsTable::read(path).map_err(|e| LocalError::Data(e.to_string()))
}

/// Resolves the baseline the spec names, so that a reference to a model, version or alias that
/// does not exist fails before anything trains.
pub fn check_baseline(spec: Option<&CompareToSpec>, registry: &Registry) -> Result<(), LocalError> {
    if let Some(spec) = spec {
        resolve_baseline(spec, registry)?;
    }
    Ok(())
}

fn resolve_baseline(spec: &CompareToSpec, registry: &Registry) -> Result<u32, LocalError> {
    registry.resolve(&baseline_reference(spec)).map_err(|e| {
        LocalError::Config(format!("spec.compareTo: {e} (publish the baseline first)"))
    })
}

/// Compares the candidate with the baseline the spec names, from the registry.
pub fn compare_with_baseline(
    candidate: &Candidate,
    spec: Option<&CompareToSpec>,
    registry: &Registry,
) -> Result<Option<Comparison>, LocalError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let reference = baseline_reference(spec);
    let version = resolve_baseline(spec, registry)?;
    let baseline = read_table(
        &registry
            .version_dir(&spec.model, version)
            .join(VERSION_METRICS),
    )?;
    let current = read_table(&candidate.metrics_csv)?;
    let comparison = compare_tables(
        &baseline,
        &current,
        &format!("{}:{version}", spec.model),
        &format!("{} {}", candidate.kind, candidate.name),
        &compare_options(spec),
    )
    .map_err(|e| LocalError::Data(format!("spec.compareTo: {e}")))?;
    info!(baseline = %reference, version, "compared with the baseline");
    Ok(Some(comparison))
}

/// Publishes the candidate as a new version of the model the spec names, then moves the alias
/// of `publish.promote` if allowed.
pub fn publish(
    candidate: &Candidate,
    comparison: Option<&Comparison>,
    spec: Option<&PublishSpec>,
    source: &Source,
    registry: &Registry,
    trainer: &Path,
) -> Result<Option<Publication>, LocalError> {
    let Some(spec) = spec else {
        return Ok(None);
    };

    let mut files: Vec<(PathBuf, PathBuf)> = candidate
        .artifacts
        .iter()
        .map(|(source, relative)| {
            (
                source.clone(),
                Path::new(crate::registry::ARTIFACTS).join(relative),
            )
        })
        .collect();
    let listed: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(source, path)| (source.clone(), path.to_string_lossy().to_string()))
        .collect();
    let (artifact_files, artifact_digest) =
        publication::digest_artifacts(&listed).map_err(|(path, e)| io_error(&path)(e))?;
    files.push((
        candidate.metrics_csv.clone(),
        PathBuf::from(VERSION_METRICS),
    ));

    let lineage = Lineage {
        source_kind: candidate.kind.to_string(),
        source_name: candidate.name.clone(),
        source_uid: None,
        trainer_image: None,
        manifest_path: source.manifest_path.display().to_string(),
        manifest_digest: source.manifest_digest.clone(),
        dataset_digest: candidate.dataset_digest.clone(),
        seed: candidate.seed,
        trainer_version: trainer_version(trainer),
        git_commit: git_commit(&source.manifest_path),
        runs: candidate.runs.clone(),
    };
    // The same manifest, weights and metrics published twice make one version.
    let (metrics_digest, _) =
        digest_file(&candidate.metrics_csv).map_err(io_error(&candidate.metrics_csv))?;
    let publish_key = format!(
        "{}\n{artifact_digest}\n{metrics_digest}\n",
        source.manifest_digest
    );
    let render = |version: u32| {
        publication::model_manifest(
            &spec.model,
            version,
            &candidate.content,
            &artifact_files,
            &artifact_digest,
            &candidate.summary,
            comparison,
            &lineage,
        )
    };
    let published = registry.publish(&NewVersion {
        model: &spec.model,
        publish_key: &publish_key,
        files,
        render: &render,
    })?;
    let version = published.version();
    info!(model = %spec.model, version, new = matches!(published, Published::New(_)), "published");

    let promotion = match &spec.promote {
        None => None,
        // Rerunning an old manifest must not pull an alias back to the version it made then.
        Some(promote) if matches!(published, Published::Existing(_)) => Some((
            promote.alias.clone(),
            Err(format!(
                "version {version} was published before; an alias moves only when a version is \
                 first published"
            )),
        )),
        Some(promote) => {
            let gated = promote.gated;
            let outcome = registry.move_alias(&spec.model, &promote.alias, version, |holder| {
                gate(registry, &spec.model, holder, version, candidate, gated)
            })?;
            Some((promote.alias.clone(), outcome.map(|_| ())))
        }
    };
    Ok(Some(Publication {
        model: spec.model.clone(),
        version,
        new: matches!(published, Published::New(_)),
        digest: artifact_digest,
        promotion,
    }))
}

/// The gate of a promotion: the candidate may replace the alias's holder unless it is
/// significantly worse than the holder on some structure.
fn gate(
    registry: &Registry,
    model: &str,
    holder: Option<u32>,
    version: u32,
    candidate: &Candidate,
    gated: bool,
) -> Result<(), String> {
    let holder = match holder {
        Some(holder) if gated && holder != version => holder,
        _ => return Ok(()),
    };
    let holder_metrics = registry.version_dir(model, holder).join(VERSION_METRICS);
    let baseline = MetricsTable::read(&holder_metrics).map_err(|e| e.to_string())?;
    let current = MetricsTable::read(&candidate.metrics_csv).map_err(|e| e.to_string())?;
    let comparison = compare_tables(
        &baseline,
        &current,
        &format!("{model}:{holder}"),
        &format!("{model}:{version}"),
        &CompareOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    publication::promotion_allowed(&comparison, holder)
}

/// `voxel-trainer --version`, or `unknown` when it cannot be asked.
fn trainer_version(trainer: &Path) -> String {
    std::process::Command::new(trainer)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The commit checked out where the manifest lives, when it lives in a Git checkout.
fn git_commit(manifest: &Path) -> Option<String> {
    let dir = manifest.parent()?;
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|commit| !commit.is_empty())
}
