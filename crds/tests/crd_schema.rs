//! The generated CRDs are what `kubectl` users need: structural schemas with a description on
//! every field, a status subresource, short names, the `voxel` category, printer columns, and
//! a size that client-side `kubectl apply` accepts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;
use voxel_crds::{CrossValidation, Ensemble, Experiment, Model};

/// Largest annotation a client-side `kubectl apply` can store (`last-applied-configuration`).
const ANNOTATION_LIMIT_BYTES: usize = 262_144;

fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Experiment::crd(),
        CrossValidation::crd(),
        Ensemble::crd(),
        Model::crd(),
    ]
}

fn schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// Calls `visit(path, node)` for every schema node below `node`.
fn walk(node: &Value, path: &str, visit: &mut impl FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(values, &format!("{path}{{}}"), visit);
    }
}

#[test]
fn every_field_has_a_description() {
    let mut missing = Vec::new();
    for crd in crds() {
        let kind = crd.spec.names.kind.clone();
        walk(&schema(&crd), &kind, &mut |path, node| {
            // The items of a list (or the values of a map) of strings or numbers are explained
            // by the field that holds them.
            let scalar_item =
                (path.ends_with("[]") || path.ends_with("{}")) && node.get("properties").is_none();
            if node.get("description").is_none() && !scalar_item {
                missing.push(path.to_string());
            }
        });
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn every_schema_is_structural() {
    let mut problems = Vec::new();
    for crd in crds() {
        let kind = crd.spec.names.kind.clone();
        walk(&schema(&crd), &kind, &mut |path, node| {
            // A quantity (`4`, `16Gi`) is the one kind of value allowed to be either type.
            let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            if node.get("type").is_none() && !int_or_string {
                problems.push(format!("{path} has no type"));
            }
            for keyword in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
                if node.get(keyword).is_some() {
                    problems.push(format!("{path} uses {keyword}"));
                }
            }
        });
    }
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn every_crd_fits_a_client_side_apply() {
    for crd in crds() {
        let bytes = serde_json::to_string(&crd).unwrap().len();
        let name = crd.metadata.name.unwrap();
        // Well under the limit, to leave room for the API to grow.
        assert!(
            bytes < ANNOTATION_LIMIT_BYTES / 2,
            "{name} is {bytes} bytes, close to the {ANNOTATION_LIMIT_BYTES}-byte annotation limit"
        );
    }
}

#[test]
fn every_crd_has_status_category_short_name_and_columns() {
    let short_names = [
        ("Experiment", "vxexp"),
        ("CrossValidation", "vxcv"),
        ("Ensemble", "vxens"),
        ("Model", "vxmodel"),
    ];
    for (crd, (kind, short_name)) in crds().into_iter().zip(short_names) {
        let names = &crd.spec.names;
        assert_eq!(names.kind, kind);
        assert_eq!(
            names.short_names.as_deref(),
            Some(&[short_name.to_string()][..])
        );
        assert_eq!(
            names.categories.as_deref(),
            Some(&["voxel".to_string()][..])
        );
        assert_eq!(crd.spec.group, "voxel.dev");
        assert_eq!(crd.spec.scope, "Namespaced");

        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let subresources = version.subresources.as_ref().unwrap();
        assert!(
            subresources.status.is_some(),
            "{kind} has no status subresource"
        );

        let columns = version.additional_printer_columns.as_ref().unwrap();
        let column = |name: &str| columns.iter().find(|c| c.name == name);
        let age = column("Age").unwrap_or_else(|| panic!("{kind} has no Age column"));
        assert_eq!(age.json_path, ".metadata.creationTimestamp");
        if kind != "Model" {
            for condition in ["Running", "Succeeded"] {
                let column = column(condition).unwrap();
                let path = format!(".status.conditions[?(@.type==\"{condition}\")].status");
                assert_eq!(column.json_path, path);
            }
            assert!(
                column("Test Dice").is_some(),
                "{kind} has no headline metric"
            );
        }
    }
}

/// The field names of a JSONPath, filters left out:
/// `.status.conditions[?(@.type=="Running")].status` gives status, conditions, status.
fn field_names(json_path: &str) -> Vec<String> {
    let mut depth = 0;
    let without_filters: String = json_path
        .chars()
        .filter(|c| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => return depth == 0,
            }
            false
        })
        .collect();
    without_filters
        .split('.')
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_printer_column_points_at_a_field_of_the_schema() {
    for crd in crds() {
        let schema = schema(&crd);
        let version = &crd.spec.versions[0];
        for column in version.additional_printer_columns.as_ref().unwrap() {
            if column.json_path.starts_with(".metadata") {
                continue;
            }
            let mut node = &schema;
            for name in field_names(&column.json_path) {
                if node.get("type") == Some(&Value::from("array")) {
                    node = &node["items"];
                }
                node = node
                    .get("properties")
                    .and_then(|p| p.get(&name))
                    .unwrap_or_else(|| panic!("{}: no field {name}", column.json_path));
            }
        }
    }
}
