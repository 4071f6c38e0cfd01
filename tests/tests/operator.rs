//! `voxel operator` against the real test control plane: Experiments from `examples/` become
//! trainer pods that the process-backed test node runs with the real `voxel-trainer`, on the
//! shipped MRI. Each test has a namespace, a node and an operator process of its own, and waits
//! on the Experiment's status, never on fixed sleeps (except the one minute of watching an idle
//! operator, which is the point of that test).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::wait::await_condition,
};
use voxel_crds::{
    CrossValidation, Ensemble, Experiment, Model,
    common::ConditionStatus,
    experiment::{ExperimentPhase, ExperimentStatus},
};
use voxel_e2e::{
    ControlPlane, Namespace, control_plane, example_data,
    node::{self, NodeOptions, TestNode},
    read_json, shrunk_example, workspace_bin,
};

/// The most a shrunk example may take to train and evaluate, with other tests training at the
/// same time on two cores.
const TRAINING_TIMEOUT: Duration = Duration::from_secs(600);

/// The claims of the cluster example.
const DATA_CLAIM: &str = "hippocampus-mri";
const ARTIFACTS_CLAIM: &str = "voxel-artifacts";

/// One test's cluster: a namespace, a GPU spot node running pods as processes, the example's
/// two claims bound to host folders, and an operator watching the namespace.
struct Cluster {
    control_plane: ControlPlane,
    namespace: Namespace,
    client: Client,
    node: Option<TestNode>,
    operator: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start(prefix: &str, gpus: u32) -> Option<Cluster> {
        let mut cluster = Self::without_operator(prefix, gpus).await?;
        cluster.start_operator();
        Some(cluster)
    }

    /// The cluster of [`Cluster::start`] before any operator runs.
    async fn without_operator(prefix: &str, gpus: u32) -> Option<Cluster> {
        let control_plane = control_plane()?;
        control_plane.install_crds();
        let namespace = control_plane.namespace(prefix);
        let client = control_plane.client().await.expect("a client");
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let ns = namespace.name.clone();
        let artifacts = tmp.path().join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        node::bind_claim(&client, &ns, DATA_CLAIM, &example_data())
            .await
            .unwrap();
        node::bind_claim(&client, &ns, ARTIFACTS_CLAIM, &artifacts)
            .await
            .unwrap();
        let mut options = NodeOptions::new(ns.clone(), tmp.path().join("sandboxes"));
        options.gpus = gpus;
        options.spot = true;
        options
            .commands
            .insert("voxel-trainer".into(), workspace_bin("voxel-trainer"));
        let node = TestNode::start(client.clone(), options).await.unwrap();
        // Pods are refused until the serviceaccount controller made the default account.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(accounts, "default", |a: Option<&ServiceAccount>| {
                a.is_some()
            }),
        )
        .await
        .expect("the default service account appears")
        .unwrap();
        Some(Cluster {
            control_plane,
            namespace,
            client,
            node: Some(node),
            operator: None,
            tmp,
        })
    }

    fn ns(&self) -> &str {
        &self.namespace.name
    }

    fn node(&self) -> &TestNode {
        self.node.as_ref().expect("the node runs")
    }

    /// Starts `voxel operator` for this namespace without leader election, its log appended
    /// to `operator.log`.
    fn start_operator(&mut self) {
        let child = self.spawn_operator(
            &["--leader-elect=false", "--metrics-address", "127.0.0.1:0"],
            "operator.log",
        );
        self.operator = Some(child);
    }

    /// A `voxel operator` process for this namespace with `extra` arguments, its log in `log`.
    fn spawn_operator(&self, extra: &[&str], log: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(log))
            .unwrap();
        Command::new(workspace_bin("voxel"))
            .args([
                "operator",
                "--namespace",
                self.ns(),
                "--trainer-image",
                "voxel-trainer:test",
                "--trainer-device",
                "auto",
                "--scrape-interval",
                "1",
                "--claim-mount",
                &format!(
                    "{ARTIFACTS_CLAIM}={}",
                    self.tmp.path().join("artifacts").display()
                ),
                "--claim-mount",
                &format!("{DATA_CLAIM}={}", example_data().display()),
            ])
            .args(extra)
            .env("KUBECONFIG", &self.control_plane.kubeconfig)
            .env("RUST_LOG", "info,voxel_operator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("voxel operator starts")
    }

    /// Kills the operator at once, as a crashed process or a lost node would.
    fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn operator_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("operator.log")).unwrap_or_default()
    }

    /// The cluster example, shrunk to train in seconds, named `name`, placed on this test's
    /// node (its nodeSelector and toleration next to the example's spot setting).
    fn example(&self, name: &str, epochs: u32) -> serde_yaml::Value {
        let mut manifest = shrunk_example("experiment-cluster.yaml", epochs);
        manifest["metadata"]["name"] = name.into();
        let (selector, tolerations) = self.node().pod_placement();
        let scheduling = &mut manifest["spec"]["scheduling"];
        scheduling["nodeSelector"] = serde_yaml::to_value(selector).unwrap();
        scheduling["tolerations"] = serde_yaml::to_value(tolerations).unwrap();
        // The test node has 16 "CPUs" and 64Gi: the example's requests fit.
        manifest
    }

    fn apply(&self, manifest: &serde_yaml::Value) {
        let text = serde_yaml::to_string(manifest).unwrap();
        self.control_plane
            .kubectl_ok(&["apply", "-n", self.ns(), "-f", "-"], Some(&text));
    }

    fn experiments(&self) -> Api<Experiment> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// Waits until the Experiment's status satisfies `condition`; panics with the status and the
    /// operator's log otherwise.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        condition: impl Fn(&ExperimentStatus) -> bool + Send + 'static,
    ) -> Experiment {
        let matches =
            move |e: Option<&Experiment>| e.and_then(|e| e.status.as_ref()).is_some_and(&condition);
        let waited =
            tokio::time::timeout(limit, await_condition(self.experiments(), name, matches)).await;
        match waited {
            Ok(Ok(Some(experiment))) => experiment,
            other => {
                let now = self.experiments().get_opt(name).await;
                panic!(
                    "Experiment {name}: not {what} within {limit:?} ({other:?}); status now \
                     {:#?}\noperator log:\n{}",
                    now.ok().flatten().and_then(|e| e.status),
                    tail(&self.operator_log(), 6000)
                )
            }
        }
    }

    /// Waits until the operator has scraped at least `epoch` finished epochs of `name`.
    async fn wait_for_epoch(&self, name: &str, epoch: u32) {
        self.wait_for(
            name,
            &format!("past epoch {epoch}"),
            TRAINING_TIMEOUT,
            move |s| s.progress.as_ref().is_some_and(|p| p.epoch >= epoch),
        )
        .await;
    }

    /// What the trainer of pod `pod` wrote to stderr (empty if it never ran).
    fn trainer_log(&self, pod: &str) -> String {
        let path = self
            .node()
            .sandbox_dir(self.ns(), pod)
            .join("trainer.stderr");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Sets `spec.suspend` of `name` as a user would, with `kubectl patch`.
    fn set_suspend(&self, name: &str, suspend: bool) {
        let patch = format!(r#"{{"spec":{{"suspend":{suspend}}}}}"#);
        self.control_plane.kubectl_ok(
            &[
                "patch",
                "-n",
                self.ns(),
                "experiment",
                name,
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        );
    }

    async fn wait_finished(&self, name: &str) -> Experiment {
        self.wait_for(name, "finished", TRAINING_TIMEOUT, |s| {
            matches!(
                s.phase,
                Some(ExperimentPhase::Succeeded | ExperimentPhase::Failed)
            )
        })
        .await
    }

    /// The trainer's own summary of an Experiment's run, from the artifact claim.
    fn summary(&self, name: &str) -> serde_json::Value {
        let dir = self.artifact_dir(name);
        read_json(&dir.join("summary.json"))
    }

    fn artifact_dir(&self, name: &str) -> PathBuf {
        self.tmp
            .path()
            .join("artifacts/experiments")
            .join(self.ns())
            .join(name)
    }

    /// The trainer pods of an Experiment.
    async fn trainer_pods(&self, name: &str) -> Vec<Pod> {
        let selector = format!("voxel.dev/experiment={name}");
        self.pods()
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
    }

    /// Reasons of the Events about an Experiment, oldest first, once all of `expected` are
    /// among them (the operator publishes Events after the status they describe), or after 30 s.
    async fn event_reasons(&self, name: &str, expected: &[&str]) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.ns());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut items = events.list(&ListParams::default()).await.unwrap().items;
            items.retain(|e| e.involved_object.name.as_deref() == Some(name));
            items.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
            let reasons: Vec<String> = items.into_iter().filter_map(|e| e.reason).collect();
            let complete = expected.iter().all(|r| reasons.iter().any(|x| x == r));
            if complete || tokio::time::Instant::now() > deadline {
                return reasons;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_operator();
        if std::thread::panicking() {
            // Every operator log of the test: the default one and those of named replicas.
            for entry in std::fs::read_dir(self.tmp.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    eprintln!("{}:\n{}", path.display(), tail(&text, 8000));
                }
            }
        }
        // The node kills its processes when dropped; its Node object is left, like the
        // namespace's PersistentVolumes.
        self.node.take();
    }
}

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[start..]
}

/// The test metrics in a status, as `structure → metric → mean`.
fn status_means(status: &ExperimentStatus) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    let value = serde_json::to_value(&status.metrics).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|structure| {
            let name = structure["structure"].as_str().unwrap().to_string();
            let means = structure
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(metric, v)| (metric.clone(), v["mean"].as_f64()))
                .collect();
            (name, means)
        })
        .collect()
}

/// The means of the trainer's summary.json, keyed as [`status_means`] keys them (the status
/// names metrics in camelCase).
fn summary_means(summary: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    summary["structures"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(structure, metrics)| {
            let means = metrics
                .as_object()
                .unwrap()
                .iter()
                .map(|(metric, a)| (camel_case(metric), a["mean"].as_f64()))
                .collect();
            (structure.clone(), means)
        })
        .collect()
}

fn camel_case(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn an_example_experiment_succeeds_with_its_metrics_in_status_and_then_writes_nothing() {
    let Some(cluster) = Cluster::start("op-success", 1).await else {
        return;
    };
    let name = "hippocampus";
    cluster.apply(&cluster.example(name, 3));

    let done = cluster.wait_finished(name).await;
    let status = done.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Some(ExperimentPhase::Succeeded),
        "{status:#?}"
    );
    assert_eq!(status.attempts.len(), 1, "{:#?}", status.attempts);
    let attempt = &status.attempts[0];
    assert_eq!(attempt.pod, "hippocampus-attempt-1");
    assert_eq!(
        (attempt.exit_code, attempt.reason.as_deref()),
        (Some(0), Some("Completed"))
    );
    assert_eq!((status.preemptions, status.retries), (0, 0));
    // The metrics in status are the trainer's own summary of the test subjects.
    let summary = cluster.summary(name);
    assert_eq!(status_means(&status), summary_means(&summary));
    assert_eq!(status.metrics.len(), 2);
    assert!(
        status.mean_dice.is_some_and(|d| d > 0.0 && d <= 1.0),
        "{:?}",
        status.mean_dice
    );
    assert_eq!(
        status.artifacts.as_deref(),
        Some(
            format!(
                "pvc://{ARTIFACTS_CLAIM}/experiments/{}/{name}",
                cluster.ns()
            )
            .as_str()
        )
    );
    // The real trainer ran on the node, and the operator scraped its progress.
    assert_eq!(
        cluster.node().pods_started(),
        vec![format!("{}/hippocampus-attempt-1", cluster.ns())]
    );
    let progress = status
        .progress
        .clone()
        .expect("progress scraped from the trainer");
    assert_eq!((progress.epoch, progress.epochs), (3, 3), "{progress:?}");
    assert!(
        progress.train_loss.is_some() && progress.validation_dice.len() == 2,
        "{progress:?}"
    );

    let pod = cluster.pods().get("hippocampus-attempt-1").await.unwrap();
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Experiment", done.uid().unwrap().as_str())
    );
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let gpu = spec.containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert_eq!(gpu["nvidia.com/gpu"].0, "1");
    let reasons = cluster.event_reasons(name, &["Started", "Completed"]).await;
    assert!(
        reasons.contains(&"Started".into()) && reasons.contains(&"Completed".into()),
        "{reasons:?}"
    );

    // Converged: for a minute the operator writes nothing (it still reconciles on resyncs
    // and would write if it thought something changed).
    let versions = |c: &Cluster| {
        let client = c.client.clone();
        let ns = c.ns().to_string();
        async move {
            let mut seen = BTreeMap::new();
            let experiments: Api<Experiment> = Api::namespaced(client.clone(), &ns);
            for e in experiments.list(&ListParams::default()).await.unwrap() {
                seen.insert(format!("experiment/{}", e.name_any()), e.resource_version());
            }
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            for p in pods.list(&ListParams::default()).await.unwrap() {
                seen.insert(format!("pod/{}", p.name_any()), p.resource_version());
            }
            let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            for m in maps.list(&ListParams::default()).await.unwrap() {
                seen.insert(format!("configmap/{}", m.name_any()), m.resource_version());
            }
            let events: Api<Event> = Api::namespaced(client, &ns);
            for e in events.list(&ListParams::default()).await.unwrap() {
                seen.insert(format!("event/{}", e.name_any()), e.resource_version());
            }
            seen
        }
    };
    let before = versions(&cluster).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = versions(&cluster).await;
    assert_eq!(before, after, "the idle operator wrote something");
}

#[tokio::test]
async fn a_pod_preempted_mid_run_resumes_from_its_checkpoint_to_the_undisturbed_result() {
    let Some(cluster) = Cluster::start("op-preempt", 2).await else {
        return;
    };
    let epochs = 4;
    cluster.apply(&cluster.example("undisturbed", epochs));
    cluster.apply(&cluster.example("preempted", epochs));

    // Preempt once the trainer has checkpointed two epochs (the operator scrapes its progress).
    cluster.wait_for_epoch("preempted", 2).await;
    cluster
        .node()
        .preempt(cluster.ns(), "preempted-attempt-1")
        .await
        .unwrap();

    let preempted = cluster.wait_finished("preempted").await.status.unwrap();
    let undisturbed = cluster.wait_finished("undisturbed").await.status.unwrap();
    assert_eq!(
        preempted.phase,
        Some(ExperimentPhase::Succeeded),
        "{preempted:#?}"
    );
    assert_eq!(
        undisturbed.phase,
        Some(ExperimentPhase::Succeeded),
        "{undisturbed:#?}"
    );
    let reasons: Vec<_> = preempted
        .attempts
        .iter()
        .map(|a| a.reason.clone())
        .collect();
    assert_eq!(
        reasons,
        [
            Some(node::PREEMPTION_REASON.to_string()),
            Some("Completed".into())
        ],
        "{:#?}",
        preempted.attempts
    );
    assert_eq!(preempted.attempts[0].exit_code, Some(143));
    assert_eq!((preempted.preemptions, preempted.retries), (1, 0));
    // The second attempt resumed from the checkpoint instead of starting over.
    let log = cluster.trainer_log("preempted-attempt-2");
    assert!(
        log.contains("resum"),
        "attempt 2 did not resume:\n{}",
        tail(&log, 3000)
    );
    assert_eq!(status_means(&preempted), status_means(&undisturbed));
    assert_eq!(cluster.summary("preempted"), cluster.summary("undisturbed"));
    let reasons = cluster.event_reasons("preempted", &["Preempted"]).await;
    assert!(reasons.contains(&"Preempted".into()), "{reasons:?}");
}

#[tokio::test]
async fn an_operator_killed_mid_run_and_restarted_makes_no_second_pod_and_loses_nothing() {
    let Some(mut cluster) = Cluster::start("op-restart", 1).await else {
        return;
    };
    let name = "restarted";
    cluster.apply(&cluster.example(name, 3));
    cluster.wait_for_epoch(name, 1).await;
    cluster.kill_operator();
    cluster.start_operator();

    let done = cluster.wait_finished(name).await.status.unwrap();
    assert_eq!(done.phase, Some(ExperimentPhase::Succeeded), "{done:#?}");
    assert_eq!(done.attempts.len(), 1, "{:#?}", done.attempts);
    assert_eq!((done.preemptions, done.retries), (0, 0));
    let pods = cluster.trainer_pods(name).await;
    assert_eq!(
        pods.len(),
        1,
        "{:?}",
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(cluster.node().pods_started().len(), 1);
    assert_eq!(status_means(&done), summary_means(&cluster.summary(name)));
}

#[tokio::test]
async fn a_permanent_trainer_error_fails_at_once_and_deleting_removes_the_children() {
    let Some(cluster) = Cluster::start("op-permanent", 1).await else {
        return;
    };
    let name = "no-such-dataset";
    let mut manifest = cluster.example(name, 2);
    manifest["spec"]["data"]["dataset"] = "missing.csv".into();
    cluster.apply(&manifest);

    let failed = cluster.wait_finished(name).await;
    let status = failed.status.clone().unwrap();
    assert_eq!(status.phase, Some(ExperimentPhase::Failed), "{status:#?}");
    assert_eq!(status.attempts.len(), 1, "no retry: {:#?}", status.attempts);
    assert_eq!(status.retries, 0);
    let attempt = &status.attempts[0];
    assert!(matches!(attempt.exit_code, Some(65 | 78)), "{attempt:?}");
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert!(
        succeeded.message.contains("missing.csv"),
        "the trainer's message names the file: {succeeded:?}"
    );
    assert_eq!(cluster.node().pods_started().len(), 1);

    // Deleting the Experiment deletes its pod and ConfigMap (owner references, garbage
    // collector).
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), cluster.ns());
    assert!(
        maps.get_opt(&format!("{name}-config"))
            .await
            .unwrap()
            .is_some()
    );
    cluster
        .experiments()
        .delete(name, &DeleteParams::background())
        .await
        .unwrap();
    let gone = async {
        loop {
            let pods = cluster.trainer_pods(name).await;
            let map = maps.get_opt(&format!("{name}-config")).await.unwrap();
            if pods.is_empty() && map.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("the garbage collector removes the pod and the ConfigMap");
}

#[tokio::test]
async fn an_invalid_experiment_is_rejected_at_a_server_dry_run_with_the_schema_message() {
    let Some(control_plane) = control_plane() else {
        return;
    };
    control_plane.install_crds();
    let namespace = control_plane.namespace("op-invalid");
    let mut manifest = shrunk_example("experiment-cluster.yaml", 2);
    manifest["spec"]["backoffLimit"] = 101.into();
    manifest["spec"]["resources"]["gpus"] = 17.into();
    let text = serde_yaml::to_string(&manifest).unwrap();
    let output = control_plane.kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &namespace.name,
            "-f",
            "-",
        ],
        Some(&text),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("spec.backoffLimit: Invalid value: 101: spec.backoffLimit in body should be less than or equal to 100"), "{stderr}");
    assert!(stderr.contains("spec.resources.gpus"), "{stderr}");

    // The example as shipped passes the same dry run.
    let shipped =
        std::fs::read_to_string(example_data().join("../experiment-cluster.yaml")).unwrap();
    let output = control_plane.kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &namespace.name,
            "-f",
            "-",
        ],
        Some(&shipped),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn suspending_mid_run_deletes_the_pod_and_clearing_it_resumes_from_the_checkpoint() {
    let Some(cluster) = Cluster::start("op-suspend", 1).await else {
        return;
    };
    let name = "suspended";
    cluster.apply(&cluster.example(name, 4));
    cluster.wait_for_epoch(name, 1).await;
    cluster.set_suspend(name, true);
    let suspended = cluster
        .wait_for(name, "suspended", Duration::from_secs(120), |s| {
            s.phase == Some(ExperimentPhase::Suspended)
        })
        .await
        .status
        .unwrap();
    assert_eq!(suspended.attempts[0].reason.as_deref(), Some("Suspended"));
    let progress = suspended
        .progress
        .clone()
        .expect("progress is kept while suspended");
    assert!(progress.epoch >= 1, "{progress:?}");
    let gone = async {
        while !cluster.trainer_pods(name).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("the trainer pod is deleted");

    cluster.set_suspend(name, false);
    let done = cluster.wait_finished(name).await.status.unwrap();
    assert_eq!(done.phase, Some(ExperimentPhase::Succeeded), "{done:#?}");
    let reasons: Vec<_> = done.attempts.iter().map(|a| a.reason.as_deref()).collect();
    assert_eq!(reasons, [Some("Suspended"), Some("Completed")]);
    assert_eq!((done.preemptions, done.retries), (0, 0));
    let suspended = done
        .conditions
        .iter()
        .find(|c| c.type_ == "Suspended")
        .unwrap();
    assert_eq!(
        (suspended.status, suspended.reason.as_str()),
        (ConditionStatus::False, "Resumed")
    );
    let log = cluster.trainer_log("suspended-attempt-2");
    assert!(
        log.contains("resuming from checkpoint"),
        "attempt 2 did not resume:\n{}",
        tail(&log, 3000)
    );
    assert_eq!(status_means(&done), summary_means(&cluster.summary(name)));
}

#[tokio::test]
async fn a_pod_the_api_server_rejects_is_a_condition_and_a_warning_event_not_running() {
    let Some(cluster) = Cluster::start("op-rejected", 1).await else {
        return;
    };
    let name = "no-such-priority";
    let mut manifest = cluster.example(name, 2);
    manifest["spec"]["scheduling"]["priorityClassName"] = "no-such-class".into();
    cluster.apply(&manifest);
    let status = cluster
        .wait_for(name, "rejected", Duration::from_secs(120), |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Running" && c.reason == "PodRejected")
        })
        .await
        .status
        .unwrap();
    assert_eq!(status.phase, Some(ExperimentPhase::Pending));
    let running = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Running")
        .unwrap();
    assert_eq!(running.status, ConditionStatus::False);
    assert!(running.message.contains("no-such-class"), "{running:?}");
    assert!(cluster.trainer_pods(name).await.is_empty());
    let reasons = cluster.event_reasons(name, &["PodRejected"]).await;
    assert!(reasons.contains(&"PodRejected".into()), "{reasons:?}");
    assert!(
        !reasons.contains(&"Started".into()),
        "a refused pod did not start: {reasons:?}"
    );
}

/// Reads `http://address/path` with a plain HTTP/1.0 request: (status code, body).
async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let (address, path) = (address.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
    .await
    .ok()?
}

/// A loopback address with a port that was free a moment ago.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    let lease = leases.get_opt("voxel-operator").await.ok()??;
    lease.spec?.holder_identity
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_a_terminated_leader_hands_over() {
    let Some(cluster) = Cluster::without_operator("op-leader", 1).await else {
        return;
    };
    let ns = cluster.ns().to_string();
    let addresses = [free_address(), free_address()];
    let mut replicas: Vec<(String, KillOnDrop)> = ["replica-a", "replica-b"]
        .iter()
        .zip(&addresses)
        .map(|(id, address)| {
            let args = [
                "--identity",
                id,
                "--lease-namespace",
                &ns,
                "--metrics-address",
                address,
            ];
            let child = cluster.spawn_operator(&args, &format!("{id}.log"));
            ((*id).to_string(), KillOnDrop(Some(child)))
        })
        .collect();

    // Both are healthy and ready; a standby must not be restarted by its probes.
    for address in &addresses {
        let ready = async {
            loop {
                if let Some((200, _)) = http_get(address, "/readyz").await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("/readyz answers 200");
        assert_eq!(http_get(address, "/healthz").await.map(|r| r.0), Some(200));
    }

    let mut first = cluster.example("first", 2);
    first["spec"]["suspend"] = true.into();
    cluster.apply(&first);
    cluster
        .wait_for("first", "suspended", Duration::from_secs(60), |s| {
            s.phase == Some(ExperimentPhase::Suspended)
        })
        .await;
    let leader = lease_holder(&cluster.client, &ns)
        .await
        .expect("a leader holds the Lease");
    let index = replicas
        .iter()
        .position(|(id, _)| *id == leader)
        .expect("the leader is a replica");
    // The leader counts its reconciles (polled: under load the first may still be in flight).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(&addresses[index], "/metrics").await.unwrap();
        let reconciles = body
            .lines()
            .find_map(|l| l.strip_prefix("voxel_reconciles_total "))
            .and_then(|v| v.parse::<f64>().ok());
        if reconciles.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both replicas started at once and raced for the free Lease: the one that lost it never
    // reconciled.
    let (_, body) = http_get(&addresses[1 - index], "/metrics").await.unwrap();
    let standby_reconciles = body
        .lines()
        .find_map(|l| l.strip_prefix("voxel_reconciles_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        standby_reconciles.is_none_or(|n| n == 0.0),
        "the standby reconciled while {leader} led:\n{body}"
    );

    // SIGTERM: the leader finishes, releases the Lease and exits 0; the standby takes over.
    let (_, mut old) = replicas.remove(index);
    let mut old = old.0.take().unwrap();
    let pid = old.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || old.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exited.success(),
        "a terminated operator exits 0: {exited:?}"
    );
    let (standby, process) = &mut replicas[0];
    let alive = process.0.as_mut().unwrap().try_wait().unwrap();
    assert!(alive.is_none(), "the standby exited: {alive:?}");
    let standby = standby.clone();
    let handed_over = async {
        while lease_holder(&cluster.client, &ns).await.as_deref() != Some(standby.as_str()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), handed_over)
        .await
        .expect("the standby leads");
    let mut second = cluster.example("second", 2);
    second["spec"]["suspend"] = true.into();
    cluster.apply(&second);
    cluster
        .wait_for("second", "suspended", Duration::from_secs(60), |s| {
            s.phase == Some(ExperimentPhase::Suspended)
        })
        .await;
}

/// A child process killed when the test ends, even by a panic.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The S3-compatible test server that `scripts/with-control-plane.sh` started, as (endpoint,
/// bucket); `None` without it.
fn test_bucket() -> Option<(String, String)> {
    Some((
        std::env::var("VOXEL_TEST_S3_ENDPOINT").ok()?,
        std::env::var("VOXEL_TEST_S3_BUCKET").ok()?,
    ))
}

#[tokio::test]
async fn artifacts_in_a_bucket_survive_a_preemption_and_hold_the_results() {
    let Some(cluster) = Cluster::start("op-s3", 1).await else {
        return;
    };
    let (endpoint, bucket) =
        test_bucket().expect("with-control-plane.sh starts the S3 test server");
    let name = "in-a-bucket";
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "voxel-test", "AWS_SECRET_ACCESS_KEY": "voxel-test-secret"},
    });
    cluster.control_plane.kubectl_ok(
        &["apply", "-n", cluster.ns(), "-f", "-"],
        Some(&secret.to_string()),
    );
    let mut manifest = cluster.example(name, 4);
    manifest["spec"]["artifacts"] = serde_yaml::to_value(serde_json::json!({
        "s3": {
            "bucket": bucket, "prefix": "runs", "endpoint": endpoint,
            "credentialsSecret": {"name": "s3-credentials"},
        }
    }))
    .unwrap();
    cluster.apply(&manifest);

    cluster.wait_for_epoch(name, 2).await;
    cluster
        .node()
        .preempt(cluster.ns(), "in-a-bucket-attempt-1")
        .await
        .unwrap();
    let done = cluster.wait_finished(name).await.status.unwrap();
    assert_eq!(done.phase, Some(ExperimentPhase::Succeeded), "{done:#?}");
    let reasons: Vec<_> = done.attempts.iter().map(|a| a.reason.as_deref()).collect();
    assert_eq!(reasons, [Some(node::PREEMPTION_REASON), Some("Completed")]);
    let key = format!("runs/{}/{name}", cluster.ns());
    assert_eq!(
        done.artifacts.as_deref(),
        Some(format!("s3://{bucket}/{key}").as_str())
    );

    // The second pod started with an empty folder of its own: it resumed from the bucket.
    let log = cluster.trainer_log("in-a-bucket-attempt-2");
    assert!(
        log.contains("pulled the previous attempt's artifacts"),
        "{}",
        tail(&log, 3000)
    );
    assert!(
        log.contains("resuming from checkpoint"),
        "{}",
        tail(&log, 3000)
    );

    // The results in the bucket are those in status.
    use object_store::{ObjectStoreExt, aws::AmazonS3Builder, path::Path as Key};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("voxel-test")
        .with_secret_access_key("voxel-test-secret")
        .build()
        .unwrap();
    let summary = store
        .get(&Key::from(format!("{key}/summary.json")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(status_means(&done), summary_means(&summary));
    for file in ["model.safetensors", "metrics.csv", "epoch_metrics.csv"] {
        let head = store.head(&Key::from(format!("{key}/{file}"))).await;
        assert!(head.is_ok(), "{file} is not in the bucket: {head:?}");
    }
}

// --- CrossValidation, Ensemble and Model ---

/// The cluster CrossValidation example, shrunk like [`Cluster::example`], its folds placed on
/// this test's node.
fn cv_example(cluster: &Cluster, name: &str, epochs: u32) -> serde_yaml::Value {
    let mut manifest = shrunk_example("cross-validation-cluster.yaml", epochs);
    manifest["metadata"]["name"] = name.into();
    let (selector, tolerations) = cluster.node().pod_placement();
    let scheduling = &mut manifest["spec"]["template"]["scheduling"];
    scheduling["nodeSelector"] = serde_yaml::to_value(selector).unwrap();
    scheduling["tolerations"] = serde_yaml::to_value(tolerations).unwrap();
    manifest
}

/// Waits until `api`'s object `name` satisfies `condition`; panics with the object and the
/// operator's log otherwise.
async fn wait_for_object<K>(
    cluster: &Cluster,
    api: Api<K>,
    name: &str,
    what: &str,
    limit: Duration,
    condition: impl Fn(&K) -> bool + Send + 'static,
) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let matches = move |o: Option<&K>| o.is_some_and(&condition);
    match tokio::time::timeout(limit, await_condition(api.clone(), name, matches)).await {
        Ok(Ok(Some(object))) => object,
        other => panic!(
            "{name}: not {what} within {limit:?} ({other:?}); now {:#?}\noperator log:\n{}",
            api.get_opt(name).await,
            tail(&cluster.operator_log(), 8000)
        ),
    }
}

fn succeeded(conditions: &[voxel_crds::common::Condition]) -> Option<ConditionStatus> {
    conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .map(|c| c.status)
}

/// Per structure, the mean Dice of a trainer's `metrics.csv`, computed here from its rows.
fn mean_dice_by_structure(csv: &std::path::Path) -> BTreeMap<String, f64> {
    let mut reader =
        csv::Reader::from_path(csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (structure, dice) = (column("structure"), column("dice"));
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in reader.records() {
        let row = row.unwrap();
        let value: f64 = row[dice].parse().unwrap();
        if value.is_finite() {
            values
                .entry(row[structure].to_string())
                .or_default()
                .push(value);
        }
    }
    values
        .into_iter()
        .map(|(s, v)| (s, v.iter().sum::<f64>() / v.len() as f64))
        .collect()
}

async fn v1_aliases(models: &Api<Model>) -> Vec<String> {
    models
        .get("hippocampus-v1")
        .await
        .unwrap()
        .status
        .map(|s| s.aliases)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_validation_trains_its_folds_as_pods_builds_one_ensemble_and_publishes_versions() {
    let Some(cluster) = Cluster::start("op-cv", 2).await else {
        return;
    };
    let ns = cluster.ns().to_string();
    let cvs: Api<CrossValidation> = Api::namespaced(cluster.client.clone(), &ns);
    let ensembles: Api<Ensemble> = Api::namespaced(cluster.client.clone(), &ns);
    let models: Api<Model> = Api::namespaced(cluster.client.clone(), &ns);
    let name = "hippocampus-cv";
    let mut manifest = cv_example(&cluster, name, 2);
    manifest["metadata"]["annotations"]["voxel.dev/git-commit"] = "0123abcd".into();
    cluster.apply(&manifest);

    // Two folds train at once; fold 1 is deleted while it trains and comes back.
    let fold1 = format!("{name}-fold-1");
    cluster.wait_for_epoch(&fold1, 1).await;
    let first_uid = cluster.experiments().get(&fold1).await.unwrap().uid();
    let running = cluster
        .pods()
        .list(&ListParams::default().labels("voxel.dev/experiment"))
        .await
        .unwrap();
    let training = running
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    assert!(
        training <= 2,
        "parallelism 2, found {training} trainer pods running"
    );
    cluster
        .experiments()
        .delete(&fold1, &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for_object(
        &cluster,
        cluster.experiments(),
        &fold1,
        "created again",
        TRAINING_TIMEOUT,
        move |e: &Experiment| e.uid() != first_uid,
    )
    .await;
    // Fold 0, deleted once the run recorded it finished, keeps its result and its model.
    wait_for_object(
        &cluster,
        cvs.clone(),
        name,
        "recording fold 0 as succeeded",
        TRAINING_TIMEOUT,
        |cv: &CrossValidation| {
            cv.status.as_ref().is_some_and(|s| {
                s.folds.first().is_some_and(|f| {
                    f.state == voxel_crds::cross_validation::FoldState::Succeeded
                        && f.artifacts.is_some()
                })
            })
        },
    )
    .await;
    let fold0 = format!("{name}-fold-0");
    cluster
        .experiments()
        .delete(&fold0, &DeleteParams::background())
        .await
        .unwrap();

    let cv = wait_for_object(
        &cluster,
        cvs.clone(),
        name,
        "finished",
        Duration::from_secs(1500),
        |cv: &CrossValidation| {
            cv.status
                .as_ref()
                .and_then(|s| succeeded(&s.conditions))
                .is_some_and(|s| s != ConditionStatus::Unknown)
        },
    )
    .await;
    let status = cv.status.clone().unwrap();
    assert_eq!(
        succeeded(&status.conditions),
        Some(ConditionStatus::True),
        "{status:#?}"
    );

    // The folds: each validated on its own share of the subjects outside the test set, as the
    // fold assignment of local mode deals them.
    let csv = example_data().join("dataset_small.csv");
    let all = voxel_e2e::dataset_subjects(&csv);
    let split = voxel_crds::split::split_subjects(
        &all,
        &voxel_crds::experiment::SplitSpec {
            test_fraction: Some(0.2),
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let pool: Vec<String> = all
        .iter()
        .filter(|s| !split.test.contains(s))
        .cloned()
        .collect();
    let expected = voxel_operator::folds::assign_folds(&pool, 3, 11).unwrap();
    assert_eq!(status.test_subjects, split.test);
    let recorded: Vec<Vec<String>> = status
        .fold_assignment
        .iter()
        .map(|a| a.subjects.clone())
        .collect();
    assert_eq!(recorded, expected, "{:#?}", status.fold_assignment);
    assert_eq!(status.folds_succeeded, 3);
    for fold in &status.folds {
        let dir = cluster.artifact_dir(&fold.experiment);
        let trained = read_json(&dir.join("split.json"));
        assert_eq!(
            trained["validation"],
            serde_json::json!(expected[fold.fold as usize])
        );
        assert_eq!(fold.metrics.len(), 2, "{fold:#?}");
    }
    // The aggregate's Dice is the mean over the folds of each fold's mean Dice.
    for aggregate in &status.aggregate {
        let fold_means: Vec<f64> = status
            .folds
            .iter()
            .map(|f| {
                f.metrics
                    .iter()
                    .find(|m| m.structure == aggregate.structure)
                    .unwrap()
                    .dice
                    .mean
                    .unwrap()
            })
            .collect();
        let mean = fold_means.iter().sum::<f64>() / 3.0;
        assert!(
            (aggregate.dice.mean.unwrap() - mean).abs() < 1e-9,
            "{aggregate:#?}"
        );
    }

    // One Ensemble, whose metrics are those of its metrics.csv.
    assert!(
        cluster
            .experiments()
            .get_opt(&fold0)
            .await
            .unwrap()
            .is_none(),
        "fold 0 is not made again once it finished"
    );
    let all_ensembles = ensembles.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all_ensembles.len(), 1, "exactly one ensemble");
    let ensemble = &all_ensembles[0];
    assert_eq!(status.ensemble.as_deref(), Some("hippocampus-cv-ensemble"));
    let ensemble_dir = cluster.artifact_dir("hippocampus-cv-ensemble");
    let dice = mean_dice_by_structure(&ensemble_dir.join("metrics.csv"));
    for summary in &status.ensemble_metrics {
        assert!(
            (summary.dice.mean.unwrap() - dice[&summary.structure]).abs() < 1e-9,
            "{summary:#?} vs {dice:?}"
        );
    }
    assert_eq!(
        ensemble.status.as_ref().unwrap().metrics,
        status.ensemble_metrics
    );

    // Version 1, with its lineage.
    assert_eq!(
        status
            .published_model
            .as_ref()
            .map(|m| (m.model.as_str(), m.version)),
        Some(("hippocampus", 1))
    );
    let v1 = models.get("hippocampus-v1").await.unwrap();
    let lineage = &v1.spec.lineage;
    assert_eq!(lineage.source.name, name);
    assert_eq!(lineage.source.uid.as_deref(), cv.metadata.uid.as_deref());
    assert_eq!(lineage.git_commit.as_deref(), Some("0123abcd"));
    assert_eq!(lineage.trainer_image.as_deref(), Some("voxel-trainer:test"));
    assert_eq!(lineage.seed, 42);
    assert_eq!(
        lineage.runs,
        (0..3)
            .map(|f| format!("{name}-fold-{f}"))
            .collect::<Vec<_>>()
    );
    assert!(
        lineage.dataset_digest.starts_with("sha256:"),
        "{lineage:#?}"
    );
    assert!(v1.spec.comparison.is_none());
    assert_eq!(v1.spec.metrics, status.ensemble_metrics);
    let base = cluster.tmp.path().join("artifacts/experiments").join(&ns);
    assert_eq!(
        v1.spec.artifact.location,
        format!("pvc://{ARTIFACTS_CLAIM}/experiments/{ns}")
    );
    assert_eq!(
        v1.spec.artifact.files.len(),
        7,
        "{:#?}",
        v1.spec.artifact.files
    );
    for file in &v1.spec.artifact.files {
        assert_eq!(
            file.digest,
            voxel_e2e::sha256_file(&base.join(&file.path)),
            "{}",
            file.path
        );
    }

    // The alias of the example moved to the first version.
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
    let aliases = maps.get("voxel-model-hippocampus-aliases").await.unwrap();
    assert_eq!(
        aliases
            .data
            .unwrap_or_default()
            .get("production")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(v1_aliases(&models).await, vec!["production".to_string()]);

    // A second run, compared with what `production` points to (version 1), publishes version 2
    // with p-values and verdicts.
    let second = "hippocampus-cv-2";
    let mut manifest = cv_example(&cluster, second, 2);
    manifest["spec"]["folds"] = 2.into();
    manifest["spec"]["compareTo"] =
        serde_yaml::from_str("{model: hippocampus, alias: production}").unwrap();
    cluster.apply(&manifest);
    let cv2 = wait_for_object(
        &cluster,
        cvs.clone(),
        second,
        "finished",
        Duration::from_secs(1500),
        |cv: &CrossValidation| {
            cv.status
                .as_ref()
                .and_then(|s| succeeded(&s.conditions))
                .is_some_and(|s| s != ConditionStatus::Unknown)
        },
    )
    .await;
    let status2 = cv2.status.unwrap();
    assert_eq!(
        succeeded(&status2.conditions),
        Some(ConditionStatus::True),
        "{status2:#?}"
    );
    assert_eq!(status2.published_model.as_ref().map(|m| m.version), Some(2));
    let comparison = status2.comparison.expect("a comparison in status");
    assert_eq!(comparison.baseline, "hippocampus:1");
    assert_eq!(comparison.verdicts.len(), 2, "{comparison:#?}");
    // Every test with differing pairs has a p-value; Dice of the primary structure is tested.
    for test in &comparison.tests {
        if test.nonzero_pairs > 0 {
            assert!(
                test.p_value.is_some_and(|p| (0.0..=1.0).contains(&p)),
                "{test:#?}"
            );
        }
    }
    assert!(
        comparison
            .tests
            .iter()
            .any(|t| t.metric == "dice" && t.p_value.is_some()),
        "{comparison:#?}"
    );
    assert_eq!(comparison.candidate, format!("CrossValidation {second}"));
    let v2 = models.get("hippocampus-v2").await.unwrap();
    // The gate: `production` moves to version 2 unless it is significantly worse on a structure.
    let worse = comparison
        .verdicts
        .iter()
        .any(|v| v.verdict == voxel_crds::results::Verdict::Worse);
    let holder = maps
        .get("voxel-model-hippocampus-aliases")
        .await
        .unwrap()
        .data
        .unwrap_or_default()["production"]
        .clone();
    assert_eq!(holder, if worse { "1" } else { "2" }, "{comparison:#?}");
    let published = status2
        .conditions
        .iter()
        .find(|c| c.type_ == "Published")
        .map(|c| c.message.clone());
    let ensemble2 = ensembles.get("hippocampus-cv-2-ensemble").await.unwrap();
    let message = ensemble2
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Published")
        .unwrap()
        .message;
    assert!(
        message.contains(if worse {
            "alias production did not move: significantly worse"
        } else {
            "alias production points to it"
        }),
        "{message} ({published:?})"
    );
    assert_eq!(v2.spec.comparison.as_ref(), Some(&comparison));
    assert_eq!(
        models
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(
        ensembles
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    // An Ensemble of the two published versions: their five networks in one evaluation pod,
    // compared with `production` and published as a model of its own.
    let all = "hippocampus-all";
    cluster.apply(&shrunk_example("ensemble-cluster.yaml", 1));
    let ensemble = wait_for_object(
        &cluster,
        ensembles.clone(),
        all,
        "finished",
        TRAINING_TIMEOUT,
        |e: &Ensemble| {
            e.status
                .as_ref()
                .and_then(|s| succeeded(&s.conditions))
                .is_some_and(|s| s != ConditionStatus::Unknown)
        },
    )
    .await;
    let status = ensemble.status.unwrap();
    assert_eq!(
        succeeded(&status.conditions),
        Some(ConditionStatus::True),
        "{status:#?}"
    );
    let record = read_json(&cluster.artifact_dir(all).join("ensemble.json"));
    assert_eq!(record["members"].as_array().unwrap().len(), 5, "{record:#}");
    assert_eq!(record["subjects"], serde_json::json!(split.test));
    let dice = mean_dice_by_structure(&cluster.artifact_dir(all).join("metrics.csv"));
    for summary in &status.metrics {
        assert!((summary.dice.mean.unwrap() - dice[&summary.structure]).abs() < 1e-9);
    }
    assert!(status.comparison.is_some(), "compared with production");
    let published = models.get("hippocampus-ensemble-v1").await.unwrap();
    let lineage = &published.spec.lineage;
    assert_eq!(
        (lineage.source.name.as_str(), lineage.source.uid.as_deref()),
        (all, ensemble.metadata.uid.as_deref())
    );
    assert_eq!(
        lineage.runs,
        [
            "hippocampus:1/0",
            "hippocampus:1/1",
            "hippocampus:1/2",
            "hippocampus:2/0",
            "hippocampus:2/1"
        ]
    );
    for file in &published.spec.artifact.files {
        assert_eq!(
            file.digest,
            voxel_e2e::sha256_file(&base.join(&file.path)),
            "{}",
            file.path
        );
    }

    // A single Experiment compared with `production` and published as the next version.
    let single = "hippocampus-single";
    let mut manifest = cluster.example(single, 2);
    manifest["spec"]["compareTo"] =
        serde_yaml::from_str("{model: hippocampus, alias: production}").unwrap();
    manifest["spec"]["publish"] = serde_yaml::from_str("{model: hippocampus}").unwrap();
    cluster.apply(&manifest);
    let done = cluster
        .wait_for(single, "published", TRAINING_TIMEOUT, |s| {
            s.conditions.iter().any(|c| c.type_ == "Published")
        })
        .await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(ExperimentPhase::Succeeded));
    let published = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Published")
        .unwrap();
    assert_eq!(published.status, ConditionStatus::True, "{published:#?}");
    assert_eq!(status.published_model.as_ref().map(|m| m.version), Some(3));
    let comparison = status.comparison.clone().expect("compared with production");
    assert_eq!(comparison.baseline, format!("hippocampus:{holder}"));
    let v3 = models.get("hippocampus-v3").await.unwrap();
    assert_eq!(v3.spec.lineage.source.name, single);
    assert_eq!(v3.spec.configuration.experiment.as_ref(), Some(&done.spec));
    assert_eq!(v3.spec.metrics, status.metrics);
    let dir = cluster.artifact_dir(single);
    assert_eq!(
        mean_dice_by_structure(&dir.join("metrics.csv")).len(),
        status.metrics.len()
    );

    // A baseline that does not exist fails an Experiment before it trains.
    let orphan = "hippocampus-no-baseline";
    let mut manifest = cluster.example(orphan, 2);
    manifest["spec"]["compareTo"] = serde_yaml::from_str("{model: nope, version: 4}").unwrap();
    cluster.apply(&manifest);
    let failed = cluster
        .wait_for(orphan, "failed", Duration::from_secs(60), |s| {
            s.phase == Some(ExperimentPhase::Failed)
        })
        .await;
    let message = &failed.status.unwrap().conditions[0].message;
    assert!(
        message.contains("spec.compareTo: version 4 of model nope is not published"),
        "{message}"
    );
    assert!(cluster.trainer_pods(orphan).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_publishers_get_distinct_consecutive_versions_and_a_retry_makes_none() {
    let Some(control_plane) = control_plane() else {
        return;
    };
    control_plane.install_crds();
    let namespace = control_plane.namespace("op-publish");
    let client = control_plane.client().await.unwrap();
    let ns = namespace.name.clone();
    let manifest: Experiment =
        serde_yaml::from_value(shrunk_example("experiment-cluster.yaml", 1)).unwrap();
    let resource = |source: &str| {
        voxel_operator::publication::model_resource(
            "liver",
            1,
            &voxel_operator::publication::ModelContent::Single {
                configuration: manifest.spec.clone(),
            },
            "pvc://artifacts/runs",
            &[],
            &format!("sha256:{}", "0".repeat(64)),
            &[],
            None,
            &voxel_operator::publication::Lineage {
                source_kind: "Experiment".into(),
                source_name: source.into(),
                source_uid: Some(format!("uid-{source}")),
                trainer_image: None,
                manifest_path: String::new(),
                manifest_digest: format!("sha256:{}", "1".repeat(64)),
                dataset_digest: format!("sha256:{}", "2".repeat(64)),
                seed: 1,
                trainer_version: "test".into(),
                git_commit: None,
                runs: vec![source.into()],
            },
        )
        .unwrap()
    };
    use voxel_operator::cluster::models::publish;
    let publishers = (0..6).map(|i| {
        let client = client.clone();
        let ns = ns.clone();
        let resource = resource(&format!("run-{i}"));
        tokio::spawn(async move {
            publish(&client, &ns, resource, &format!("key-{i}"))
                .await
                .unwrap()
        })
    });
    let mut versions: Vec<u32> = futures::future::join_all(publishers)
        .await
        .into_iter()
        .map(|r| {
            let published = r.unwrap();
            assert!(published.new);
            published.version
        })
        .collect();
    versions.sort();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);

    // A publish retried (after a timeout, or by a restarted operator) finds its version.
    let again = publish(&client, &ns, resource("run-3"), "key-3")
        .await
        .unwrap();
    assert!(!again.new);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let v = models
        .get(&format!("liver-v{}", again.version))
        .await
        .unwrap();
    assert_eq!(v.spec.lineage.source.name, "run-3");
    // Two retries of one publication racing each other make one version.
    let (a, b) = tokio::join!(
        publish(&client, &ns, resource("run-x"), "key-x"),
        publish(&client, &ns, resource("run-x"), "key-x")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.version, b.version), (7, 7));
    assert!(a.new != b.new, "one of them created it: {a:?} {b:?}");
    assert_eq!(
        models
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        7
    );

    // Deleting the latest version frees neither its number nor its alias.
    use voxel_operator::cluster::models::{aliases, move_alias, resolve};
    move_alias(&client, &ns, "liver", "production", 7, |_| Ok(()))
        .await
        .unwrap()
        .unwrap();
    models
        .delete("liver-v7", &Default::default())
        .await
        .unwrap();
    await_condition(models.clone(), "liver-v7", |m: Option<&Model>| m.is_none())
        .await
        .unwrap();
    let next = publish(&client, &ns, resource("run-y"), "key-y")
        .await
        .unwrap();
    assert_eq!(next.version, 8, "{next:?}");
    let dangling = resolve(
        &client,
        &ns,
        "liver",
        None,
        Some("production"),
        "spec.compareTo",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        dangling.contains("version 7 of model liver (alias production) is not published"),
        "{dangling}"
    );
    // An alias naming a number the map does not record as allocated (a publisher stopped
    // between its create and that record, then its version deleted) is not inherited.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.patch(
        "voxel-model-liver-aliases",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"data": {"staging": "9"}})),
    )
    .await
    .unwrap();
    let reused = publish(&client, &ns, resource("run-z"), "key-z")
        .await
        .unwrap();
    assert_eq!(reused.version, 9);
    let (held, map) = aliases(&client, &ns, "liver").await.unwrap();
    assert_eq!(held, BTreeMap::from([("production".to_string(), 7)]));
    assert_eq!(
        map.unwrap().annotations().get("voxel.dev/last-version"),
        Some(&"9".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fold_name_taken_by_another_object_is_reported_and_never_adopted() {
    let Some(cluster) = Cluster::start("op-cv-taken", 1).await else {
        return;
    };
    let ns = cluster.ns().to_string();
    let cvs: Api<CrossValidation> = Api::namespaced(cluster.client.clone(), &ns);
    // Someone's own Experiment holds the name of fold 0 (suspended: it never trains).
    let mut squatter = cluster.example("sq-fold-0", 1);
    squatter["spec"]["suspend"] = true.into();
    cluster.apply(&squatter);
    let mut manifest = cv_example(&cluster, "sq", 1);
    manifest["spec"]["folds"] = 2.into();
    manifest["spec"]["parallelism"] = 1.into();
    manifest["spec"]["template"]["suspend"] = true.into();
    cluster.apply(&manifest);
    let cv = wait_for_object(
        &cluster,
        cvs.clone(),
        "sq",
        "reporting the taken name",
        Duration::from_secs(60),
        |cv: &CrossValidation| {
            cv.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Running" && c.reason == "NameTaken")
            })
        },
    )
    .await;
    let running = cv
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Running")
        .unwrap();
    assert_eq!(running.status, ConditionStatus::False);
    assert!(
        running
            .message
            .contains("Experiment sq-fold-0 exists and is not owned by this CrossValidation"),
        "{}",
        running.message
    );
    let squatting = cluster.experiments().get("sq-fold-0").await.unwrap();
    assert!(squatting.owner_references().is_empty(), "never adopted");
    assert!(
        cluster
            .experiments()
            .get_opt("sq-fold-1")
            .await
            .unwrap()
            .is_none()
    );

    // Once the name is free, the fold is made.
    cluster
        .experiments()
        .delete("sq-fold-0", &DeleteParams::foreground())
        .await
        .unwrap();
    let uid = cv.metadata.uid.clone();
    wait_for_object(
        &cluster,
        cluster.experiments(),
        "sq-fold-0",
        "made by the CrossValidation",
        Duration::from_secs(90),
        move |e: &Experiment| {
            e.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        },
    )
    .await;
    // The folds started from one configuration: editing it now fails the run.
    cluster.control_plane.kubectl_ok(
        &[
            "patch",
            "-n",
            &ns,
            "crossvalidation",
            "sq",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"training":{"epochs":5}}}}"#,
        ],
        None,
    );
    let cv = wait_for_object(
        &cluster,
        cvs,
        "sq",
        "failed for the edit",
        Duration::from_secs(60),
        |cv: &CrossValidation| {
            cv.status
                .as_ref()
                .and_then(|s| succeeded(&s.conditions))
                .is_some_and(|s| s == ConditionStatus::False)
        },
    )
    .await;
    let failed = cv
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(failed.reason, "TemplateChanged", "{failed:#?}");
    // What ran stops: the unfinished fold is deleted.
    let gone = |e: Option<&Experiment>| e.is_none_or(|e| e.metadata.deletion_timestamp.is_some());
    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(cluster.experiments(), "sq-fold-0", gone),
    )
    .await;
    assert!(matches!(stopped, Ok(Ok(_))), "{stopped:?}");
    assert!(
        failed
            .message
            .contains("spec.template.model, training or data, or spec.folds or spec.seed")
    );
}

#[tokio::test]
async fn a_fold_whose_pod_is_refused_is_named_by_the_cross_validation_until_it_runs() {
    let Some(cluster) = Cluster::start("op-cv-held", 1).await else {
        return;
    };
    let ns = cluster.ns().to_string();
    let cvs: Api<CrossValidation> = Api::namespaced(cluster.client.clone(), &ns);
    // A priority class that does not exist yet: the API server refuses the folds' pods.
    let class = format!("{ns}-folds");
    let mut manifest = cv_example(&cluster, "held", 1);
    manifest["spec"]["folds"] = 2.into();
    manifest["spec"]["parallelism"] = 2.into();
    manifest["spec"]["template"]["scheduling"]["priorityClassName"] = class.clone().into();
    cluster.apply(&manifest);
    fn running(cv: &CrossValidation) -> Option<voxel_crds::common::Condition> {
        cv.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Running"))
            .cloned()
    }
    let both_named = |cv: &CrossValidation| {
        running(cv).is_some_and(|c| {
            c.reason == "FoldNotRunning"
                && c.message.contains("held-fold-0: PodRejected: ")
                && c.message.contains("held-fold-1: PodRejected: ")
        })
    };
    let cv = wait_for_object(
        &cluster,
        cvs.clone(),
        "held",
        "naming the refused folds",
        Duration::from_secs(90),
        both_named,
    )
    .await;
    let held = running(&cv).unwrap();
    assert_eq!(held.status, ConditionStatus::False);
    assert!(held.message.contains(&class), "{}", held.message);
    let reasons = cluster.event_reasons("held", &["FoldNotRunning"]).await;
    assert!(reasons.contains(&"FoldNotRunning".into()), "{reasons:?}");

    // Once the class exists, the folds' next tries make their pods and the run goes on.
    let priority_class = serde_json::json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": class}, "value": 1000,
    });
    cluster
        .control_plane
        .kubectl_ok(&["apply", "-f", "-"], Some(&priority_class.to_string()));
    let cv = wait_for_object(
        &cluster,
        cvs.clone(),
        "held",
        "running again",
        Duration::from_secs(120),
        move |cv: &CrossValidation| {
            running(cv).is_some_and(|c| c.status == ConditionStatus::True && c.reason == "Running")
        },
    )
    .await;
    let reasons = cluster.event_reasons("held", &[]).await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "Started").count(),
        1,
        "a run held from its start started once: {reasons:?}"
    );
    cvs.delete("held", &DeleteParams::foreground())
        .await
        .unwrap();
    cluster
        .control_plane
        .kubectl_ok(&["delete", "priorityclass", &class], None);
    drop(cv);
}

#[tokio::test]
async fn a_run_refused_mid_way_stops_its_folds_and_still_knows_their_configuration() {
    let Some(cluster) = Cluster::start("op-cv-refused", 1).await else {
        return;
    };
    let ns = cluster.ns().to_string();
    let cvs: Api<CrossValidation> = Api::namespaced(cluster.client.clone(), &ns);
    // Enough epochs that neither fold finishes while the test edits the run.
    let mut manifest = cv_example(&cluster, "rf", 50);
    manifest["spec"]["folds"] = 2.into();
    manifest["spec"]["parallelism"] = 2.into();
    cluster.apply(&manifest);
    let digest = wait_for_object(
        &cluster,
        cvs.clone(),
        "rf",
        "both folds made",
        Duration::from_secs(60),
        |cv: &CrossValidation| {
            cv.status
                .as_ref()
                .is_some_and(|s| s.template_digest.is_some() && s.folds.len() == 2)
        },
    )
    .await
    .status
    .unwrap()
    .template_digest;
    let patch = |body: &str| {
        cluster.control_plane.kubectl_ok(
            &[
                "patch",
                "-n",
                &ns,
                "crossvalidation",
                "rf",
                "--type=merge",
                "-p",
                body,
            ],
            None,
        );
    };
    let failed_for = |reason: &'static str| {
        move |cv: &CrossValidation| {
            cv.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Succeeded"
                        && c.status == ConditionStatus::False
                        && c.reason == reason
                })
            })
        }
    };

    // A baseline that does not exist refuses the run, and what trains for it stops.
    patch(r#"{"spec":{"compareTo":{"model":"no-such-model","version":1}}}"#);
    wait_for_object(
        &cluster,
        cvs.clone(),
        "rf",
        "refused",
        Duration::from_secs(60),
        failed_for("BaselineNotFound"),
    )
    .await;
    for fold in ["rf-fold-0", "rf-fold-1"] {
        let gone =
            |e: Option<&Experiment>| e.is_none_or(|e| e.metadata.deletion_timestamp.is_some());
        let stopped = tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(cluster.experiments(), fold, gone),
        )
        .await;
        assert!(matches!(stopped, Ok(Ok(_))), "{fold}: {stopped:?}");
    }

    // The fix comes with a template edit: the folds already began with the old template, so
    // the run fails rather than carry on from a configuration none of them started with.
    patch(r#"{"spec":{"compareTo":null,"template":{"training":{"epochs":51}}}}"#);
    let cv = wait_for_object(
        &cluster,
        cvs.clone(),
        "rf",
        "failed for the template edit",
        Duration::from_secs(60),
        failed_for("TemplateChanged"),
    )
    .await;
    let status = cv.status.unwrap();
    assert_eq!(
        status.template_digest, digest,
        "the recorded configuration is kept"
    );
    assert_eq!(status.folds.len(), 2, "{:#?}", status.folds);
}
