//! Publication decisions shared by the local registry and the cluster: the Model resource of a
//! new version, and whether an alias may move to it.

use voxel_crds::{
    common::Combine,
    experiment::ExperimentSpec,
    results::{Comparison, StructureSummary, Verdict},
};

/// What a published version contains.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelContent {
    /// One trained network.
    Single {
        /// Its resolved configuration.
        configuration: ExperimentSpec,
    },
    /// Several networks whose posteriors are combined.
    Ensemble {
        /// The configuration the members share (a cross-validation's template).
        configuration: ExperimentSpec,
        /// The members, by the name of the run or version they came from.
        members: Vec<String>,
        /// How their predictions are combined.
        combine: Combine,
    },
}

/// One file of a published version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Path inside the version.
    pub path: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Where a published version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Kind of the resource that produced it.
    pub source_kind: String,
    /// Name of that resource.
    pub source_name: String,
    /// UID of that resource (cluster mode).
    pub source_uid: Option<String>,
    /// Image of the trainer that produced it (cluster mode).
    pub trainer_image: Option<String>,
    /// Where its manifest was read (local mode).
    pub manifest_path: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the dataset CSV and every file it lists.
    pub dataset_digest: String,
    /// The training seed.
    pub seed: u64,
    /// `voxel-trainer --version`.
    pub trainer_version: String,
    /// The Git commit checked out where the manifest lives, if any.
    pub git_commit: Option<String>,
    /// The trainer runs it came from.
    pub runs: Vec<String>,
}

/// The files of a version, each `(file to read, path inside the version)`, with their digests,
/// and the digest of them all: SHA-256 over every path and file digest in order.
pub fn digest_artifacts(
    files: &[(std::path::PathBuf, String)],
) -> Result<(Vec<ArtifactFile>, String), (std::path::PathBuf, std::io::Error)> {
    use sha2::{Digest, Sha256};
    let mut overall = Sha256::new();
    let mut listed = Vec::new();
    for (source, path) in files {
        let (digest, bytes) =
            crate::digest::digest_file(source).map_err(|e| (source.clone(), e))?;
        overall.update(path.as_bytes());
        overall.update(digest.as_bytes());
        listed.push(ArtifactFile {
            path: path.clone(),
            digest,
            bytes,
        });
    }
    Ok((listed, crate::digest::format_digest(overall)))
}

/// Whether an alias may move from `holder` to a candidate, given the comparison of the candidate
/// with the holder: only when no structure is significantly worse.
pub fn promotion_allowed(comparison: &Comparison, holder: u32) -> Result<(), String> {
    let worse: Vec<&str> = comparison
        .verdicts
        .iter()
        .filter(|v| v.verdict == Verdict::Worse)
        .map(|v| v.structure.as_str())
        .collect();
    if worse.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "significantly worse than version {holder} on {} ({})",
            worse.join(", "),
            comparison.primary_metric
        ))
    }
}

/// The Model resource of a new version, as YAML, with the manifest path in an annotation.
#[allow(clippy::too_many_arguments)]
pub fn model_manifest(
    model: &str,
    version: u32,
    content: &ModelContent,
    files: &[ArtifactFile],
    artifact_digest: &str,
    metrics: &[StructureSummary],
    comparison: Option<&Comparison>,
    lineage: &Lineage,
) -> Result<String, String> {
    let mut resource = model_resource(
        model,
        version,
        content,
        &format!("{model}/versions/{version}"),
        files,
        artifact_digest,
        metrics,
        comparison,
        lineage,
    )?;
    resource.metadata.annotations = Some(
        [(
            "voxel.dev/manifest-path".to_string(),
            lineage.manifest_path.clone(),
        )]
        .into(),
    );
    serde_yaml::to_string(&resource).map_err(|e| e.to_string())
}

/// The Model resource of a new version whose artifacts are at `location`.
#[allow(clippy::too_many_arguments)]
pub fn model_resource(
    model: &str,
    version: u32,
    content: &ModelContent,
    location: &str,
    files: &[ArtifactFile],
    artifact_digest: &str,
    metrics: &[StructureSummary],
    comparison: Option<&Comparison>,
    lineage: &Lineage,
) -> Result<voxel_crds::Model, String> {
    use voxel_crds::model::{
        ArtifactFileSpec, ArtifactSpec, EnsembleConfiguration, LineageSource, LineageSpec, Model,
        ModelConfiguration, ModelVersionSpec, SourceKind, model_object_name,
    };
    let kind = match lineage.source_kind.as_str() {
        "Experiment" => SourceKind::Experiment,
        "CrossValidation" => SourceKind::CrossValidation,
        "Ensemble" => SourceKind::Ensemble,
        other => return Err(format!("unknown source kind {other}")),
    };
    let configuration = match content {
        ModelContent::Single { configuration } => ModelConfiguration {
            experiment: Some(configuration.clone()),
            ensemble: None,
        },
        ModelContent::Ensemble {
            configuration,
            members,
            combine,
        } => ModelConfiguration {
            experiment: None,
            ensemble: Some(EnsembleConfiguration {
                members: members.clone(),
                combine: *combine,
                experiment: Some(configuration.clone()),
                postprocessing: None,
            }),
        },
    };
    let spec = ModelVersionSpec {
        model_name: model.to_string(),
        version,
        configuration,
        artifact: ArtifactSpec {
            location: location.to_string(),
            digest: artifact_digest.to_string(),
            files: files
                .iter()
                .map(|f| ArtifactFileSpec {
                    path: f.path.clone(),
                    digest: f.digest.clone(),
                    bytes: f.bytes,
                })
                .collect(),
        },
        metrics: metrics.to_vec(),
        mean_dice: voxel_crds::common::headline_dice(metrics),
        comparison: comparison.cloned(),
        lineage: LineageSpec {
            source: LineageSource {
                kind,
                name: lineage.source_name.clone(),
                uid: lineage.source_uid.clone(),
            },
            manifest_digest: lineage.manifest_digest.clone(),
            dataset_digest: lineage.dataset_digest.clone(),
            seed: lineage.seed,
            trainer_version: lineage.trainer_version.clone(),
            trainer_image: lineage.trainer_image.clone(),
            git_commit: lineage.git_commit.clone(),
            runs: lineage.runs.clone(),
        },
        published_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    Ok(Model::new(&model_object_name(model, version), spec))
}

#[cfg(test)]
mod tests {
    use voxel_crds::results::StructureVerdict;

    use super::*;

    fn comparison(verdicts: &[(&str, Verdict)]) -> Comparison {
        Comparison {
            baseline: "hippocampus:1".into(),
            candidate: "hippocampus:2".into(),
            primary_metric: "dice".into(),
            alpha: 0.05,
            verdicts: verdicts
                .iter()
                .map(|(structure, verdict)| StructureVerdict {
                    structure: structure.to_string(),
                    verdict: *verdict,
                })
                .collect(),
            tests: Vec::new(),
        }
    }

    #[test]
    fn an_alias_moves_to_a_candidate_that_is_not_worse() {
        let c = comparison(&[
            ("anterior", Verdict::Better),
            ("posterior", Verdict::NoSignificantDifference),
        ]);
        assert_eq!(promotion_allowed(&c, 1), Ok(()));
        let c = comparison(&[("anterior", Verdict::InsufficientData)]);
        assert_eq!(promotion_allowed(&c, 1), Ok(()));
    }

    #[test]
    fn an_alias_stays_when_the_candidate_is_worse_on_any_structure() {
        let c = comparison(&[("anterior", Verdict::Better), ("posterior", Verdict::Worse)]);
        assert_eq!(
            promotion_allowed(&c, 3),
            Err("significantly worse than version 3 on posterior (dice)".to_string())
        );
    }
}
