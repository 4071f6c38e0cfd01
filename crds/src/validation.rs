//! Checks of a spec that the schema alone cannot express, run before anything starts.
//!
//! Local mode and the trainer run the same checks, so a manifest is rejected with the same
//! message wherever it is used. Every error names the field by its path in the manifest.

use std::{collections::BTreeSet, fmt};

use crate::experiment::{ExperimentSpec, NormalizationMethod};

/// One violated rule, located by the field's path in the manifest (`spec.model.structures`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, for example `spec.training.epochs`.
    pub field: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All rules a spec violates; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid spec: {}", lines.join("; "))
    }
}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn check(&mut self, ok: bool, field: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(FieldError {
                field: field.to_string(),
                message: message(),
            });
        }
    }
}

fn duplicates<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    let mut repeated = BTreeSet::new();
    for item in items {
        if !seen.insert(item.as_str()) {
            repeated.insert(item.as_str());
        }
    }
    repeated.into_iter().collect()
}

impl ExperimentSpec {
    /// Checks every cross-field rule and returns all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        self.validate_model(&mut c);
        self.validate_training(&mut c);
        self.validate_data(&mut c);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.0))
        }
    }

    fn validate_model(&self, c: &mut Collector) {
        let model = &self.model;
        c.check(
            !model.image_channels.is_empty(),
            "spec.model.imageChannels",
            || "at least one image channel is required".into(),
        );
        let repeated = duplicates(&model.image_channels);
        c.check(repeated.is_empty(), "spec.model.imageChannels", || {
            format!("channels listed twice: {repeated:?}")
        });
        c.check(
            !model.structures.is_empty(),
            "spec.model.structures",
            || "a segmentation model needs at least one structure".into(),
        );
        let repeated = duplicates(&model.structures);
        c.check(repeated.is_empty(), "spec.model.structures", || {
            format!("structures listed twice: {repeated:?}")
        });
        let both: Vec<&String> = model
            .structures
            .iter()
            .filter(|s| model.image_channels.contains(s))
            .collect();
        c.check(both.is_empty(), "spec.model.structures", || {
            format!("{both:?} named both as image channel and as structure")
        });

        let network = &model.network;
        c.check(
            (1..=7).contains(&network.levels),
            "spec.model.network.levels",
            || format!("must be between 1 and 7, found {}", network.levels),
        );
        c.check(
            network.base_channels >= 1,
            "spec.model.network.baseChannels",
            || "must be at least 1".into(),
        );
        c.check(
            network.norm_groups >= 1,
            "spec.model.network.normGroups",
            || "must be at least 1".into(),
        );
        c.check(
            (0.0..=1.0).contains(&network.leaky_relu_slope),
            "spec.model.network.leakyReluSlope",
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
                &format!("spec.model.preprocessing.{name}"),
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
            "spec.model.preprocessing.tileOverlap",
            || format!("must be in [0, 0.95], found {}", pre.tile_overlap),
        );
        if let Some(weights) = &pre.class_weights {
            let expected = model.structures.len() + 1;
            c.check(
                weights.len() == expected,
                "spec.model.preprocessing.classWeights",
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
                "spec.model.preprocessing.classWeights",
                || format!("weights must be non-negative with a positive sum, found {weights:?}"),
            );
        }
        let channels: Vec<&String> = pre.normalization.iter().map(|n| &n.channel).collect();
        let repeated = duplicates(channels.iter().copied());
        c.check(
            repeated.is_empty(),
            "spec.model.preprocessing.normalization",
            || format!("channels normalised twice: {repeated:?}"),
        );
        for (i, norm) in pre.normalization.iter().enumerate() {
            let field = format!("spec.model.preprocessing.normalization[{i}]");
            c.check(model.image_channels.contains(&norm.channel), &field, || {
                format!(
                    "channel {:?} is not one of spec.model.imageChannels",
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
            "spec.model.augmentation.flipAxes",
            || format!("axes are 0, 1 or 2, found {:?}", aug.flip_axes),
        );
        c.check(
            (0.0..=1.0).contains(&aug.flip_probability),
            "spec.model.augmentation.flipProbability",
            || format!("must be in [0, 1], found {}", aug.flip_probability),
        );
        c.check(
            (0.0..=1.0).contains(&model.loss.dice_weight),
            "spec.model.loss.diceWeight",
            || format!("must be in [0, 1], found {}", model.loss.dice_weight),
        );
    }

    fn validate_training(&self, c: &mut Collector) {
        let t = &self.training;
        c.check(t.epochs >= 1, "spec.training.epochs", || {
            "must be at least 1".into()
        });
        c.check(t.batch_size >= 1, "spec.training.batchSize", || {
            "must be at least 1".into()
        });
        c.check(
            t.checkpoint_every_epochs >= 1,
            "spec.training.checkpointEveryEpochs",
            || "must be at least 1".into(),
        );
        let opt = &t.optimizer;
        c.check(
            opt.learning_rate > 0.0 && opt.learning_rate.is_finite(),
            "spec.training.optimizer.learningRate",
            || format!("must be positive, found {}", opt.learning_rate),
        );
        c.check(
            opt.weight_decay >= 0.0,
            "spec.training.optimizer.weightDecay",
            || format!("must not be negative, found {}", opt.weight_decay),
        );
        c.check(
            (0.0..1.0).contains(&opt.momentum),
            "spec.training.optimizer.momentum",
            || format!("must be in [0, 1), found {}", opt.momentum),
        );
        c.check(
            opt.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "spec.training.optimizer.betas",
            || format!("both must be in [0, 1), found {:?}", opt.betas),
        );
        c.check(opt.epsilon > 0.0, "spec.training.optimizer.epsilon", || {
            format!("must be positive, found {}", opt.epsilon)
        });
        let s = &t.schedule;
        c.check(
            s.warmup_epochs <= t.epochs,
            "spec.training.schedule.warmupEpochs",
            || {
                format!(
                    "must not exceed the {} epochs, found {}",
                    t.epochs, s.warmup_epochs
                )
            },
        );
        c.check(
            s.min_learning_rate >= 0.0 && s.min_learning_rate <= opt.learning_rate,
            "spec.training.schedule.minLearningRate",
            || {
                format!(
                    "must be in [0, learningRate], found {}",
                    s.min_learning_rate
                )
            },
        );
        c.check(
            s.step_epochs >= 1,
            "spec.training.schedule.stepEpochs",
            || "must be at least 1".into(),
        );
        c.check(
            s.gamma > 0.0 && s.gamma <= 1.0,
            "spec.training.schedule.gamma",
            || format!("must be in (0, 1], found {}", s.gamma),
        );
        c.check(s.power > 0.0, "spec.training.schedule.power", || {
            format!("must be positive, found {}", s.power)
        });
    }

    fn validate_data(&self, c: &mut Collector) {
        let d = &self.data;
        c.check(!d.dataset.trim().is_empty(), "spec.data.dataset", || {
            "the dataset CSV path is required".into()
        });
        let set = [
            d.source.local_path.is_some(),
            d.source.persistent_volume_claim.is_some(),
        ];
        c.check(
            set.iter().filter(|s| **s).count() == 1,
            "spec.data.source",
            || "exactly one of localPath and persistentVolumeClaim must be set".into(),
        );
        let split = &d.split;
        if let Some(f) = split.test_fraction {
            c.check(f > 0.0 && f < 1.0, "spec.data.split.testFraction", || {
                format!("must be in (0, 1), found {f}")
            });
        }
        if let Some(f) = split.validation_fraction {
            c.check(
                (0.0..1.0).contains(&f),
                "spec.data.split.validationFraction",
                || format!("must be in [0, 1), found {f}"),
            );
        }
        let total = split.test_fraction.unwrap_or(0.0) + split.validation_fraction.unwrap_or(0.0);
        c.check(total < 1.0, "spec.data.split", || {
            format!("test and validation fractions leave no training subjects (sum {total})")
        });
        for (name, list) in [
            ("testSubjects", &split.test_subjects),
            ("validationSubjects", &split.validation_subjects),
        ] {
            let repeated = duplicates(list);
            c.check(
                repeated.is_empty(),
                &format!("spec.data.split.{name}"),
                || format!("subjects listed twice: {repeated:?}"),
            );
        }
        let both: Vec<&String> = split
            .test_subjects
            .iter()
            .filter(|s| split.validation_subjects.contains(s))
            .collect();
        c.check(
            both.is_empty(),
            "spec.data.split.validationSubjects",
            || format!("{both:?} also listed in testSubjects"),
        );
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
                "found 1.5",
            ),
            (
                "validationFraction: 0.1",
                "validationFraction: 0.9",
                "spec.data.split",
                "no training subjects",
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
