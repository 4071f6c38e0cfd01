//! The rules of an Ensemble spec.

use super::{Collector, ValidationErrors};
use crate::{cel, ensemble::EnsembleSpec};

impl EnsembleSpec {
    /// Checks every rule of an Ensemble's spec and returns all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        let p = "spec";
        c.rule(
            self.members.is_empty() == self.cross_validation.is_some(),
            p,
            &cel::MEMBERS_OR_CROSS_VALIDATION,
        );
        c.rule(
            self.members.len() != 1,
            &format!("{p}.members"),
            &cel::MEMBERS_AT_LEAST_TWO,
        );
        let most = cel::MAX_ENSEMBLE_MEMBERS as usize;
        c.check(self.members.len() <= most, &format!("{p}.members"), || {
            format!(
                "must list at most {most} members, found {}",
                self.members.len()
            )
        });
        for (i, member) in self.members.iter().enumerate() {
            member.check(&mut c, &format!("{p}.members[{i}]"));
        }
        if let Some(name) = &self.cross_validation {
            c.check(
                super::is_subdomain(name),
                &format!("{p}.crossValidation"),
                || {
                    format!(
                        "must be the name of a CrossValidation ({}), found {name:?}",
                        super::SUBDOMAIN_MESSAGE
                    )
                },
            );
        }

        self.data.check(&mut c, &format!("{p}.data"));
        if let Some(compare_to) = &self.compare_to {
            compare_to.check(&mut c, &format!("{p}.compareTo"));
        }
        if let Some(publish) = &self.publish {
            publish.check(&mut c, &format!("{p}.publish"));
        }
        c.finish()
    }
}
