//! The generated CRDs on a real kube-apiserver (the test control plane of
//! `scripts/control-plane.sh`): they install, every example manifest is accepted, and every
//! invalid fixture of `crds/tests/data/invalid/` is rejected by the API server itself with the
//! field and the message that `voxel validate` reports — so that local mode and the cluster
//! refuse the same manifests in the same words.

use std::path::{Path, PathBuf};

use voxel_e2e::{ControlPlane, control_plane};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn setup() -> Option<ControlPlane> {
    let cluster = control_plane()?;
    cluster.install_crds();
    Some(cluster)
}

#[test]
fn the_api_server_accepts_every_example_manifest() {
    let Some(cluster) = setup() else { return };
    let namespace = cluster.namespace("voxel-examples");
    let examples = yaml_files(&repo("examples/hippocampus"));
    assert!(examples.len() >= 4, "{examples:?}");
    for example in examples {
        let path = example.display().to_string();
        let out = cluster.kubectl_ok(
            &[
                "create",
                "--dry-run=server",
                "-n",
                &namespace.name,
                "-f",
                &path,
            ],
            None,
        );
        assert!(out.contains("created (server dry run)"), "{path}: {out}");
    }
}

/// A fixture's expectations, from its header (see `crds/tests/invalid_manifests.rs`).
struct Fixture {
    path: PathBuf,
    text: String,
    expect: Vec<(String, String)>,
    parse_error: bool,
    old: Option<PathBuf>,
    schema: bool,
}

fn fixtures() -> Vec<Fixture> {
    yaml_files(&repo("crds/tests/data/invalid"))
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut fixture = Fixture {
                path,
                text: text.clone(),
                expect: Vec::new(),
                parse_error: false,
                old: None,
                schema: false,
            };
            for line in text.lines().take_while(|l| l.starts_with('#')) {
                if let Some(e) = line.strip_prefix("# expect: ") {
                    let (field, message) = e.split_once(": ").expect("`field: message`");
                    fixture
                        .expect
                        .push((field.to_string(), message.to_string()));
                } else if line.starts_with("# expect-parse-error: ") {
                    fixture.parse_error = true;
                } else if let Some(old) = line.strip_prefix("# old: ") {
                    fixture.old = Some(repo("crds/tests/data/valid").join(old));
                } else if line == "# api-server: schema" {
                    fixture.schema = true;
                }
            }
            fixture
        })
        .collect()
}

/// `text` with `metadata.name` replaced, so that an update fixture's old object has its name.
fn renamed(text: &str, name: &str) -> String {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    value["metadata"]["name"] = name.into();
    serde_yaml::to_string(&value).unwrap()
}

#[test]
fn the_api_server_rejects_every_invalid_fixture_with_the_field_and_message_of_voxel_validate() {
    let Some(cluster) = setup() else { return };
    let namespace = cluster.namespace("voxel-invalid");
    let ns = namespace.name.as_str();
    let mut failures = Vec::new();
    for fixture in fixtures() {
        let p = fixture
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let output = match &fixture.old {
            // An update: the old object exists, the new one is refused by a transition rule.
            Some(old) => {
                let value: serde_yaml::Value = serde_yaml::from_str(&fixture.text).unwrap();
                let name = value["metadata"]["name"].as_str().unwrap().to_string();
                let old_text = renamed(&std::fs::read_to_string(old).unwrap(), &name);
                cluster.kubectl_ok(&["create", "-n", ns, "-f", "-"], Some(&old_text));
                let update = [
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--dry-run=server",
                    "-n",
                    ns,
                    "-f",
                    "-",
                ];
                let output = cluster.kubectl(&update, Some(&fixture.text));
                // Several fixtures update objects of the same name.
                cluster.kubectl_ok(&["delete", "--wait", "-n", ns, "-f", "-"], Some(&old_text));
                output
            }
            None => cluster.kubectl(
                &["create", "--dry-run=server", "-n", ns, "-f", "-"],
                Some(&fixture.text),
            ),
        };
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            failures.push(format!("{p}: accepted"));
            continue;
        }
        if fixture.parse_error {
            // An unknown enum value: the API server names it in its own words.
            if !stderr.contains("Unsupported value") {
                failures.push(format!("{p}: {stderr}"));
            }
            continue;
        }
        for (field, message) in &fixture.expect {
            // The API server quotes the field; with our CEL rules also our message. An OpenAPI
            // bound is reported in the API server's own words.
            let named = stderr.contains(&format!("{field}:"));
            let worded = fixture.schema || stderr.contains(message.as_str());
            if !named || !worded {
                failures.push(format!(
                    "{p}: expected `{field}: {message}`, got: {}",
                    stderr.trim()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
