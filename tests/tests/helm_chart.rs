//! The Helm chart (`charts/voxel`) on the test control plane: it lints, its rendering is accepted
//! by the API server, and the operator runs with the arguments of the rendered Deployment.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use kube::{Api, runtime::wait::await_condition};
use voxel_crds::{Experiment, experiment::ExperimentPhase};
use voxel_e2e::{ControlPlane, control_plane, shrunk_example, workspace_bin};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/voxel")
}

/// helm from the same PyPI wheel as the control plane's kubectl.
fn helm(cluster: &ControlPlane) -> PathBuf {
    cluster
        .kubectl
        .parent()
        .expect("kubectl lies in a folder")
        .join("helm")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `helm template` of the chart for namespace `ns` with `--set` values.
fn render(cluster: &ControlPlane, ns: &str, values: &[&str]) -> String {
    let mut command = Command::new(helm(cluster));
    command
        .args(["template", "voxel"])
        .arg(chart())
        .args(["--namespace", ns]);
    for value in values {
        command.args(["--set", value]);
    }
    String::from_utf8(run(&mut command).stdout).expect("YAML is text")
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_chart_lints_and_the_api_server_accepts_its_rendering() {
    let Some(cluster) = control_plane() else {
        return;
    };
    run(Command::new(helm(&cluster))
        .arg("lint")
        .arg("--strict")
        .arg(chart()));
    cluster.install_crds();
    let namespace = cluster.namespace("chart");
    let ns = namespace.name.as_str();
    for values in [
        vec![],
        vec![
            "operator.watchNamespace=".to_string() + ns,
            "dashboard.enabled=true".into(),
        ],
        vec![
            "operator.leaderElection=false".into(),
            "artifacts.defaultClaim=runs".into(),
        ],
        vec![
            "operator.watchNamespace=".to_string() + ns,
            "artifacts.claimMounts[0].claim=voxel-artifacts".into(),
            "artifacts.claimMounts[0].path=/mnt/artifacts".into(),
            "artifacts.claimMounts[1].claim=hippocampus-mri".into(),
            "artifacts.claimMounts[1].path=/mnt/data".into(),
        ],
    ] {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let rendered = render(&cluster, ns, &values);
        let output = cluster.kubectl(
            &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
            Some(&rendered),
        );
        assert!(
            output.status.success(),
            "{values:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Claims mount only into a pod of their own namespace.
    let output = Command::new(helm(&cluster))
        .args(["template", "voxel"])
        .arg(chart())
        .args(["--namespace", "voxel-system"])
        .args(["--set", "operator.watchNamespace=team"])
        .args(["--set", "artifacts.claimMounts[0].claim=voxel-artifacts"])
        .args(["--set", "artifacts.claimMounts[0].path=/mnt/artifacts"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(
                "artifacts.claimMounts: the operator can mount claims of its own namespace only"
            ),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_operator_runs_with_the_rendered_deployment_arguments() {
    let Some(cluster) = control_plane() else {
        return;
    };
    cluster.install_crds();
    let namespace = cluster.namespace("chart-run");
    let ns = namespace.name.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The claim a pod would mount; here a folder the operator process reads.
    let mount = tempfile::tempdir().unwrap();
    let rendered = render(
        &cluster,
        &ns,
        &[
            &format!("operator.watchNamespace={ns}"),
            &format!("metrics.port={port}"),
            "artifacts.claimMounts[0].claim=voxel-artifacts",
            &format!("artifacts.claimMounts[0].path={}", mount.path().display()),
        ],
    );
    let deployment = rendered
        .split("\n---")
        .map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).unwrap_or_default())
        .find(|doc| doc["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        args.contains(&"--leader-elect=true".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&format!(
            "--claim-mount=voxel-artifacts={}",
            mount.path().display()
        )),
        "{args:?}"
    );
    assert_eq!(container["volumeMounts"][0]["name"], "claim-0");
    assert_eq!(container["volumeMounts"][0]["readOnly"], true);
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "voxel-artifacts"
    );
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);

    // The Deployment's own arguments; the downward API's variables as a pod would get them.
    let log = tempfile::NamedTempFile::new().unwrap();
    let operator = Command::new(workspace_bin("voxel"))
        .args(&args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("POD_NAME", "voxel-operator-test")
        .env("POD_NAMESPACE", &ns)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let _operator = KillOnDrop(operator);

    let mut manifest = shrunk_example("experiment-cluster.yaml", 2);
    manifest["spec"]["suspend"] = true.into();
    let text = serde_yaml::to_string(&manifest).unwrap();
    cluster.kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&text));
    let client = cluster.client().await.unwrap();
    let experiments: Api<Experiment> = Api::namespaced(client.clone(), &ns);
    let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
    let suspended = |e: Option<&Experiment>| {
        e.and_then(|e| e.status.as_ref())
            .is_some_and(|s| s.phase == Some(ExperimentPhase::Suspended))
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(experiments, &name, suspended),
    )
    .await;
    assert!(
        matches!(waited, Ok(Ok(Some(_)))),
        "the operator did not reconcile: {waited:?}\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, &ns);
    let lease = leases
        .get("voxel-operator")
        .await
        .expect("the leader Lease is in POD_NAMESPACE");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("voxel-operator-test")
    );
}

#[test]
fn the_dashboard_queries_only_metrics_the_operator_exports() {
    let path = chart().join("dashboards/voxel-operator.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exported = voxel_operator::cluster::metrics::OperatorMetrics::new().encode();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("voxel_") {
                    queried += 1;
                    // A family is declared even before its first labelled sample.
                    let family = word.trim_end_matches("_bucket").trim_end_matches("_total");
                    let declared = format!("# TYPE {family} ");
                    assert!(
                        exported.lines().any(|l| l.starts_with(&declared)),
                        "{}: {word} is not exported:\n{exported}",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(queried >= 8, "{queried}");
}
