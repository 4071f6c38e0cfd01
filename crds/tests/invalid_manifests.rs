//! One small invalid manifest per validation rule, under `tests/data/invalid/`.
//!
//! Each fixture says in its header what it expects:
//! - `# expect: <field path>: <message>`: every error, exactly (one line each);
//! - `# expect-parse-error: <text>`: the manifest does not even parse (an unknown enum value);
//! - `# old: <file>`: an update of `tests/data/valid/<file>`, checked by `validate_update`;
//! - `# api-server: schema`: the API server rejects it through an OpenAPI bound or enum, in
//!   its own words, rather than through one of our CEL rules.
//!
//! The same fixtures are run through the CEL rules of the generated CRDs (evaluated by
//! kube-cel, without an API server): a CEL rule must report exactly the field and message the
//! Rust check does, and no rule may fire on a valid manifest.

use std::path::{Path, PathBuf};

use kube::{CustomResourceExt, core::cel::Validator};
use serde_json::Value;
use voxel_crds::{
    CrossValidation, Ensemble, Experiment, Model, ValidationErrors, cel,
    manifest::{Manifest, ManifestError, parse_manifest},
};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Who rejects a fixture in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiServer {
    /// One of our CEL rules, with our message.
    Cel,
    /// An OpenAPI bound or enum of the schema, in the API server's words.
    Schema,
}

struct Fixture {
    path: PathBuf,
    text: String,
    expect: Vec<String>,
    parse_error: Option<String>,
    old: Option<PathBuf>,
    api_server: ApiServer,
}

fn fixtures() -> Vec<Fixture> {
    let dir = data_dir().join("invalid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures under {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut fixture = Fixture {
                path,
                text: text.clone(),
                expect: Vec::new(),
                parse_error: None,
                old: None,
                api_server: ApiServer::Cel,
            };
            for line in text.lines().take_while(|l| l.starts_with('#')) {
                if let Some(e) = line.strip_prefix("# expect: ") {
                    fixture.expect.push(e.to_string());
                } else if let Some(e) = line.strip_prefix("# expect-parse-error: ") {
                    fixture.parse_error = Some(e.to_string());
                } else if let Some(old) = line.strip_prefix("# old: ") {
                    fixture.old = Some(data_dir().join("valid").join(old));
                } else if line == "# api-server: schema" {
                    fixture.api_server = ApiServer::Schema;
                }
            }
            let p = fixture.path.display();
            assert!(
                !fixture.expect.is_empty() || fixture.parse_error.is_some(),
                "{p} expects nothing"
            );
            fixture
        })
        .collect()
}

fn lines(errors: ValidationErrors) -> Vec<String> {
    let mut lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    lines.sort();
    lines
}

/// The errors of an update from `old` to `new`; both must be valid on their own.
fn update_errors(old: &Manifest, new: &Manifest) -> Vec<String> {
    let result = match (old, new) {
        (Manifest::Experiment(old), Manifest::Experiment(new)) => {
            new.spec.validate_update(&old.spec)
        }
        (Manifest::CrossValidation(old), Manifest::CrossValidation(new)) => {
            new.spec.validate_update(&old.spec)
        }
        (Manifest::Model(old), Manifest::Model(new)) => new.spec.validate_update(&old.spec),
        _ => panic!("no update rules for {} to {}", old.kind(), new.kind()),
    };
    result.err().map(lines).unwrap_or_default()
}

fn read_valid(path: &Path) -> Manifest {
    let text = std::fs::read_to_string(path).unwrap();
    parse_manifest(&text, path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_field_and_message() {
    for fixture in fixtures() {
        let p = fixture.path.display();
        let mut expect = fixture.expect.clone();
        expect.sort();
        let result = parse_manifest(&fixture.text, &fixture.path);
        let errors = match (&fixture.parse_error, &fixture.old, result) {
            (Some(words), _, Err(ManifestError::Parse { source, .. })) => {
                let message = source.to_string();
                assert!(message.contains(words), "{p}: {message}");
                continue;
            }
            (None, None, Err(ManifestError::Invalid { source, .. })) => lines(source),
            (None, Some(old), Ok(new)) => update_errors(&read_valid(old), &new),
            (_, _, result) => panic!("{p}: unexpected outcome {result:?}"),
        };
        assert_eq!(errors, expect, "{p}");
    }
}

#[test]
fn every_cel_rule_message_has_a_fixture() {
    let fixtures = fixtures();
    for rule in cel::ALL {
        let covered = fixtures.iter().any(|f| {
            f.expect
                .iter()
                .any(|e| e.ends_with(&format!(": {}", rule.message)))
        });
        assert!(covered, "no fixture for the rule {:?}", rule.rule);
    }
}

/// The openAPIV3Schema of the CRD of `kind`.
fn schema(kind: &str) -> Value {
    let crd = match kind {
        "Experiment" => Experiment::crd(),
        "CrossValidation" => CrossValidation::crd(),
        "Ensemble" => Ensemble::crd(),
        "Model" => Model::crd(),
        _ => panic!("unknown kind {kind}"),
    };
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn yaml_to_json(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// The errors the CEL rules of the CRD report for `object` (updating `old`, if given).
fn cel_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let result = Validator::new().validate(&schema(kind), object, old);
    let mut errors: Vec<String> = match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    };
    errors.sort();
    errors
}

#[test]
fn every_cel_rule_compiles() {
    for kind in voxel_crds::manifest::KINDS {
        let compiled = kube::core::cel::compile_schema(&schema(kind));
        let errors = compiled.compilation_errors();
        assert!(errors.is_empty(), "{kind}: {errors:?}");
    }
}

#[test]
fn the_cel_rules_reject_each_fixture_with_the_same_field_and_message() {
    for fixture in fixtures() {
        let p = fixture.path.display();
        let object = yaml_to_json(&fixture.text);
        let old = fixture
            .old
            .as_ref()
            .map(|path| yaml_to_json(&std::fs::read_to_string(path).unwrap()));
        let errors = cel_errors(&object, old.as_ref());
        let mut expect = match fixture.api_server {
            ApiServer::Cel => fixture.expect.clone(),
            // Rejected by the schema's own bounds; no CEL rule may report it a second time.
            ApiServer::Schema => Vec::new(),
        };
        expect.sort();
        assert_eq!(errors, expect, "{p}");
    }
}

#[test]
fn no_cel_rule_fires_on_a_valid_manifest_or_an_unchanged_update() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data_dir().join("valid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hippocampus");
    paths.extend(
        std::fs::read_dir(examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    for path in paths {
        let object = yaml_to_json(&std::fs::read_to_string(&path).unwrap());
        let p = path.display();
        assert_eq!(cel_errors(&object, None), Vec::<String>::new(), "{p}");
        assert_eq!(
            cel_errors(&object, Some(&object)),
            Vec::<String>::new(),
            "{p} updated to itself"
        );
    }
}
