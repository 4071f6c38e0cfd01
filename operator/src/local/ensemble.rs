//! An Ensemble in local mode: the members' posteriors averaged (or their votes counted) on the
//! test subjects by `voxel-trainer ensemble`, then the comparison and the publication.
//!
//! Members are published model versions from the registry, or the folds of a CrossValidation run
//! locally before. A member that is itself an ensemble contributes all of its networks.

use std::path::{Path, PathBuf};

use voxel_crds::{Ensemble, experiment::ExperimentSpec};

use super::{
    LocalError, LocalOptions, RunReport,
    cross_validation::{read_metrics, start_ensemble_process, wait, write_json},
    data_root,
    dataset::{dataset_digest, read_rows, subjects},
    io_error,
    process::Exit,
    progress::RunProgress,
    stages::{self, Candidate, Source},
};
use crate::{
    aggregate::summarize,
    publication::ModelContent,
    registry::{ARTIFACTS, ModelReference, Registry, VersionSelector},
};

/// Folders under `dir` (itself included) that hold a trained network, sorted.
fn network_dirs(dir: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let mut found = Vec::new();
    if dir.join("model.safetensors").is_file() && dir.join("experiment.yaml").is_file() {
        found.push(dir.to_path_buf());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    for child in children {
        found.extend(network_dirs(&child)?);
    }
    Ok(found)
}

/// The member networks' folders and their names for the lineage.
fn members(
    ensemble: &Ensemble,
    options: &LocalOptions,
    registry: &Registry,
) -> Result<(Vec<PathBuf>, Vec<String>), LocalError> {
    let spec = &ensemble.spec;
    let mut dirs = Vec::new();
    let mut names = Vec::new();
    if let Some(cv) = &spec.cross_validation {
        let run = options.run_dir("CrossValidation", cv);
        let mut fold = 0;
        while run.join(format!("fold-{fold}.done")).is_file() {
            dirs.push(run.join(format!("fold-{fold}")));
            names.push(format!("{cv}-fold-{fold}"));
            fold += 1;
        }
        if dirs.is_empty() {
            return Err(LocalError::Config(format!(
                "spec.crossValidation: no finished folds of CrossValidation {cv} in {}; run it \
                 first with `voxel run`",
                run.display()
            )));
        }
    }
    for member in &spec.members {
        let reference = ModelReference {
            model: member.model.clone(),
            selector: match (&member.version, &member.alias) {
                (Some(v), _) => VersionSelector::Version(*v),
                (None, Some(a)) => VersionSelector::Alias(a.clone()),
                (None, None) => VersionSelector::Latest,
            },
        };
        let version = registry
            .resolve(&reference)
            .map_err(|e| LocalError::Config(format!("spec.members: {e}")))?;
        // A member is used only as it was published.
        let changed: Vec<String> = crate::models::verify(registry, &member.model, version)
            .map_err(|e| LocalError::Config(format!("spec.members: {e}")))?
            .into_iter()
            .filter_map(|(path, problem)| problem.map(|p| format!("{path} {p}")))
            .collect();
        if !changed.is_empty() {
            return Err(LocalError::Data(format!(
                "spec.members: {}:{version} no longer matches its publication: {}",
                member.model,
                changed.join("; ")
            )));
        }
        let networks = network_dirs(&registry.version_dir(&member.model, version).join(ARTIFACTS))?;
        for (i, dir) in networks.iter().enumerate() {
            names.push(if networks.len() == 1 {
                format!("{}:{version}", member.model)
            } else {
                format!("{}:{version}/{i}", member.model)
            });
            dirs.push(dir.clone());
        }
    }
    Ok((dirs, names))
}

/// Runs an Ensemble to its end.
pub fn run(
    ensemble: &Ensemble,
    source: &Source,
    options: &LocalOptions,
) -> Result<RunReport, LocalError> {
    let name = ensemble.metadata.name.clone().unwrap_or_default();
    let spec = &ensemble.spec;
    let run_dir = options.prepare_run_dir("Ensemble", &name)?;
    let registry = Registry::new(&options.registry);
    let (member_dirs, member_names) = members(ensemble, options, &registry)?;
    stages::check_baseline(spec.compare_to.as_ref(), &registry)?;

    let root = data_root(&spec.data.source, &source.manifest_path)?;
    let csv = root.join(&spec.data.dataset);
    let rows = read_rows(&csv)?;
    let split = voxel_crds::split::split_subjects(&subjects(&rows), &spec.data.split)
        .map_err(|e| LocalError::Config(e.to_string()))?;
    let test = if split.test.is_empty() {
        subjects(&rows)
    } else {
        split.test
    };

    let output = run_dir.join("ensemble");
    let progress = RunProgress::new(&name, 1);
    let bar = progress.trainer("ensemble", 0);
    bar.set_message(format!(
        "{} members on {} subjects",
        member_dirs.len(),
        test.len()
    ));
    let process = start_ensemble_process(
        options,
        &member_dirs,
        &csv,
        &test,
        spec.combine,
        &output,
        &run_dir.join("ensemble.log"),
    )?;
    if let Exit::Failed { code, message, .. } = wait(process, &bar, None)? {
        progress.finish();
        return Err(LocalError::from_trainer(
            code,
            format!("Ensemble {name}: {message}"),
        ));
    }
    bar.finish_and_clear();
    progress.stage_done("evaluated");

    let metrics_csv = output.join("metrics.csv");
    let summary = summarize(&read_metrics(&metrics_csv)?);
    let mut artifacts = Vec::new();
    for (i, dir) in member_dirs.iter().enumerate() {
        for file in ["model.safetensors", "experiment.yaml"] {
            artifacts.push((
                dir.join(file),
                PathBuf::from(format!("member-{i}")).join(file),
            ));
        }
    }
    let first_config = std::fs::read_to_string(member_dirs[0].join("experiment.yaml"))
        .map_err(io_error(&member_dirs[0]))?;
    let configuration: ExperimentSpec =
        serde_yaml::from_str::<voxel_crds::Experiment>(&first_config)
            .map(|e| e.spec)
            .map_err(|e| LocalError::Config(format!("{}: {e}", member_dirs[0].display())))?;
    let candidate = Candidate {
        kind: "Ensemble",
        name: name.clone(),
        metrics_csv,
        summary: summary.clone(),
        artifacts,
        content: ModelContent::Ensemble {
            configuration,
            members: member_names.clone(),
            combine: spec.combine,
        },
        dataset_digest: dataset_digest(&csv, &rows)?,
        seed: 0,
        runs: member_names,
    };
    let comparison =
        stages::compare_with_baseline(&candidate, spec.compare_to.as_ref(), &registry)?;
    let publication = stages::publish(
        &candidate,
        comparison.as_ref(),
        spec.publish.as_ref(),
        source,
        &registry,
        &options.trainer,
    )?;
    progress.finish();
    let report = RunReport {
        kind: "Ensemble".into(),
        name,
        run_dir: run_dir.clone(),
        folds: Vec::new(),
        aggregate: Vec::new(),
        test_subjects: test.len() as u32,
        ensemble: Some(summary.clone()),
        ensemble_members: member_dirs.len() as u32,
        metrics: summary,
        comparison,
        publication: publication.map(Into::into),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(report)
}
