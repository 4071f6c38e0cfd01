//! The GitOps round trip on the test control plane: every example manifest, applied
//! server-side as Argo CD does and read back, has exactly the fields the user wrote (defaults
//! live in the schema and are not written back as differences), `kubectl diff --server-side`
//! finds nothing, and with the operator reconciling them, it still finds nothing: the operator
//! writes status, never `.spec`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use voxel_e2e::{ControlPlane, control_plane, workspace_bin};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hippocampus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every leaf of `written` equals the same path of `read` (numbers compared as numbers);
/// returns the paths that differ.
fn differences(written: &Value, read: &Value, path: &str, out: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                match r.get(key) {
                    Some(other) => differences(value, other, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}: missing when read back")),
                }
            }
        }
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => {
            for (i, (a, b)) in w.iter().zip(r).enumerate() {
                differences(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: wrote {a}, read {b}")),
    }
}

fn kubectl_diff(cluster: &ControlPlane, ns: &str, file: &Path) -> (i32, String) {
    let output = Command::new(&cluster.kubectl)
        .args(["--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .args([
            "diff",
            "--server-side",
            "--field-manager=gitops",
            "-n",
            ns,
            "-f",
        ])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Applies `file` server-side into a namespace of its own (two examples share a name), lets an
/// operator reconcile it, and checks the spec read back and `kubectl diff`.
async fn round_trip(cluster: &ControlPlane, file: &Path) {
    let namespace = cluster.namespace("gitops");
    let ns = namespace.name.clone();
    let path = file.display().to_string();
    cluster.kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "-n",
            &ns,
            "-f",
            &path,
        ],
        None,
    );
    let written: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let kind = written["kind"].as_str().unwrap().to_lowercase();
    let name = written["metadata"]["name"].as_str().unwrap();

    // The operator reconciles what it can (there is no node: a pod would stay pending).
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut operator = Command::new(workspace_bin("voxel"))
        .args(["operator", "--namespace", &ns, "--leader-elect=false"])
        .args([
            "--metrics-address",
            "127.0.0.1:0",
            "--trainer-image",
            "voxel-trainer:test",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    if kind == "experiment" {
        // Wait until it has written the status.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let json = cluster.kubectl_ok(&["get", &kind, name, "-n", &ns, "-o", "json"], None);
            let object: Value = serde_json::from_str(&json).unwrap();
            if object["status"]["phase"].is_string() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path}: the operator wrote no status:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let json = cluster.kubectl_ok(
        &[
            "get",
            &kind,
            name,
            "-n",
            &ns,
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    );
    let read: Value = serde_json::from_str(&json).unwrap();
    let mut diffs = Vec::new();
    differences(&written["spec"], &read["spec"], "spec", &mut diffs);
    assert!(diffs.is_empty(), "{path}: {diffs:#?}");
    // Nobody but the GitOps tool owns a field of the spec.
    for entry in read["metadata"]["managedFields"].as_array().unwrap() {
        if entry["fieldsV1"].get("f:spec").is_some() {
            assert_eq!(entry["manager"], "gitops", "{path}: {entry}");
        }
    }
    let (code, text) = kubectl_diff(cluster, &ns, file);
    assert_eq!(code, 0, "{path}: kubectl diff found a difference:\n{text}");
    let _ = operator.kill();
    let _ = operator.wait();
}

#[tokio::test]
async fn every_example_round_trips_without_a_difference_with_the_operator_running() {
    let Some(cluster) = control_plane() else {
        return;
    };
    cluster.install_crds();
    let files = examples();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        round_trip(&cluster, file).await;
    }
}
