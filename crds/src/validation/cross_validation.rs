//! The rules of a CrossValidation spec.

use super::{Collector, ValidationErrors};
use crate::{cel, cross_validation::CrossValidationSpec};

impl CrossValidationSpec {
    /// Checks every rule of a CrossValidation's spec, its template's included, and returns all
    /// violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        self.check(&mut c, "spec");
        c.finish()
    }

    /// Checks the rules of changing a CrossValidation's spec from `old` to `self`: the folds and
    /// their seed are fixed at creation, and so are the template's data source, training seed
    /// and architecture.
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        c.rule(
            self.folds == old.folds,
            "spec.folds",
            &cel::FOLD_ASSIGNMENT_IMMUTABLE,
        );
        c.rule(
            self.seed == old.seed,
            "spec.seed",
            &cel::FOLD_ASSIGNMENT_IMMUTABLE,
        );
        self.template
            .check_update(&old.template, &mut c, "spec.template");
        c.finish()
    }

    fn check(&self, c: &mut Collector, p: &str) {
        c.rule(
            (2..=20).contains(&self.folds),
            &format!("{p}.folds"),
            &cel::FOLDS_RANGE,
        );
        c.check(self.parallelism >= 1, &format!("{p}.parallelism"), || {
            format!("must be at least 1, found {}", self.parallelism)
        });

        let template = &self.template;
        c.rule(
            template.compare_to.is_none(),
            p,
            &cel::TEMPLATE_WITHOUT_COMPARE_TO,
        );
        c.rule(
            template.publish.is_none(),
            p,
            &cel::TEMPLATE_WITHOUT_PUBLISH,
        );
        let split = &template.data.split;
        c.rule(
            split.validation_fraction.is_none()
                && split.validation_subjects.is_empty()
                && split.fold.is_none(),
            p,
            &cel::TEMPLATE_WITHOUT_VALIDATION_SPLIT,
        );
        template.check(c, &format!("{p}.template"));

        if let Some(compare_to) = &self.compare_to {
            compare_to.check(c, &format!("{p}.compareTo"));
        }
        if let Some(publish) = &self.publish {
            publish.check(c, &format!("{p}.publish"));
        }
    }
}
