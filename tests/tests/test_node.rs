//! The process-backed test node (`voxel_e2e::node`) on the real test control plane: the real
//! scheduler binds pods to it, it runs them as host processes with their volumes, variables and
//! termination messages, and it reports, preempts, deletes and loses them the way the operator
//! will see it happen on a cluster.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ConfigMap, ContainerStateTerminated, Node, Pod, ServiceAccount};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
    runtime::wait::await_condition,
};
use serde_json::json;
use voxel_e2e::{
    Namespace, control_plane,
    node::{self, NodeOptions, PREEMPTION_MESSAGE, PREEMPTION_REASON, TestNode},
};

/// How long a pod may take to be scheduled, started or finished on a busy two-core machine.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh namespace, a client, and the options of a node named after the namespace (unique,
/// since tests share the control plane); `None` without a control plane.
async fn setup(prefix: &str) -> Option<(Namespace, Client, NodeOptions, tempfile::TempDir)> {
    let cluster = control_plane()?;
    let namespace = cluster.namespace(prefix);
    let client = cluster
        .client()
        .await
        .expect("a client of the control plane");
    let root = tempfile::tempdir().expect("a temporary folder");
    let options = NodeOptions::new(namespace.name.clone(), root.path().join("sandboxes"));
    Some((namespace, client, options, root))
}

/// A pod placed on `node` by the scheduler (its nodeSelector and toleration), from the JSON of
/// its spec without them.
fn scheduled_pod(node: &TestNode, name: &str, mut spec: serde_json::Value) -> Pod {
    let (selector, tolerations) = node.pod_placement();
    spec["nodeSelector"] = json!(selector);
    let extra = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut all = serde_json::to_value(tolerations).unwrap();
    all.as_array_mut().unwrap().extend(extra);
    spec["tolerations"] = all;
    pod(name, spec)
}

/// A pod from the JSON of its spec; `restartPolicy: Never`, as the operator's trainer pods.
fn pod(name: &str, mut spec: serde_json::Value) -> Pod {
    spec["restartPolicy"] = json!("Never");
    serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec }))
        .expect("a valid pod")
}

/// Creates a pod once the namespace's default service account exists (the ServiceAccount
/// admission plugin refuses pods before the serviceaccount controller has made it).
async fn create_pod(client: &Client, namespace: &str, pod: &Pod) -> Api<Pod> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let exists = |account: Option<&ServiceAccount>| account.is_some();
    tokio::time::timeout(TIMEOUT, await_condition(accounts, "default", exists))
        .await
        .expect("the default service account appears")
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.create(&PostParams::default(), pod)
        .await
        .expect("the pod is created");
    pods
}

/// Waits until the pod satisfies `condition`, or panics with what it looks like.
async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    condition: impl Fn(&Pod) -> bool + Send + 'static,
) -> Pod {
    let matches = move |pod: Option<&Pod>| pod.is_some_and(&condition);
    match tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), name, matches)).await {
        Ok(Ok(Some(pod))) => pod,
        other => {
            let now = pods.get_opt(name).await;
            panic!("pod {name}: not {what} within {TIMEOUT:?} ({other:?}); it is now {now:#?}")
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn is_running(pod: &Pod) -> bool {
    phase(pod) == "Running"
}

fn has_ended(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn terminated(pod: &Pod) -> ContainerStateTerminated {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone());
    let state = statuses
        .and_then(|s| s.into_iter().next())
        .and_then(|s| s.state);
    state
        .and_then(|s| s.terminated)
        .unwrap_or_else(|| panic!("not terminated: {pod:#?}"))
}

fn condition(pod: &Pod, type_: &str) -> Option<(String, Option<String>, Option<String>)> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let condition = conditions.iter().find(|c| c.type_ == type_)?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

fn is_unschedulable(pod: &Pod) -> bool {
    condition(pod, "PodScheduled").is_some_and(|(status, reason, _)| {
        status == "False" && reason.as_deref() == Some("Unschedulable")
    })
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state ...`; the command may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls until `condition` holds, or panics after `limit`.
async fn eventually(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid a pod wrote to `file`, once it is there.
async fn pid_in(file: &Path) -> u32 {
    let read = || {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    eventually(&format!("{} is written", file.display()), TIMEOUT, || {
        read().is_some()
    })
    .await;
    read().expect("the pid file holds a pid")
}

/// A container that writes its shell's pid to /work/pid and then sleeps; `$$$$` is the
/// Kubernetes escape of the shell's `$$`.
fn pid_writing_spec(host_dir: &Path, script_prefix: &str, grace_s: i64) -> serde_json::Value {
    json!({
        "terminationGracePeriodSeconds": grace_s,
        "containers": [{
            "name": "sleeper",
            "image": "busybox",
            "command": ["/bin/sh", "-c", format!("{script_prefix}echo $$$$ > /work/pid; exec sleep 300")],
            "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
        }],
        "volumes": [{ "name": "work", "hostPath": { "path": host_dir, "type": "Directory" } }],
    })
}

#[tokio::test]
async fn a_scheduled_pod_runs_as_a_process_and_reports_its_exit_code_and_termination_message() {
    let Some((namespace, client, mut options, tmp)) = setup("node-run").await else {
        return;
    };
    let ns = namespace.name.as_str();
    options.gpus = 2;
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let claim_dir = tmp.path().join("claim");
    std::fs::create_dir(&claim_dir).unwrap();
    node::bind_claim(&client, ns, "data", &claim_dir)
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let greeting = serde_json::from_value(json!({
        "metadata": { "name": "greeting" },
        "data": { "greeting": "hello from a configmap" },
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &greeting)
        .await
        .unwrap();

    let script = r#"echo "$(POD_NAME) $MY_IP" > /work/out.txt; cat /config/greeting >> /work/out.txt; echo done-msg > /dev/termination-log; exit 3"#;
    let spec = json!({
        "containers": [{
            "name": "main",
            "image": "busybox",
            "command": ["/bin/sh", "-c", script],
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "MY_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
            ],
            "resources": { "limits": { "nvidia.com/gpu": "1" } },
            "volumeMounts": [
                { "name": "data", "mountPath": "/work" },
                { "name": "config", "mountPath": "/config" },
            ],
        }],
        "volumes": [
            { "name": "data", "persistentVolumeClaim": { "claimName": "data" } },
            { "name": "config", "configMap": { "name": "greeting" } },
        ],
    });
    let pods = create_pod(&client, ns, &scheduled_pod(&node, "gpu-job", spec)).await;
    let pod = wait_for_pod(&pods, "gpu-job", "ended", has_ended).await;

    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.name()),
        "bound by the scheduler"
    );
    assert_eq!(phase(&pod), "Failed");
    let exit = terminated(&pod);
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.reason.as_deref(), Some("Error"));
    assert_eq!(exit.message.as_deref().map(str::trim_end), Some("done-msg"));
    assert!(
        exit.started_at.is_some() && exit.finished_at.is_some(),
        "{exit:?}"
    );
    let status = pod.status.as_ref().unwrap();
    let ip = status.pod_ip.clone().expect("a pod IP");
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(condition(&pod, "PodScheduled").unwrap().0, "True");
    assert_eq!(condition(&pod, "Ready").unwrap().0, "False");

    let out = std::fs::read_to_string(claim_dir.join("out.txt")).unwrap();
    assert_eq!(out, format!("gpu-job {ip}\nhello from a configmap"));
    assert_eq!(node.pods_started(), vec![format!("{ns}/gpu-job")]);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_scheduler_places_pods_by_gpu_capacity_and_spot_taints() {
    let Some((namespace, client, mut options, _tmp)) = setup("node-spot").await else {
        return;
    };
    let ns = namespace.name.as_str();
    options.gpus = 1;
    options.spot = true;
    let node = TestNode::start(client.clone(), options).await.unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    let registered = nodes.get(node.name()).await.unwrap();
    let labels = registered.metadata.labels.clone().unwrap();
    for (key, value) in node::SPOT_LABELS {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    let taints = registered.spec.as_ref().unwrap().taints.clone().unwrap();
    let keys: Vec<&str> = taints.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "voxel.dev/test-node",
            "cloud.google.com/gke-spot",
            "kubernetes.azure.com/scalesetpriority"
        ],
        "no not-ready taint is left"
    );
    let status = registered.status.unwrap();
    assert_eq!(status.allocatable.unwrap()["nvidia.com/gpu"].0, "1");

    let spot_tolerations = json!([
        { "key": "cloud.google.com/gke-spot", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "kubernetes.azure.com/scalesetpriority", "operator": "Exists", "effect": "NoSchedule" },
    ]);
    let container = |gpus: &str| {
        json!([{
            "name": "main", "image": "busybox", "command": ["true"],
            "resources": { "limits": { "nvidia.com/gpu": gpus } },
        }])
    };
    let too_big = json!({ "containers": container("2"), "tolerations": spot_tolerations });
    let not_spot = json!({ "containers": container("1") });
    let fits = json!({ "containers": container("1"), "tolerations": spot_tolerations });

    let pods = create_pod(&client, ns, &scheduled_pod(&node, "too-big", too_big)).await;
    create_pod(&client, ns, &scheduled_pod(&node, "not-spot", not_spot)).await;
    create_pod(&client, ns, &scheduled_pod(&node, "fits", fits)).await;
    wait_for_pod(&pods, "too-big", "unschedulable", is_unschedulable).await;
    wait_for_pod(&pods, "not-spot", "unschedulable", is_unschedulable).await;
    let fits = wait_for_pod(&pods, "fits", "ended", has_ended).await;
    assert_eq!(phase(&fits), "Succeeded");
    assert_eq!(terminated(&fits).reason.as_deref(), Some("Completed"));
    assert_eq!(node.pods_started(), vec![format!("{ns}/fits")]);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_preempted_pod_is_a_disruption_target_and_fails_with_the_sigterm_exit_code() {
    let Some((namespace, client, options, _tmp)) = setup("node-preempt").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let spec = json!({
        "terminationGracePeriodSeconds": 10,
        "containers": [{ "name": "main", "image": "busybox", "command": ["sleep", "300"] }],
    });
    let pods = create_pod(&client, ns, &scheduled_pod(&node, "victim", spec)).await;
    wait_for_pod(&pods, "victim", "running", is_running).await;

    node.preempt(ns, "victim").await.unwrap();

    let pod = pods
        .get("victim")
        .await
        .expect("a preempted pod is not deleted");
    let disruption = condition(&pod, "DisruptionTarget").expect("a DisruptionTarget condition");
    assert_eq!(
        disruption,
        (
            "True".into(),
            Some(PREEMPTION_REASON.into()),
            Some(PREEMPTION_MESSAGE.into())
        )
    );
    assert_eq!(phase(&pod), "Failed");
    let exit = terminated(&pod);
    assert_eq!(exit.exit_code, 143);
    assert_eq!(exit.signal, Some(15));
    assert_eq!(
        pod.status.as_ref().unwrap().reason.as_deref(),
        Some("Terminated")
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn deleting_a_running_pod_terminates_its_process_and_finalises_the_pod() {
    let Some((namespace, client, options, tmp)) = setup("node-delete").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let grace = Duration::from_secs(10);
    let spec = pid_writing_spec(tmp.path(), "", grace.as_secs() as i64);
    let pods = create_pod(&client, ns, &scheduled_pod(&node, "doomed", spec)).await;
    let pod = wait_for_pod(&pods, "doomed", "running", is_running).await;
    let pid = pid_in(&tmp.path().join("pid")).await;
    assert!(process_alive(pid));

    let uid = pod.metadata.uid.clone().unwrap();
    pods.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let gone = await_condition(
        pods.clone(),
        "doomed",
        kube::runtime::conditions::is_deleted(&uid),
    );
    tokio::time::timeout(grace, gone)
        .await
        .expect("the pod is finalised within its grace period")
        .unwrap();
    eventually("the process is gone", grace, || !process_alive(pid)).await;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_pod_that_ignores_sigterm_is_killed_when_its_grace_period_ends() {
    let Some((namespace, client, options, tmp)) = setup("node-stubborn").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let grace = Duration::from_secs(2);
    let spec = pid_writing_spec(tmp.path(), "trap '' TERM; ", grace.as_secs() as i64);
    let pods = create_pod(&client, ns, &scheduled_pod(&node, "stubborn", spec)).await;
    let pod = wait_for_pod(&pods, "stubborn", "running", is_running).await;
    let pid = pid_in(&tmp.path().join("pid")).await;

    let uid = pod.metadata.uid.clone().unwrap();
    let deleted_at = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    let gone = await_condition(
        pods.clone(),
        "stubborn",
        kube::runtime::conditions::is_deleted(&uid),
    );
    tokio::time::timeout(TIMEOUT, gone)
        .await
        .expect("the pod is finalised")
        .unwrap();
    let waited = deleted_at.elapsed();
    assert!(
        waited >= grace - Duration::from_millis(200),
        "SIGKILL came early: {waited:?}"
    );
    assert!(!process_alive(pid), "the stubborn process is killed");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_node_kills_its_processes_and_vanishes_while_its_pods_stay_running() {
    let Some((namespace, client, options, tmp)) = setup("node-lost").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let spec = pid_writing_spec(tmp.path(), "", 30);
    let pods = create_pod(&client, ns, &scheduled_pod(&node, "orphan", spec)).await;
    wait_for_pod(&pods, "orphan", "running", is_running).await;
    let pid = pid_in(&tmp.path().join("pid")).await;

    node.lose().await.unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    assert!(
        nodes.get_opt(node.name()).await.unwrap().is_none(),
        "the Node is deleted"
    );
    eventually("the process is killed", Duration::from_secs(5), || {
        !process_alive(pid)
    })
    .await;
    let pod = pods.get("orphan").await.unwrap();
    assert_eq!(phase(&pod), "Running", "nobody reports for a lost node");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_pod_that_cannot_start_fails_with_the_kubelets_reason() {
    let Some((namespace, client, options, _tmp)) = setup("node-broken").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let node = TestNode::start(client.clone(), options).await.unwrap();
    // Bound directly (no scheduler): the scheduler would not place a pod with a missing claim.
    let unknown_claim = pod(
        "unknown-claim",
        json!({
            "nodeName": node.name(),
            "containers": [{
                "name": "main", "image": "busybox", "command": ["true"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "nowhere" } }],
        }),
    );
    let missing_binary = pod(
        "missing-binary",
        json!({
            "nodeName": node.name(),
            "containers": [{ "name": "main", "image": "busybox", "command": ["/no/such/binary"] }],
        }),
    );
    let pods = create_pod(&client, ns, &unknown_claim).await;
    create_pod(&client, ns, &missing_binary).await;

    let pod = wait_for_pod(&pods, "unknown-claim", "ended", has_ended).await;
    assert_eq!(phase(&pod), "Failed");
    let exit = terminated(&pod);
    assert_eq!(exit.reason.as_deref(), Some("CreateContainerConfigError"));
    assert!(
        exit.message.as_deref().unwrap().contains("\"nowhere\""),
        "{exit:?}"
    );

    let pod = wait_for_pod(&pods, "missing-binary", "ended", has_ended).await;
    assert_eq!(phase(&pod), "Failed");
    let exit = terminated(&pod);
    assert_eq!(exit.reason.as_deref(), Some("StartError"));
    assert!(
        exit.message.as_deref().unwrap().contains("/no/such/binary"),
        "{exit:?}"
    );
    assert!(node.pods_started().is_empty());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_first_container_with_mapped_commands() {
    let Some((namespace, client, mut options, tmp)) = setup("node-init").await else {
        return;
    };
    let ns = namespace.name.as_str();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    options.claims.insert("scratch".into(), scratch.clone());
    options.commands.insert("greeter".into(), "/bin/sh".into());
    let node = TestNode::start(client.clone(), options).await.unwrap();
    let spec = json!({
        "nodeName": node.name(),
        "initContainers": [
            { "name": "first", "image": "busybox", "command": ["/bin/sh", "-c", "echo first >> /data/log"],
              "volumeMounts": [{ "name": "data", "mountPath": "/data" }] },
            { "name": "second", "image": "busybox", "command": ["/bin/sh", "-c", "echo second >> /data/log"],
              "volumeMounts": [{ "name": "data", "mountPath": "/data" }] },
        ],
        "containers": [{
            "name": "main", "image": "registry.example/greeter:1",
            "command": ["/usr/local/bin/greeter"], "args": ["-c", "echo $(WORD) >> $(LOG)"],
            "env": [
                { "name": "DIR", "value": "/data" },
                { "name": "LOG", "value": "$(DIR)/log" },
                { "name": "WORD", "value": "main" },
            ],
            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
        }],
        "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "scratch" } }],
    });
    let pods = create_pod(&client, ns, &pod("initialised", spec)).await;
    let pod = wait_for_pod(&pods, "initialised", "ended", has_ended).await;

    assert_eq!(phase(&pod), "Succeeded", "{:#?}", pod.status);
    assert_eq!(
        std::fs::read_to_string(scratch.join("log")).unwrap(),
        "first\nsecond\nmain\n"
    );
    let init = pod
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .clone()
        .unwrap();
    let names: Vec<&str> = init.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    for status in &init {
        let exit = status.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (exit.exit_code, exit.reason.as_deref()),
            (0, Some("Completed"))
        );
    }
    assert_eq!(condition(&pod, "Initialized").unwrap().0, "True");
    node.stop().await.unwrap();
}
