//! The rules of an Experiment spec, wherever it appears: an Experiment's `spec`, a
//! CrossValidation's `spec.template`, a published Model's configuration.

use super::{Collector, ValidationErrors, duplicates};
use crate::{
    cel,
    experiment::{DataSpec, ExperimentSpec, NormalizationMethod},
};

impl ExperimentSpec {
    /// Checks every rule of an Experiment's spec and returns all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        self.check(&mut c, "spec");
        c.finish()
    }

    /// Checks the rules of changing an Experiment's spec from `old` to `self`: the data source,
    /// the training seed and the architecture are fixed at creation.
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        self.check_update(old, &mut c, "spec");
        c.finish()
    }

    /// Records the violations of this spec, found at `p` (`spec`, `spec.template`, ...).
    pub(crate) fn check(&self, c: &mut Collector, p: &str) {
        self.validate_model(c, p);
        self.validate_training(c, p);
        self.validate_data(c, p);
        self.validate_run_policy(c, p);
        if let Some(compare_to) = &self.compare_to {
            compare_to.check(c, &format!("{p}.compareTo"));
        }
        if let Some(publish) = &self.publish {
            publish.check(c, &format!("{p}.publish"));
        }
    }

    /// Records the violations of the transition rules from `old`, for a spec found at `p`.
    pub(crate) fn check_update(&self, old: &Self, c: &mut Collector, p: &str) {
        c.rule(
            self.data.source == old.data.source,
            &format!("{p}.data"),
            &cel::DATA_SOURCE_IMMUTABLE,
        );
        c.rule(
            old.artifacts.is_none() || self.artifacts.is_none() || self.artifacts == old.artifacts,
            &format!("{p}.artifacts"),
            &cel::ARTIFACTS_IMMUTABLE,
        );
        c.rule(
            self.training.seed == old.training.seed,
            &format!("{p}.training.seed"),
            &cel::SEED_IMMUTABLE,
        );
        c.rule(
            self.model.architecture == old.model.architecture,
            &format!("{p}.model.architecture"),
            &cel::ARCHITECTURE_IMMUTABLE,
        );
    }

    /// The bounds of the cluster fields (the schema states the same ones).
    fn validate_run_policy(&self, c: &mut Collector, p: &str) {
        if let Some(store) = &self.artifacts {
            c.rule(
                store.persistent_volume_claim.is_some() != store.s3.is_some(),
                &format!("{p}.artifacts"),
                &cel::ARTIFACT_STORE_EXACTLY_ONE,
            );
            if let Some(claim) = &store.persistent_volume_claim {
                check_claim(c, &format!("{p}.artifacts.persistentVolumeClaim"), claim);
            }
            if let Some(s3) = &store.s3 {
                let at = format!("{p}.artifacts.s3");
                if let Some(prefix) = &s3.prefix {
                    check_relative(c, &format!("{at}.prefix"), prefix);
                }
                c.check(
                    !s3.bucket.is_empty()
                        && s3.bucket.chars().all(|ch| {
                            ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.'
                        }),
                    &format!("{at}.bucket"),
                    || format!("must be a bucket name (lowercase letters, digits, '-', '.'), found {:?}", s3.bucket),
                );
                if let Some(endpoint) = &s3.endpoint {
                    c.check(
                        endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                        &format!("{at}.endpoint"),
                        || format!("must be an http:// or https:// URL, found {endpoint:?}"),
                    );
                }
            }
        }
        c.check(
            self.backoff_limit <= 100,
            &format!("{p}.backoffLimit"),
            || format!("must be at most 100, found {}", self.backoff_limit),
        );
        c.check(
            self.resources.gpus <= 16,
            &format!("{p}.resources.gpus"),
            || format!("must be at most 16, found {}", self.resources.gpus),
        );
        c.check(
            self.progress_deadline_seconds >= 1,
            &format!("{p}.progressDeadlineSeconds"),
            || "must be at least 1, found 0".into(),
        );
        c.check(
            self.active_deadline_seconds != Some(0),
            &format!("{p}.activeDeadlineSeconds"),
            || "must be at least 1, found 0".into(),
        );
    }

    fn validate_model(&self, c: &mut Collector, p: &str) {
        let model = &self.model;
        c.check(
            !model.image_channels.is_empty(),
            &format!("{p}.model.imageChannels"),
            || "at least one image channel is required".into(),
        );
        let repeated = duplicates(&model.image_channels);
        c.check(
            repeated.is_empty(),
            &format!("{p}.model.imageChannels"),
            || format!("channels listed twice: {repeated:?}"),
        );
        c.check(
            !model.structures.is_empty(),
            &format!("{p}.model.structures"),
            || "a segmentation model needs at least one structure".into(),
        );
        let repeated = duplicates(&model.structures);
        c.check(
            repeated.is_empty(),
            &format!("{p}.model.structures"),
            || format!("structures listed twice: {repeated:?}"),
        );
        let both: Vec<&String> = model
            .structures
            .iter()
            .filter(|s| model.image_channels.contains(s))
            .collect();
        c.check(both.is_empty(), &format!("{p}.model.structures"), || {
            format!("{both:?} named both as image channel and as structure")
        });

        let network = &model.network;
        c.check(
            (1..=7).contains(&network.levels),
            &format!("{p}.model.network.levels"),
            || format!("must be between 1 and 7, found {}", network.levels),
        );
        c.check(
            network.base_channels >= 1,
            &format!("{p}.model.network.baseChannels"),
            || "must be at least 1".into(),
        );
        c.check(
            network.norm_groups >= 1,
            &format!("{p}.model.network.normGroups"),
            || "must be at least 1".into(),
        );
        c.check(
            (0.0..=1.0).contains(&network.leaky_relu_slope),
            &format!("{p}.model.network.leakyReluSlope"),
            || format!("must be in [0, 1], found {}", network.leaky_relu_slope),
        );

        let pre = &model.preprocessing;
        let multiple = 1u32 << network.levels.clamp(1, 7).saturating_sub(1);
        let sizes = [
            ("cropSize", Some(pre.crop_size)),
            ("tileSize", pre.tile_size),
        ];
        for (name, size) in sizes {
            let Some(size) = size else { continue };
            c.check(
                size.iter().all(|&s| s >= 1 && s % multiple == 0),
                &format!("{p}.model.preprocessing.{name}"),
                || {
                    format!(
                        "every size must be a positive multiple of {multiple} (2^(levels-1)), \
                         found {size:?}"
                    )
                },
            );
        }
        c.check(
            (0.0..=0.95).contains(&pre.tile_overlap),
            &format!("{p}.model.preprocessing.tileOverlap"),
            || format!("must be in [0, 0.95], found {}", pre.tile_overlap),
        );
        if let Some(weights) = &pre.class_weights {
            let expected = model.structures.len() + 1;
            c.check(
                weights.len() == expected,
                &format!("{p}.model.preprocessing.classWeights"),
                || {
                    format!(
                        "needs {expected} weights (background, then one per structure), found {}",
                        weights.len()
                    )
                },
            );
            c.check(
                weights.iter().all(|w| w.is_finite() && *w >= 0.0)
                    && weights.iter().sum::<f64>() > 0.0,
                &format!("{p}.model.preprocessing.classWeights"),
                || format!("weights must be non-negative with a positive sum, found {weights:?}"),
            );
        }
        let channels: Vec<&String> = pre.normalization.iter().map(|n| &n.channel).collect();
        let repeated = duplicates(channels.iter().copied());
        c.check(
            repeated.is_empty(),
            &format!("{p}.model.preprocessing.normalization"),
            || format!("channels normalised twice: {repeated:?}"),
        );
        for (i, norm) in pre.normalization.iter().enumerate() {
            let field = format!("{p}.model.preprocessing.normalization[{i}]");
            c.check(model.image_channels.contains(&norm.channel), &field, || {
                format!(
                    "channel {:?} is not one of {p}.model.imageChannels",
                    norm.channel
                )
            });
            match norm.method {
                NormalizationMethod::CtWindow => {
                    c.check(
                        norm.window_level.is_some(),
                        &format!("{field}.windowLevel"),
                        || "required by CtWindow".into(),
                    );
                    c.check(
                        norm.window_width.is_some_and(|w| w > 0.0),
                        &format!("{field}.windowWidth"),
                        || {
                            format!(
                                "CtWindow needs a positive width, found {:?}",
                                norm.window_width
                            )
                        },
                    );
                }
                NormalizationMethod::RobustWindow => {
                    let lower = norm.lower_percentile.unwrap_or(0.5);
                    let upper = norm.upper_percentile.unwrap_or(99.5);
                    c.check(
                        (0.0..100.0).contains(&lower) && lower < upper && upper <= 100.0,
                        &format!("{field}.lowerPercentile"),
                        || format!("need 0 <= lower < upper <= 100, found {lower} and {upper}"),
                    );
                }
                NormalizationMethod::ZScore => {}
            }
        }

        let aug = &model.augmentation;
        c.check(
            aug.flip_axes.iter().all(|&a| a < 3),
            &format!("{p}.model.augmentation.flipAxes"),
            || format!("axes are 0, 1 or 2, found {:?}", aug.flip_axes),
        );
        c.check(
            (0.0..=1.0).contains(&aug.flip_probability),
            &format!("{p}.model.augmentation.flipProbability"),
            || format!("must be in [0, 1], found {}", aug.flip_probability),
        );
        c.check(
            (0.0..=1.0).contains(&model.loss.dice_weight),
            &format!("{p}.model.loss.diceWeight"),
            || format!("must be in [0, 1], found {}", model.loss.dice_weight),
        );
    }

    fn validate_training(&self, c: &mut Collector, p: &str) {
        let t = &self.training;
        c.check(t.epochs >= 1, &format!("{p}.training.epochs"), || {
            "must be at least 1".into()
        });
        c.check(
            t.batch_size >= 1,
            &format!("{p}.training.batchSize"),
            || "must be at least 1".into(),
        );
        c.check(
            t.checkpoint_every_epochs >= 1,
            &format!("{p}.training.checkpointEveryEpochs"),
            || "must be at least 1".into(),
        );
        let opt = &t.optimizer;
        c.check(
            opt.learning_rate > 0.0 && opt.learning_rate.is_finite(),
            &format!("{p}.training.optimizer.learningRate"),
            || format!("must be positive, found {}", opt.learning_rate),
        );
        c.check(
            opt.weight_decay >= 0.0,
            &format!("{p}.training.optimizer.weightDecay"),
            || format!("must not be negative, found {}", opt.weight_decay),
        );
        c.check(
            (0.0..1.0).contains(&opt.momentum),
            &format!("{p}.training.optimizer.momentum"),
            || format!("must be in [0, 1), found {}", opt.momentum),
        );
        c.check(
            opt.betas.iter().all(|b| (0.0..1.0).contains(b)),
            &format!("{p}.training.optimizer.betas"),
            || format!("both must be in [0, 1), found {:?}", opt.betas),
        );
        c.check(
            opt.epsilon > 0.0,
            &format!("{p}.training.optimizer.epsilon"),
            || format!("must be positive, found {}", opt.epsilon),
        );
        let s = &t.schedule;
        c.check(
            s.warmup_epochs <= t.epochs,
            &format!("{p}.training.schedule.warmupEpochs"),
            || {
                format!(
                    "must not exceed the {} epochs, found {}",
                    t.epochs, s.warmup_epochs
                )
            },
        );
        c.check(
            s.min_learning_rate >= 0.0 && s.min_learning_rate <= opt.learning_rate,
            &format!("{p}.training.schedule.minLearningRate"),
            || {
                format!(
                    "must be in [0, learningRate], found {}",
                    s.min_learning_rate
                )
            },
        );
        c.check(
            s.step_epochs >= 1,
            &format!("{p}.training.schedule.stepEpochs"),
            || "must be at least 1".into(),
        );
        c.check(
            s.gamma > 0.0 && s.gamma <= 1.0,
            &format!("{p}.training.schedule.gamma"),
            || format!("must be in (0, 1], found {}", s.gamma),
        );
        c.check(
            s.power > 0.0,
            &format!("{p}.training.schedule.power"),
            || format!("must be positive, found {}", s.power),
        );
    }

    fn validate_data(&self, c: &mut Collector, p: &str) {
        self.data.check(c, &format!("{p}.data"));
    }
}

impl DataSpec {
    /// Records the violations of this data section, found at `p` (`spec.data`, ...).
    pub(crate) fn check(&self, c: &mut Collector, p: &str) {
        c.check(
            !self.dataset.trim().is_empty(),
            &format!("{p}.dataset"),
            || "the dataset CSV path is required".into(),
        );
        if !self.dataset.trim().is_empty() {
            check_relative(c, &format!("{p}.dataset"), &self.dataset);
        }
        if let Some(claim) = &self.source.persistent_volume_claim {
            check_claim(c, &format!("{p}.source.persistentVolumeClaim"), claim);
        }
        c.rule(
            self.source.local_path.is_some() != self.source.persistent_volume_claim.is_some(),
            &format!("{p}.source"),
            &cel::DATA_SOURCE_EXACTLY_ONE,
        );
        let split = &self.split;
        if let Some(f) = split.test_fraction {
            c.rule(
                f > 0.0 && f < 1.0,
                &format!("{p}.split.testFraction"),
                &cel::TEST_FRACTION_RANGE,
            );
        }
        if let Some(f) = split.validation_fraction {
            c.rule(
                (0.0..1.0).contains(&f),
                &format!("{p}.split.validationFraction"),
                &cel::VALIDATION_FRACTION_RANGE,
            );
        }
        let total = split.test_fraction.unwrap_or(0.0) + split.validation_fraction.unwrap_or(0.0);
        c.rule(
            total < 1.0,
            &format!("{p}.split"),
            &cel::SPLIT_LEAVES_TRAINING,
        );
        if let Some(fold) = &split.fold {
            c.rule(
                split.validation_fraction.is_none() && split.validation_subjects.is_empty(),
                &format!("{p}.split"),
                &cel::FOLD_WITHOUT_VALIDATION_SPLIT,
            );
            c.rule(
                (2..=20).contains(&fold.folds),
                &format!("{p}.split.fold.folds"),
                &cel::FOLDS_RANGE,
            );
            c.rule(
                fold.index < fold.folds,
                &format!("{p}.split.fold"),
                &cel::FOLD_INDEX_RANGE,
            );
        }
        for (name, list) in [
            ("testSubjects", &split.test_subjects),
            ("validationSubjects", &split.validation_subjects),
        ] {
            let repeated = duplicates(list);
            c.check(repeated.is_empty(), &format!("{p}.split.{name}"), || {
                format!("subjects listed twice: {repeated:?}")
            });
        }
        let both: Vec<&String> = split
            .test_subjects
            .iter()
            .filter(|s| split.validation_subjects.contains(s))
            .collect();
        c.check(
            both.is_empty(),
            &format!("{p}.split.validationSubjects"),
            || format!("{both:?} also listed in testSubjects"),
        );
    }
}

/// A folder inside a volume or bucket: relative, and never climbing out with `..`.
fn check_relative(c: &mut Collector, at: &str, path: &str) {
    let climbs = path.split('/').any(|part| part == "..");
    c.check(!climbs && !path.starts_with('/'), at, || {
        format!("must be a relative path without '..', found {path:?}")
    });
}

fn check_claim(c: &mut Collector, at: &str, claim: &crate::experiment::PvcSource) {
    c.check(
        crate::validation::is_subdomain(&claim.claim_name),
        &format!("{at}.claimName"),
        || {
            format!(
                "must be the name of a PersistentVolumeClaim, found {:?}",
                claim.claim_name
            )
        },
    );
    if let Some(sub_path) = &claim.sub_path {
        check_relative(c, &format!("{at}.subPath"), sub_path);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::parse_experiment;

    const VALID: &str = r#"
apiVersion: voxel.dev/v1alpha1
kind: Experiment
metadata: {name: t}
spec:
  model:
    task: Segmentation
    architecture: UNet3D
    imageChannels: [mr]
    structures: [anterior, posterior]
    network: {baseChannels: 8, levels: 3}
    preprocessing:
      cropSize: [32, 40, 32]
  training: {epochs: 10, seed: 1}
  data:
    source: {localPath: data}
    dataset: dataset.csv
    split: {testFraction: 0.2, validationFraction: 0.1}
"#;

    /// The error text for the manifest with `from` replaced by `to`.
    fn rejected(from: &str, to: &str) -> String {
        assert!(VALID.contains(from), "fixture lacks {from:?}");
        let text = VALID.replacen(from, to, 1);
        match parse_experiment(&text, Path::new("m.yaml")) {
            Ok(_) => panic!("accepted with {to:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SPLIT: &str = "    split: {testFraction: 0.2, validationFraction: 0.1}\n";

    #[test]
    fn paths_and_stores_that_would_escape_or_not_resolve_are_refused() {
        let cases: [(&str, &str, &str); 6] = [
            (
                "dataset: dataset.csv",
                "dataset: ../../etc/passwd",
                "spec.data.dataset: must be a relative path without '..'",
            ),
            (
                "source: {localPath: data}",
                "source: {persistentVolumeClaim: {claimName: mri, subPath: /abs}}",
                "spec.data.source.persistentVolumeClaim.subPath: must be a relative path",
            ),
            (
                "source: {localPath: data}",
                "source: {persistentVolumeClaim: {claimName: \"\"}}",
                "spec.data.source.persistentVolumeClaim.claimName: must be the name of a PersistentVolumeClaim",
            ),
            (
                SPLIT,
                &format!(
                    "{SPLIT}  artifacts: {{persistentVolumeClaim: {{claimName: runs, subPath: a/../../x}}}}\n"
                ),
                "spec.artifacts.persistentVolumeClaim.subPath: must be a relative path without '..'",
            ),
            (
                SPLIT,
                &format!(
                    "{SPLIT}  artifacts: {{s3: {{bucket: My_Bucket, credentialsSecret: {{name: k}}}}}}\n"
                ),
                "spec.artifacts.s3.bucket: must be a bucket name",
            ),
            (
                SPLIT,
                &format!(
                    "{SPLIT}  artifacts: {{s3: {{bucket: b-1, prefix: ../up, endpoint: minio:9000, credentialsSecret: {{name: k}}}}}}\n"
                ),
                "spec.artifacts.s3.endpoint: must be an http:// or https:// URL",
            ),
        ];
        for (from, to, expected) in cases {
            let error = rejected(from, to);
            assert!(error.contains(expected), "{to}: {error}");
        }
    }

    #[test]
    fn the_fixture_is_valid_and_defaults_are_filled() {
        let experiment = parse_experiment(VALID, Path::new("m.yaml")).unwrap();
        let spec = &experiment.spec;
        assert_eq!(spec.training.batch_size, 2);
        assert_eq!(spec.model.preprocessing.tile_overlap, 0.5);
        assert_eq!(spec.training.optimizer.learning_rate, 1e-3);
    }

    #[test]
    fn each_rule_names_its_field_and_the_value() {
        let cases = [
            (
                "imageChannels: [mr]",
                "imageChannels: []",
                "spec.model.imageChannels",
                "at least one",
            ),
            (
                "structures: [anterior, posterior]",
                "structures: [a, a]",
                "spec.model.structures",
                "\"a\"",
            ),
            (
                "structures: [anterior, posterior]",
                "structures: [mr]",
                "spec.model.structures",
                "both",
            ),
            (
                "levels: 3",
                "levels: 9",
                "spec.model.network.levels",
                "found 9",
            ),
            (
                "cropSize: [32, 40, 32]",
                "cropSize: [32, 42, 32]",
                "spec.model.preprocessing.cropSize",
                "multiple of 4",
            ),
            (
                "epochs: 10",
                "epochs: 0",
                "spec.training.epochs",
                "at least 1",
            ),
            (
                "testFraction: 0.2",
                "testFraction: 1.5",
                "spec.data.split.testFraction",
                "less than 1",
            ),
            (
                "validationFraction: 0.1",
                "validationFraction: 0.9",
                "spec.data.split",
                "to leave subjects for training",
            ),
            (
                "source: {localPath: data}",
                "source: {}",
                "spec.data.source",
                "exactly one",
            ),
            (
                "dataset: dataset.csv",
                "dataset: \" \"",
                "spec.data.dataset",
                "required",
            ),
        ];
        for (from, to, field, words) in cases {
            let message = rejected(from, to);
            assert!(
                message.contains(field) && message.contains(words),
                "{to}: {message}"
            );
        }
    }

    #[test]
    fn normalisation_settings_are_checked_per_channel() {
        let message = rejected(
            "cropSize: [32, 40, 32]",
            "cropSize: [32, 40, 32]\n      normalization: [{channel: ct, method: CtWindow}]",
        );
        assert!(
            message.contains("spec.model.preprocessing.normalization[0]"),
            "{message}"
        );
        assert!(
            message.contains("\"ct\" is not one of spec.model.imageChannels"),
            "{message}"
        );
        assert!(
            message.contains("normalization[0].windowWidth"),
            "{message}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_kinds_are_rejected_by_name() {
        let message = rejected("kind: Experiment", "kind: Model");
        assert!(message.contains("expected apiVersion voxel.dev/v1alpha1 and kind Experiment"));
        let message = rejected("task: Segmentation", "task: Detection");
        assert!(message.contains("Detection"), "{message}");
    }
}
