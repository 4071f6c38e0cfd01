//! What every kind of finished run ends with in the cluster: its per-subject metrics read from
//! the artifact claim, the comparison with a baseline Model, the publication of a Model version
//! and the promotion of an alias. Experiments and Ensembles share it, as local mode's runs share
//! `local/stages.rs`.

use std::path::PathBuf;

use kube::ResourceExt;
use tracing::info;
use voxel_crds::{
    common::{CompareToSpec, PublishSpec},
    results::Comparison,
};

use super::{
    experiment::{Context, ReconcileError},
    models::{self, ANNOTATION_METRICS},
};
use crate::{
    aggregate::summarize,
    compare::compare_tables,
    local::dataset::dataset_digest,
    metrics_table::MetricsTable,
    publication::{Lineage, ModelContent, digest_artifacts, model_resource},
};

/// A finished run, as the comparison and the publication see it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The resource a published version comes from: kind, name and UID.
    pub source: (&'static str, String, Option<String>),
    /// The artifact claim holding its results.
    pub claim: String,
    /// The folder in the claim with its per-subject `metrics.csv`.
    pub output: String,
    /// The folders in the claim of its networks (`model.safetensors`, `experiment.yaml`).
    pub networks: Vec<String>,
    /// The runs it came from, for the lineage.
    pub names: Vec<String>,
    /// What a published version contains.
    pub content: ModelContent,
    /// The training seed.
    pub seed: u64,
    /// The baseline to compare with.
    pub compare_to: Option<CompareToSpec>,
    /// Where to publish.
    pub publish: Option<PublishSpec>,
    /// The Git commit of its manifest (annotation `voxel.dev/git-commit`).
    pub git_commit: Option<String>,
    /// `sha256:` of its spec.
    pub manifest_digest: String,
}

/// What a finished evaluation gives.
pub struct Results {
    /// Per-structure summary of the per-subject metrics.
    pub metrics: Vec<voxel_crds::results::StructureSummary>,
    /// The comparison with the baseline, if asked for.
    pub comparison: Option<Comparison>,
    /// The version published, if asked for.
    pub published: Option<Publication>,
}

/// A version published, and what became of the alias the spec promotes.
pub struct Publication {
    /// The model.
    pub model: String,
    /// The version.
    pub version: u32,
    /// False when the same results had been published before.
    pub new: bool,
    /// The alias, and whether it moved (`Err` holds why not).
    pub promotion: Option<(String, Result<(), String>)>,
}

impl Publication {
    /// What the `Published` condition says of it.
    pub fn message(&self) -> String {
        let (model, version) = (&self.model, self.version);
        let mut message = if self.new {
            format!("published {model} version {version}")
        } else {
            format!("{model} version {version} was published from these results before")
        };
        match &self.promotion {
            Some((alias, Ok(()))) => message.push_str(&format!("; alias {alias} points to it")),
            Some((alias, Err(reason))) => {
                message.push_str(&format!("; alias {alias} did not move: {reason}"))
            }
            None => {}
        }
        message
    }
}

/// Moves the alias of `publish.promote` to a version just published, unless it is gated and the
/// version is significantly worse than the alias's holder (the local registry's rule,
/// [`crate::publication::promotion_allowed`]).
async fn promote_alias(
    context: &Context,
    namespace: &str,
    model: &str,
    promote: &voxel_crds::common::PromoteSpec,
    published: &models::Published,
    candidate: &MetricsTable,
) -> Result<Result<(), String>, models::ModelError> {
    let version = published.version;
    if !published.new {
        // Re-running an old manifest must not pull an alias back to the version it made then.
        return Ok(Err(format!(
            "version {version} was published before; an alias moves only when a version is \
             first published"
        )));
    }
    let versions = models::versions(&context.client, namespace, model).await?;
    let gate = |holder: Option<u32>| -> Result<(), String> {
        let holder = match holder {
            Some(holder) if promote.gated && holder != version => holder,
            _ => return Ok(()),
        };
        let holder_model = versions
            .get(&holder)
            .ok_or_else(|| format!("the alias's holder, version {holder}, does not exist"))?;
        let baseline = baseline_metrics(context, holder_model)?;
        let comparison = compare_tables(
            &baseline,
            candidate,
            &format!("{model}:{holder}"),
            &format!("{model}:{version}"),
            &crate::compare::CompareOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        crate::publication::promotion_allowed(&comparison, holder)
    };
    models::move_alias(
        &context.client,
        namespace,
        model,
        &promote.alias,
        version,
        gate,
    )
    .await
}

/// Reads a finished run's metrics, compares them and publishes. `Err(Ok(..))` is a failure of
/// the run (reason, message); `Err(Err(..))` an API error to retry.
pub async fn results(
    context: &Context,
    namespace: &str,
    candidate: &Candidate,
    dataset_path: &std::path::Path,
    rows: &[crate::local::dataset::DatasetRow],
) -> Result<Results, Result<(&'static str, String), ReconcileError>> {
    let output = candidate.output.as_str();
    let not_readable = |e: super::mounts::MountError| Ok(("ArtifactsNotReadable", e.to_string()));
    let output_dir = context
        .mounts
        .resolve(&candidate.claim, output)
        .map_err(not_readable)?;
    let metrics_path = output_dir.join("metrics.csv");
    let table = MetricsTable::read(&metrics_path).map_err(|e| Ok(("BadResults", e.to_string())))?;
    let metrics = summarize(&table);

    let comparison = match &candidate.compare_to {
        None => None,
        Some(spec) => {
            let baseline = models::resolve_baseline(&context.client, namespace, spec)
                .await
                .map_err(|e| Ok(("BaselineNotFound", e.to_string())))?;
            let baseline_table =
                baseline_metrics(context, &baseline).map_err(|m| Ok(("BaselineNotReadable", m)))?;
            let comparison = compare_tables(
                &baseline_table,
                &table,
                &format!("{}:{}", baseline.spec.model_name, baseline.spec.version),
                &format!("{} {}", candidate.source.0, candidate.source.1),
                &crate::local::stages::compare_options(spec),
            )
            .map_err(|e| Ok(("ComparisonFailed", format!("spec.compareTo: {e}"))))?;
            Some(comparison)
        }
    };

    let published = match &candidate.publish {
        None => None,
        Some(publish) => {
            let base = common_folder(output, &candidate.networks);
            let mut files: Vec<(PathBuf, String)> = Vec::new();
            for folder in &candidate.networks {
                for file in ["model.safetensors", "experiment.yaml"] {
                    let relative = format!("{}/{file}", relative_to(folder, base));
                    let path = context
                        .mounts
                        .resolve(&candidate.claim, &format!("{folder}/{file}"))
                        .map_err(not_readable)?;
                    files.push((path, relative));
                }
            }
            let metrics_relative = format!("{}/metrics.csv", relative_to(output, base));
            files.push((metrics_path.clone(), metrics_relative.clone()));
            let (artifact_files, digest) = digest_artifacts(&files).map_err(|(path, e)| {
                Ok(("ArtifactsNotReadable", format!("{}: {e}", path.display())))
            })?;
            let dataset =
                dataset_digest(dataset_path, rows).map_err(|e| Ok(("BadData", e.to_string())))?;
            let (kind, source_name, source_uid) = candidate.source.clone();
            let lineage = Lineage {
                source_kind: kind.into(),
                source_name,
                source_uid: source_uid.clone(),
                trainer_image: Some(context.settings.trainer_image.clone()),
                manifest_path: String::new(),
                manifest_digest: candidate.manifest_digest.clone(),
                dataset_digest: dataset,
                seed: candidate.seed,
                trainer_version: trainer_version(&context.settings.trainer_image),
                git_commit: candidate.git_commit.clone(),
                runs: candidate.names.clone(),
            };
            let content = candidate.content.clone();
            let location = format!("pvc://{}/{base}", candidate.claim);
            let mut resource = model_resource(
                &publish.model,
                1,
                &content,
                &location,
                &artifact_files,
                &digest,
                &metrics,
                comparison.as_ref(),
                &lineage,
            )
            .map_err(|e| Ok(("PublishFailed", e)))?;
            resource
                .annotations_mut()
                .insert(ANNOTATION_METRICS.into(), metrics_relative);
            let key = format!("{}/{digest}", source_uid.unwrap_or_default());
            let published = models::publish(&context.client, namespace, resource, &key)
                .await
                .map_err(|e| match e {
                    models::ModelError::Api { action, source } => {
                        Err(ReconcileError::Api { action, source })
                    }
                    other => Ok(("PublishFailed", other.to_string())),
                })?;
            info!(
                model = publish.model,
                version = published.version,
                new = published.new,
                "published"
            );
            let promotion = match &publish.promote {
                None => None,
                Some(promote) => Some((
                    promote.alias.clone(),
                    promote_alias(
                        context,
                        namespace,
                        &publish.model,
                        promote,
                        &published,
                        &table,
                    )
                    .await
                    .map_err(|e| match e {
                        models::ModelError::Api { action, source } => {
                            Err(ReconcileError::Api { action, source })
                        }
                        other => Ok(("PromotionFailed", other.to_string())),
                    })?,
                )),
            };
            Some(Publication {
                model: publish.model.clone(),
                version: published.version,
                new: published.new,
                promotion,
            })
        }
    };
    Ok(Results {
        metrics,
        comparison,
        published,
    })
}

/// The per-subject test metrics of a published version, checked against its recorded digest.
pub fn baseline_metrics(
    context: &Context,
    model: &voxel_crds::Model,
) -> Result<MetricsTable, String> {
    let label = format!("{}:{}", model.spec.model_name, model.spec.version);
    let relative = model
        .annotations()
        .get(ANNOTATION_METRICS)
        .ok_or_else(|| format!("{label} records no per-subject metrics ({ANNOTATION_METRICS})"))?;
    let recorded = model
        .spec
        .artifact
        .files
        .iter()
        .find(|f| &f.path == relative)
        .ok_or_else(|| format!("{label}: {relative} is not among its artifact files"))?;
    let dir = context
        .mounts
        .resolve_uri(&model.spec.artifact.location)
        .map_err(|e| format!("{label}: {e}"))?;
    let path = dir.join(relative);
    let (digest, _) = crate::digest::digest_file(&path)
        .map_err(|e| format!("{label}: {}: {e}", path.display()))?;
    if digest != recorded.digest {
        return Err(format!(
            "{label}: {} changed since it was published (digest {digest}, published {})",
            path.display(),
            recorded.digest
        ));
    }
    MetricsTable::read(&path).map_err(|e| format!("{label}: {e}"))
}

/// The tag of the trainer image, which is the trainer's version in released images.
fn trainer_version(image: &str) -> String {
    image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map(|(_, tag)| tag.to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn verdicts(comparison: &Comparison) -> String {
    let verdicts: Vec<String> = comparison
        .verdicts
        .iter()
        .map(|v| format!("{}: {:?}", v.structure, v.verdict))
        .collect();
    format!("against {}: {}", comparison.baseline, verdicts.join(", "))
}

pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The deepest folder that holds `output` and every member folder.
fn common_folder<'a>(output: &'a str, members: &[String]) -> &'a str {
    let mut base = parent(output);
    while !base.is_empty()
        && !members.iter().all(|m| {
            m.strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    {
        base = parent(base);
    }
    base
}

fn relative_to<'a>(path: &'a str, base: &str) -> &'a str {
    if base.is_empty() {
        return path;
    }
    path.strip_prefix(base)
        .map_or(path, |rest| rest.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_a_version_are_relative_to_the_folder_of_its_runs() {
        assert_eq!(parent("experiments/team/cv-fold-0"), "experiments/team");
        assert_eq!(
            relative_to("experiments/team/cv-fold-0", "experiments/team"),
            "cv-fold-0"
        );
        let members = [
            "runs/team/cv-fold-0".to_string(),
            "runs/team/cv-fold-1".to_string(),
        ];
        assert_eq!(common_folder("runs/team/ens", &members), "runs/team");
        let elsewhere = ["other/team/m".to_string()];
        assert_eq!(common_folder("runs/team/ens", &elsewhere), "");
        assert_eq!(relative_to("other/team/m", ""), "other/team/m");
        assert_eq!(
            trainer_version("ghcr.io/voxel-dev/voxel-trainer:0.1.0"),
            "0.1.0"
        );
        assert_eq!(trainer_version("localhost:5000/voxel-trainer"), "unknown");
    }
}
