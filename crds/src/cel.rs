//! The CEL rules (`x-kubernetes-validations`) of the generated CRDs, each with the message that
//! both the API server and the Rust-side `validate()` report.
//!
//! A rule lives here once: its CEL expression goes into the schema through the `transform`
//! functions below, and its [`Rule::message`] is the text the Rust check uses, so a manifest is
//! rejected with the same message by `kubectl apply` and by local mode. The field path of an
//! error is where the rule is attached (plus its `fieldPath`, when it has one).
//!
//! CEL estimates the cost of every rule from the schema at CRD creation, so any string that a
//! rule matches against a regular expression has a `maxLength`, and any list whose items carry
//! rules has a `maxItems`.

use schemars::Schema;
use serde_json::{Value, json};

/// One CEL validation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The CEL expression; `self` is the value the rule is attached to.
    pub rule: &'static str,
    /// The message reported when the expression is false.
    pub message: &'static str,
    /// Where the error is reported, relative to the value the rule is attached to (for example
    /// `.template.compareTo`); `None` reports it at that value.
    pub field_path: Option<&'static str>,
}

impl Rule {
    /// The rule as an entry of `x-kubernetes-validations`.
    pub fn to_json(&self) -> Value {
        let mut entry = json!({"rule": self.rule, "message": self.message});
        if let Some(path) = self.field_path {
            entry["fieldPath"] = json!(path);
        }
        entry
    }

    /// Appends the rule to a schema's `x-kubernetes-validations`.
    pub fn attach(&self, schema: &mut Schema) {
        let object = schema.ensure_object();
        let rules = object
            .entry("x-kubernetes-validations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(rules) = rules {
            rules.push(self.to_json());
        }
    }
}

/// Longest name of a model in the registry; leaves room for `-v<version>` in a 63-character
/// object name.
pub const MODEL_NAME_MAX_LENGTH: u32 = 50;
/// Longest alias of a model version (a DNS-1123 label).
pub const ALIAS_MAX_LENGTH: u32 = 63;
/// Length of `sha256:` followed by 64 hexadecimal digits.
pub const DIGEST_LENGTH: u32 = 71;
/// Most members an ensemble combines; bounds the cost of the rules on each member.
pub const MAX_ENSEMBLE_MEMBERS: u32 = 64;
/// Most files listed in a published artifact; bounds the cost of the digest rule on each file.
pub const MAX_ARTIFACT_FILES: u32 = 1024;

/// The message of every rule that makes a field immutable.
pub const IMMUTABLE_MESSAGE: &str = "cannot change after creation; create a new resource instead";

// --- Experiment ---

/// `spec.data.source`: exactly one kind of storage.
pub const DATA_SOURCE_EXACTLY_ONE: Rule = Rule {
    rule: "has(self.localPath) != has(self.persistentVolumeClaim)",
    message: "exactly one of localPath and persistentVolumeClaim must be set",
    field_path: None,
};

/// `spec.data.source` of an Experiment never changes: the run's results belong to its data.
pub const DATA_SOURCE_IMMUTABLE: Rule = Rule {
    rule: "self.source == oldSelf.source",
    message: IMMUTABLE_MESSAGE,
    field_path: Some(".source"),
};

/// `spec.artifacts`: exactly one kind of storage.
pub const ARTIFACT_STORE_EXACTLY_ONE: Rule = Rule {
    rule: "has(self.persistentVolumeClaim) != has(self.s3)",
    message: "exactly one of persistentVolumeClaim and s3 must be set",
    field_path: None,
};

/// `spec.artifacts` never changes once set: checkpoints and results live there.
pub const ARTIFACTS_IMMUTABLE: Rule = Rule {
    rule: "self == oldSelf",
    message: IMMUTABLE_MESSAGE,
    field_path: None,
};

/// `spec.training.seed` never changes: a resumed run must draw the same random numbers.
pub const SEED_IMMUTABLE: Rule = Rule {
    rule: "self == oldSelf",
    message: IMMUTABLE_MESSAGE,
    field_path: None,
};

/// `spec.model.architecture` never changes: checkpoints only fit the network they came from.
pub const ARCHITECTURE_IMMUTABLE: Rule = Rule {
    rule: "self == oldSelf",
    message: IMMUTABLE_MESSAGE,
    field_path: None,
};

/// `spec.data.split.testFraction` is in (0, 1).
pub const TEST_FRACTION_RANGE: Rule = Rule {
    rule: "self > 0.0 && self < 1.0",
    message: "must be greater than 0 and less than 1",
    field_path: None,
};

/// `spec.data.split.validationFraction` is in [0, 1).
pub const VALIDATION_FRACTION_RANGE: Rule = Rule {
    rule: "self >= 0.0 && self < 1.0",
    message: "must be at least 0 and less than 1",
    field_path: None,
};

/// `spec.data.split`: the fractions leave subjects to train on.
pub const SPLIT_LEAVES_TRAINING: Rule = Rule {
    rule: "(has(self.testFraction) ? self.testFraction : 0.0) + \
           (has(self.validationFraction) ? self.validationFraction : 0.0) < 1.0",
    message: "testFraction and validationFraction must add up to less than 1, to leave \
              subjects for training",
    field_path: None,
};

/// `spec.data.split.fold` chooses the validation subjects itself.
pub const FOLD_WITHOUT_VALIDATION_SPLIT: Rule = Rule {
    rule: "!has(self.fold) || (!has(self.validationFraction) && \
           (!has(self.validationSubjects) || size(self.validationSubjects) == 0))",
    message: "validationSubjects and validationFraction must not be set with fold: the fold \
              is the validation set",
    field_path: Some(".fold"),
};

/// `spec.data.split.fold.index` names one of the folds.
pub const FOLD_INDEX_RANGE: Rule = Rule {
    rule: "self.index < self.folds",
    message: "index must be less than folds (folds are numbered from 0)",
    field_path: Some(".index"),
};

// --- References to models (compareTo, publish, ensemble members) ---

/// A model name: a DNS-1123 label of at most [`MODEL_NAME_MAX_LENGTH`] characters.
pub const MODEL_NAME: Rule = Rule {
    // The length is the schema's maxLength, which the API server checks before any rule.
    rule: "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    message: "must be at most 50 lowercase letters, digits and '-', starting and ending with a \
              letter or digit",
    field_path: None,
};

/// An alias: a DNS-1123 label of at most [`ALIAS_MAX_LENGTH`] characters.
pub const ALIAS_NAME: Rule = Rule {
    rule: "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    message: "must be at most 63 lowercase letters, digits and '-', starting and ending with a \
              letter or digit",
    field_path: None,
};

/// A reference to a model names exactly one version, by number or by alias.
pub const VERSION_OR_ALIAS: Rule = Rule {
    rule: "has(self.version) != has(self.alias)",
    message: "exactly one of version and alias must be set",
    field_path: None,
};

/// `compareTo.alpha` is in (0, 0.5].
pub const ALPHA_RANGE: Rule = Rule {
    rule: "self > 0.0 && self <= 0.5",
    message: "must be greater than 0 and at most 0.5",
    field_path: None,
};

// --- CrossValidation ---

/// `spec.folds` is between 2 and 20.
pub const FOLDS_RANGE: Rule = Rule {
    rule: "self >= 2 && self <= 20",
    message: "must be between 2 and 20",
    field_path: None,
};

/// `spec.folds` and `spec.seed` of a CrossValidation never change: they define the folds.
pub const FOLD_ASSIGNMENT_IMMUTABLE: Rule = Rule {
    rule: "self == oldSelf",
    message: IMMUTABLE_MESSAGE,
    field_path: None,
};

/// The template of a CrossValidation does not compare: the CrossValidation does.
pub const TEMPLATE_WITHOUT_COMPARE_TO: Rule = Rule {
    rule: "!has(self.template.compareTo)",
    message: "must not be set in a template; set compareTo on the CrossValidation itself",
    field_path: Some(".template.compareTo"),
};

/// The template of a CrossValidation does not publish: the CrossValidation does.
pub const TEMPLATE_WITHOUT_PUBLISH: Rule = Rule {
    rule: "!has(self.template.publish)",
    message: "must not be set in a template; set publish on the CrossValidation itself",
    field_path: Some(".template.publish"),
};

/// The template of a CrossValidation chooses no validation subjects: each fold validates on
/// its own subjects.
pub const TEMPLATE_WITHOUT_VALIDATION_SPLIT: Rule = Rule {
    rule: "!has(self.template.data.split) || \
           (!has(self.template.data.split.validationFraction) && \
           !has(self.template.data.split.fold) && \
           (!has(self.template.data.split.validationSubjects) || \
           size(self.template.data.split.validationSubjects) == 0))",
    message: "validationSubjects, validationFraction and fold must not be set in a template: \
              each fold validates on its own subjects",
    field_path: Some(".template.data.split"),
};

// --- Ensemble ---

/// An Ensemble combines either listed members or the folds of a CrossValidation.
pub const MEMBERS_OR_CROSS_VALIDATION: Rule = Rule {
    rule: "(has(self.members) && size(self.members) > 0) != has(self.crossValidation)",
    message: "exactly one of members and crossValidation must be set",
    field_path: None,
};

/// The message of the rules that an ensemble has at least two members.
pub const AT_LEAST_TWO_MEMBERS_MESSAGE: &str = "an ensemble needs at least two members";

/// `spec.members` of an Ensemble, when given, lists at least two members.
pub const MEMBERS_AT_LEAST_TWO: Rule = Rule {
    rule: "size(self) == 0 || size(self) >= 2",
    message: AT_LEAST_TWO_MEMBERS_MESSAGE,
    field_path: None,
};

// --- Model ---

/// The spec of a published Model version never changes.
pub const MODEL_SPEC_IMMUTABLE: Rule = Rule {
    rule: "self == oldSelf",
    message: "a published model version never changes; publish a new version instead",
    field_path: None,
};

/// A Model's configuration is either one network or an ensemble.
pub const CONFIGURATION_EXACTLY_ONE: Rule = Rule {
    rule: "has(self.experiment) != has(self.ensemble)",
    message: "exactly one of experiment and ensemble must be set",
    field_path: None,
};

/// The members of a published ensemble: at least two.
pub const ENSEMBLE_CONFIGURATION_MEMBERS: Rule = Rule {
    rule: "size(self) >= 2",
    message: AT_LEAST_TWO_MEMBERS_MESSAGE,
    field_path: None,
};

/// A SHA-256 digest written as `sha256:<64 lowercase hex digits>`.
pub const SHA256_DIGEST: Rule = Rule {
    rule: "self.matches('^sha256:[0-9a-f]{64}$')",
    message: "must be 'sha256:' followed by 64 lowercase hexadecimal digits",
    field_path: None,
};

/// Every rule above, for tests that check each one is attached and mirrored.
pub const ALL: [Rule; 26] = [
    DATA_SOURCE_EXACTLY_ONE,
    DATA_SOURCE_IMMUTABLE,
    ARTIFACT_STORE_EXACTLY_ONE,
    ARTIFACTS_IMMUTABLE,
    SEED_IMMUTABLE,
    ARCHITECTURE_IMMUTABLE,
    TEST_FRACTION_RANGE,
    VALIDATION_FRACTION_RANGE,
    SPLIT_LEAVES_TRAINING,
    FOLD_WITHOUT_VALIDATION_SPLIT,
    FOLD_INDEX_RANGE,
    MODEL_NAME,
    ALIAS_NAME,
    VERSION_OR_ALIAS,
    ALPHA_RANGE,
    FOLDS_RANGE,
    FOLD_ASSIGNMENT_IMMUTABLE,
    TEMPLATE_WITHOUT_COMPARE_TO,
    TEMPLATE_WITHOUT_PUBLISH,
    TEMPLATE_WITHOUT_VALIDATION_SPLIT,
    MEMBERS_OR_CROSS_VALIDATION,
    MEMBERS_AT_LEAST_TWO,
    MODEL_SPEC_IMMUTABLE,
    CONFIGURATION_EXACTLY_ONE,
    ENSEMBLE_CONFIGURATION_MEMBERS,
    SHA256_DIGEST,
];

/// Whether `name` is a DNS-1123 label (lowercase alphanumerics and '-', starting and ending
/// alphanumeric) of at most `max` characters: the Rust side of [`MODEL_NAME`] and
/// [`ALIAS_NAME`].
pub fn is_dns1123_label(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hexadecimal digits: the Rust side of
/// [`SHA256_DIGEST`].
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Schema transforms that attach the rules; used as `#[schemars(transform = ...)]`.
pub(crate) mod attach {
    use schemars::Schema;

    use super::*;

    /// Adds `maxLength` to a string schema, so that CEL can bound the cost of a regex match.
    fn max_length(schema: &mut Schema, max: u32) {
        schema
            .ensure_object()
            .insert("maxLength".into(), max.into());
    }

    /// Adds `maxItems` to a list schema, so that CEL can bound the cost of per-item rules.
    fn max_items(schema: &mut Schema, max: u32) {
        schema.ensure_object().insert("maxItems".into(), max.into());
    }

    pub fn data_source(schema: &mut Schema) {
        DATA_SOURCE_EXACTLY_ONE.attach(schema);
    }
    pub fn experiment_data(schema: &mut Schema) {
        DATA_SOURCE_IMMUTABLE.attach(schema);
    }
    pub fn artifacts(schema: &mut Schema) {
        ARTIFACTS_IMMUTABLE.attach(schema);
    }
    pub fn artifact_store(schema: &mut Schema) {
        ARTIFACT_STORE_EXACTLY_ONE.attach(schema);
    }
    pub fn training_seed(schema: &mut Schema) {
        SEED_IMMUTABLE.attach(schema);
    }
    pub fn architecture(schema: &mut Schema) {
        ARCHITECTURE_IMMUTABLE.attach(schema);
    }
    pub fn test_fraction(schema: &mut Schema) {
        TEST_FRACTION_RANGE.attach(schema);
    }
    pub fn validation_fraction(schema: &mut Schema) {
        VALIDATION_FRACTION_RANGE.attach(schema);
    }
    pub fn split(schema: &mut Schema) {
        SPLIT_LEAVES_TRAINING.attach(schema);
        FOLD_WITHOUT_VALIDATION_SPLIT.attach(schema);
    }
    pub fn fold_selection(schema: &mut Schema) {
        FOLD_INDEX_RANGE.attach(schema);
    }
    pub fn fold_count(schema: &mut Schema) {
        FOLDS_RANGE.attach(schema);
    }
    pub fn model_name(schema: &mut Schema) {
        max_length(schema, MODEL_NAME_MAX_LENGTH);
        MODEL_NAME.attach(schema);
    }
    pub fn alias(schema: &mut Schema) {
        max_length(schema, ALIAS_MAX_LENGTH);
        ALIAS_NAME.attach(schema);
    }
    pub fn version_or_alias(schema: &mut Schema) {
        VERSION_OR_ALIAS.attach(schema);
    }
    pub fn alpha(schema: &mut Schema) {
        ALPHA_RANGE.attach(schema);
    }
    pub fn folds(schema: &mut Schema) {
        FOLDS_RANGE.attach(schema);
        FOLD_ASSIGNMENT_IMMUTABLE.attach(schema);
    }
    pub fn fold_seed(schema: &mut Schema) {
        FOLD_ASSIGNMENT_IMMUTABLE.attach(schema);
    }
    pub fn cross_validation_spec(schema: &mut Schema) {
        TEMPLATE_WITHOUT_COMPARE_TO.attach(schema);
        TEMPLATE_WITHOUT_PUBLISH.attach(schema);
        TEMPLATE_WITHOUT_VALIDATION_SPLIT.attach(schema);
    }
    pub fn ensemble_spec(schema: &mut Schema) {
        MEMBERS_OR_CROSS_VALIDATION.attach(schema);
    }
    pub fn ensemble_members(schema: &mut Schema) {
        max_items(schema, MAX_ENSEMBLE_MEMBERS);
        MEMBERS_AT_LEAST_TWO.attach(schema);
    }
    pub fn model_spec(schema: &mut Schema) {
        MODEL_SPEC_IMMUTABLE.attach(schema);
    }
    pub fn model_configuration(schema: &mut Schema) {
        CONFIGURATION_EXACTLY_ONE.attach(schema);
    }
    pub fn ensemble_configuration_members(schema: &mut Schema) {
        max_items(schema, MAX_ENSEMBLE_MEMBERS);
        ENSEMBLE_CONFIGURATION_MEMBERS.attach(schema);
    }
    pub fn digest(schema: &mut Schema) {
        max_length(schema, DIGEST_LENGTH);
        SHA256_DIGEST.attach(schema);
    }
    pub fn artifact_files(schema: &mut Schema) {
        max_items(schema, MAX_ARTIFACT_FILES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_kubernetes() {
        for good in ["a", "hippocampus", "unet-3d", "0abc9"] {
            assert!(is_dns1123_label(good, 50), "{good}");
        }
        for bad in ["", "-a", "a-", "Hippo", "a_b", "a.b", &"a".repeat(51)] {
            assert!(!is_dns1123_label(bad, 50), "{bad}");
        }
    }

    #[test]
    fn digests_are_lowercase_sha256() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_sha256_digest(&format!("sha256:{hex}")));
        assert!(!is_sha256_digest(&format!("sha256:{}", hex.to_uppercase())));
        assert!(!is_sha256_digest(&format!("md5:{hex}")));
        assert!(!is_sha256_digest(&format!("sha256:{}", &hex[1..])));
    }

    #[test]
    fn name_lengths_are_bounded_by_the_schema_where_the_name_rules_apply() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::Experiment::crd()).unwrap();
        let publish =
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/publish/properties";
        let model = crd.pointer(&format!("{publish}/model")).unwrap();
        assert_eq!(model["maxLength"], MODEL_NAME_MAX_LENGTH);
        assert_eq!(
            model["x-kubernetes-validations"][0]["rule"],
            MODEL_NAME.rule
        );
        let alias = crd
            .pointer(&format!("{publish}/promote/properties/alias"))
            .unwrap();
        assert_eq!(alias["maxLength"], ALIAS_MAX_LENGTH);
        assert_eq!(
            alias["x-kubernetes-validations"][0]["rule"],
            ALIAS_NAME.rule
        );
    }
}
