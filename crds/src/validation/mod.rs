//! Checks of a spec, run before anything starts.
//!
//! Local mode, the operator and the trainer run the same checks, so a manifest is rejected with
//! the same message wherever it is used. Every error names the field by its path in the
//! manifest. The CEL rules of the CRDs ([`crate::cel`]) are checked here too, with their own
//! messages and at the paths where the API server reports them, so that `kubectl apply` and
//! local mode agree; the other checks (cross-field rules CEL cannot afford, bounds the schema
//! already enforces) quote the offending value.

mod cross_validation;
mod ensemble;
mod experiment;
mod model;

use std::{collections::BTreeSet, fmt};

use crate::{
    cel::{self, ALIAS_MAX_LENGTH, MODEL_NAME_MAX_LENGTH, Rule},
    common::{CompareToSpec, ModelReference, PublishSpec},
};

/// One violated rule, located by the field's path in the manifest (`spec.model.structures`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, for example `spec.training.epochs`.
    pub field: String,
    /// What is wrong.
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

/// Gathers the violations of one spec.
#[derive(Default)]
pub(crate) struct Collector(Vec<FieldError>);

impl Collector {
    /// Records `message` at `field` unless `ok`.
    pub(crate) fn check(&mut self, ok: bool, field: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(FieldError {
                field: field.to_string(),
                message: message(),
            });
        }
    }

    /// Records the violation of a CEL rule attached at `path` unless `ok`: its message, at its
    /// `fieldPath` below `path`, exactly as the API server reports it.
    pub(crate) fn rule(&mut self, ok: bool, path: &str, rule: &Rule) {
        let field = format!("{path}{}", rule.field_path.unwrap_or(""));
        self.check(ok, &field, || rule.message.to_string());
    }

    /// The violations, if any.
    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// What the API server says of a name that is not a DNS subdomain (RFC 1123).
pub const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character, \
    at most 253 characters";

/// True when `name` is a DNS subdomain (RFC 1123), as Kubernetes requires of object names: dot-
/// separated labels of lowercase letters, digits and '-', each starting and ending with a letter
/// or digit, 253 characters at most. Such a name is also a safe single path component.
pub fn is_subdomain(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// Checks `metadata.name` as the API server does; local mode also names folders after it.
pub fn validate_name(name: Option<&str>) -> Result<(), ValidationErrors> {
    let mut c = Collector::default();
    match name {
        None | Some("") => c.check(false, "metadata.name", || "must be set".to_string()),
        Some(name) => c.check(is_subdomain(name), "metadata.name", || {
            format!("{SUBDOMAIN_MESSAGE}, found {name:?}")
        }),
    }
    c.finish()
}

/// The items listed more than once, sorted.
pub(crate) fn duplicates<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    let mut repeated = BTreeSet::new();
    for item in items {
        if !seen.insert(item.as_str()) {
            repeated.insert(item.as_str());
        }
    }
    repeated.into_iter().collect()
}

/// [`cel::MODEL_NAME`] at `path`.
fn check_model_name(c: &mut Collector, path: &str, name: &str) {
    let ok = cel::is_dns1123_label(name, MODEL_NAME_MAX_LENGTH as usize);
    c.rule(ok, path, &cel::MODEL_NAME);
}

/// [`cel::ALIAS_NAME`] at `path`.
fn check_alias(c: &mut Collector, path: &str, alias: &str) {
    let ok = cel::is_dns1123_label(alias, ALIAS_MAX_LENGTH as usize);
    c.rule(ok, path, &cel::ALIAS_NAME);
}

/// The rules of a reference to a model version by number or alias, at `path`.
fn check_version_or_alias(
    c: &mut Collector,
    path: &str,
    model: &str,
    version: Option<u32>,
    alias: Option<&str>,
) {
    c.rule(
        version.is_some() != alias.is_some(),
        path,
        &cel::VERSION_OR_ALIAS,
    );
    check_model_name(c, &format!("{path}.model"), model);
    if let Some(version) = version {
        c.check(version >= 1, &format!("{path}.version"), || {
            format!("must be at least 1, found {version}")
        });
    }
    if let Some(alias) = alias {
        check_alias(c, &format!("{path}.alias"), alias);
    }
}

impl ModelReference {
    /// Records the violations of this reference, found at `path`.
    pub(crate) fn check(&self, c: &mut Collector, path: &str) {
        check_version_or_alias(c, path, &self.model, self.version, self.alias.as_deref());
    }
}

impl CompareToSpec {
    /// Records the violations of this baseline, found at `path` (`spec.compareTo`).
    pub(crate) fn check(&self, c: &mut Collector, path: &str) {
        check_version_or_alias(c, path, &self.model, self.version, self.alias.as_deref());
        c.rule(
            self.alpha > 0.0 && self.alpha <= 0.5,
            &format!("{path}.alpha"),
            &cel::ALPHA_RANGE,
        );
        c.check(
            (100..=100_000).contains(&self.bootstrap_samples),
            &format!("{path}.bootstrapSamples"),
            || {
                format!(
                    "must be between 100 and 100000, found {}",
                    self.bootstrap_samples
                )
            },
        );
    }
}

impl PublishSpec {
    /// Records the violations of these publishing settings, found at `path` (`spec.publish`).
    pub(crate) fn check(&self, c: &mut Collector, path: &str) {
        check_model_name(c, &format!("{path}.model"), &self.model);
        if let Some(promote) = &self.promote {
            check_alias(c, &format!("{path}.promote.alias"), &promote.alias);
        }
    }
}
