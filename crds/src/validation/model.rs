//! The rules of a published Model version.

use super::{Collector, ValidationErrors, check_model_name};
use crate::{cel, experiment::ExperimentSpec, model::ModelVersionSpec};

impl ModelVersionSpec {
    /// Checks every rule of a Model's spec, its configuration's included, and returns all
    /// violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        let p = "spec";
        check_model_name(&mut c, &format!("{p}.modelName"), &self.model_name);
        c.check(self.version >= 1, &format!("{p}.version"), || {
            format!("must be at least 1, found {}", self.version)
        });

        let configuration = &self.configuration;
        let path = format!("{p}.configuration");
        c.rule(
            configuration.experiment.is_some() != configuration.ensemble.is_some(),
            &path,
            &cel::CONFIGURATION_EXACTLY_ONE,
        );
        if let Some(experiment) = &configuration.experiment {
            experiment.check(&mut c, &format!("{path}.experiment"));
        }
        if let Some(ensemble) = &configuration.ensemble {
            let path = format!("{path}.ensemble");
            c.rule(
                ensemble.members.len() >= 2,
                &format!("{path}.members"),
                &cel::ENSEMBLE_CONFIGURATION_MEMBERS,
            );
            let most = cel::MAX_ENSEMBLE_MEMBERS as usize;
            c.check(
                ensemble.members.len() <= most,
                &format!("{path}.members"),
                || {
                    format!(
                        "must list at most {most} members, found {}",
                        ensemble.members.len()
                    )
                },
            );
            if let Some(experiment) = &ensemble.experiment {
                experiment.check(&mut c, &format!("{path}.experiment"));
            }
        }

        let artifact = &self.artifact;
        let digests = [
            (format!("{p}.artifact.digest"), &artifact.digest),
            (
                format!("{p}.lineage.manifestDigest"),
                &self.lineage.manifest_digest,
            ),
            (
                format!("{p}.lineage.datasetDigest"),
                &self.lineage.dataset_digest,
            ),
        ];
        let file_digests = artifact
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("{p}.artifact.files[{i}].digest"), &f.digest));
        for (field, digest) in digests.into_iter().chain(file_digests) {
            c.rule(cel::is_sha256_digest(digest), &field, &cel::SHA256_DIGEST);
        }
        let most = cel::MAX_ARTIFACT_FILES as usize;
        c.check(
            artifact.files.len() <= most,
            &format!("{p}.artifact.files"),
            || {
                format!(
                    "must list at most {most} files, found {}",
                    artifact.files.len()
                )
            },
        );
        c.finish()
    }

    /// Checks the rules of changing a Model's spec from `old` to `self`: none of it may change.
    /// Like the API server, also reports the transition rules of the Experiment configurations
    /// inside.
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        c.rule(self == old, "spec", &cel::MODEL_SPEC_IMMUTABLE);
        fn single(spec: &ModelVersionSpec) -> Option<&ExperimentSpec> {
            spec.configuration.experiment.as_ref()
        }
        fn shared(spec: &ModelVersionSpec) -> Option<&ExperimentSpec> {
            let ensemble = spec.configuration.ensemble.as_ref();
            ensemble.and_then(|e| e.experiment.as_ref())
        }
        let pairs = [
            ("spec.configuration.experiment", single(self), single(old)),
            (
                "spec.configuration.ensemble.experiment",
                shared(self),
                shared(old),
            ),
        ];
        for (path, new, old) in pairs {
            if let (Some(new), Some(old)) = (new, old) {
                new.check_update(old, &mut c, path);
            }
        }
        c.finish()
    }
}
