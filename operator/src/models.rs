//! `voxel models list` and `voxel models show`: the local registry's versions, their metrics,
//! comparisons and lineage.

use std::fmt::Write;

use voxel_crds::{model::Model, results::StructureSummary};

use crate::registry::{ModelReference, Registry, RegistryError};

/// Why a model could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The registry could not answer.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A version's `model.yaml` does not parse.
    #[error("{path}: not a Model resource: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error.
        message: String,
    },
}

fn load(registry: &Registry, model: &str, version: u32) -> Result<Model, ShowError> {
    let text = registry.manifest(model, version)?;
    serde_yaml::from_str(&text).map_err(|e| ShowError::Corrupt {
        path: registry
            .version_dir(model, version)
            .join(crate::registry::MODEL_MANIFEST)
            .display()
            .to_string(),
        message: e.to_string(),
    })
}

/// How each file of a published version compares with the digest recorded at publication:
/// `(path, None)` when it matches, `(path, Some(problem))` when it changed or cannot be read.
pub fn verify(
    registry: &Registry,
    model: &str,
    version: u32,
) -> Result<Vec<(String, Option<String>)>, ShowError> {
    let resource = load(registry, model, version)?;
    let folder = registry.version_dir(model, version);
    Ok(resource
        .spec
        .artifact
        .files
        .iter()
        .map(|file| {
            let problem = match crate::digest::digest_file(&folder.join(&file.path)) {
                Ok((digest, _)) if digest == file.digest => None,
                Ok((digest, _)) => Some(format!("changed since publication, now {digest}")),
                Err(e) => Some(format!("unreadable: {e}")),
            };
            (file.path.clone(), problem)
        })
        .collect())
}

fn dice_cell(metrics: &[StructureSummary]) -> String {
    metrics
        .iter()
        .map(|s| match s.dice.mean {
            Some(mean) => format!("{} {mean:.4}", s.structure),
            None => format!("{} n/a", s.structure),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per version of every model, with its aliases and mean test Dice.
pub fn list(registry: &Registry) -> Result<String, ShowError> {
    let models = registry.models()?;
    if models.is_empty() {
        return Ok(format!(
            "No models published in {}\n",
            registry.root().display()
        ));
    }
    let mut rows: Vec<[String; 6]> = vec![
        [
            "MODEL",
            "VERSION",
            "ALIASES",
            "PUBLISHED",
            "SOURCE",
            "TEST DICE",
        ]
        .map(str::to_string),
    ];
    for model in models {
        let aliases = registry.aliases(&model)?;
        for version in registry.versions(&model)? {
            let resource = load(registry, &model, version)?;
            let spec = &resource.spec;
            let names: Vec<&str> = aliases
                .iter()
                .filter(|(_, v)| *v == version)
                .map(|(a, _)| a.as_str())
                .collect();
            rows.push([
                model.clone(),
                version.to_string(),
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                },
                spec.published_at.0.to_string(),
                format!(
                    "{:?}/{}",
                    spec.lineage.source.kind, spec.lineage.source.name
                ),
                dice_cell(&spec.metrics),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        // The version column is right-aligned, the last one left unpadded.
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
    }
    Ok(out)
}

/// A version's metadata, metrics, comparison and lineage; the full resource as YAML when asked.
pub fn show(
    registry: &Registry,
    reference: &ModelReference,
    yaml: bool,
) -> Result<String, ShowError> {
    let version = registry.resolve(reference)?;
    if yaml {
        return Ok(registry.manifest(&reference.model, version)?);
    }
    let resource = load(registry, &reference.model, version)?;
    let spec = &resource.spec;
    let aliases: Vec<String> = registry
        .aliases(&reference.model)?
        .into_iter()
        .filter(|(_, v)| *v == version)
        .map(|(a, _)| a)
        .collect();

    let mut out = String::new();
    let _ = writeln!(out, "Model:       {}:{}", spec.model_name, spec.version);
    let _ = writeln!(
        out,
        "Aliases:     {}",
        if aliases.is_empty() {
            "-".into()
        } else {
            aliases.join(", ")
        }
    );
    let _ = writeln!(out, "Published:   {}", spec.published_at.0);
    let _ = writeln!(
        out,
        "Folder:      {}",
        registry.version_dir(&reference.model, version).display()
    );
    let _ = writeln!(out, "Artifact:    {}", spec.artifact.digest);
    // Each file is hashed again: a version whose files were changed afterwards says so.
    let checks = verify(registry, &reference.model, version)?;
    for (file, (_, problem)) in spec.artifact.files.iter().zip(&checks) {
        let check = problem
            .as_ref()
            .map_or("ok".to_string(), |p| format!("NOT OK: {p}"));
        let _ = writeln!(
            out,
            "  {:<40} {:>10} bytes  {}  {check}",
            file.path, file.bytes, file.digest
        );
    }
    if let Some(ensemble) = &spec.configuration.ensemble {
        let _ = writeln!(
            out,
            "Ensemble:    {:?} of {} members: {}",
            ensemble.combine,
            ensemble.members.len(),
            ensemble.members.join(", ")
        );
    }

    let lineage = &spec.lineage;
    let _ = writeln!(out, "\nLineage:");
    let _ = writeln!(
        out,
        "  source:          {:?} {}",
        lineage.source.kind, lineage.source.name
    );
    if let Some(path) = resource
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("voxel.dev/manifest-path"))
    {
        let _ = writeln!(out, "  manifest:        {path}");
    }
    let _ = writeln!(out, "  manifest digest: {}", lineage.manifest_digest);
    let _ = writeln!(out, "  dataset digest:  {}", lineage.dataset_digest);
    let _ = writeln!(out, "  seed:            {}", lineage.seed);
    let _ = writeln!(out, "  trainer:         {}", lineage.trainer_version);
    if let Some(image) = &lineage.trainer_image {
        let _ = writeln!(out, "  trainer image:   {image}");
    }
    let _ = writeln!(
        out,
        "  git commit:      {}",
        lineage
            .git_commit
            .as_deref()
            .unwrap_or("- (the manifest is not in a Git checkout)")
    );
    let _ = writeln!(out, "  runs:            {}", lineage.runs.join(", "));

    let _ = writeln!(out, "\nTest metrics, mean ± std:");
    let _ = writeln!(
        out,
        "  {:<14} {:>17} {:>17} {:>17} {:>5}",
        "structure", "dice", "hd95_mm", "msd_mm", "n"
    );
    for summary in &spec.metrics {
        let cell = |a: &voxel_crds::results::MetricAggregate, d: usize| match (a.mean, a.std) {
            (Some(m), Some(s)) => format!("{m:.d$} ± {s:.d$}"),
            (Some(m), None) => format!("{m:.d$}"),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            out,
            "  {:<14} {:>17} {:>17} {:>17} {:>5}",
            summary.structure,
            cell(&summary.dice, 4),
            cell(&summary.hausdorff95_mm, 3),
            cell(&summary.mean_surface_distance_mm, 3),
            summary.dice.count
        );
    }
    if let Some(comparison) = &spec.comparison {
        let _ = writeln!(out, "\nComparison with {}:", comparison.baseline);
        out += &crate::compare::comparison_table(comparison);
    }
    Ok(out)
}
