//! The process-backed test node: TEST INFRASTRUCTURE that plays the kubelet of one Node on the
//! test control plane, which has no kubelet. The operator and the trainer under test are the real
//! ones; only the node is simulated.
//!
//! [`TestNode::start`] registers a Node (GPU capacity, and spot labels and taints when asked),
//! which the real scheduler then binds pods to. The node watches the pods bound to it and runs
//! each as host processes: it maps the pod's volumes to directories, runs the init containers in
//! order and then the **first container only**, rewrites container paths in the command line and
//! environment to host paths, and reports the pod's status through the `pods/status` subresource
//! as a kubelet does. It can also reclaim a pod as a spot instance would
//! ([`TestNode::preempt`]) and vanish altogether ([`TestNode::lose`]).
//!
//! What it assumes and leaves out, so that tests do not rely on it:
//! - `restartPolicy` is taken to be `Never`: an exited container is never restarted and its exit
//!   decides the pod's phase (0 → `Succeeded`, anything else → `Failed`).
//! - Containers after the first are ignored (not run, not reported). Sidecar init containers
//!   (`restartPolicy: Always`) fail the pod with `CreateContainerConfigError`.
//! - There are no images: `command[0]` is looked up in [`NodeOptions::commands`] (by the whole
//!   word, then by its file name), else it is a host path or a name looked up on PATH; a container
//!   without `command` runs the entrypoint that `commands` names for its image's name.
//! - Processes share the host's network and file system. Each pod gets its own loopback address
//!   (127.0.0.2, 127.0.0.3, ... – Linux routes all of 127/8 to `lo`), reported as its pod IP;
//!   nothing stops a process from binding elsewhere. Addresses are unique within one test
//!   process only.
//! - A container path in an argument, a variable, `workingDir` or a script (a mount path, or the
//!   termination message path) is rewritten where it stands as a whole path (see
//!   `sandbox::PathMap`); paths the pod builds at run time are not.
//! - A container sees only its own variables, plus `PATH` and `LD_LIBRARY_PATH` of the host, `HOME`
//!   (a sandbox directory) and `HOSTNAME` (the pod name); no service links.
//! - Probes, lifecycle hooks, resource limits, security contexts, `readOnly` mounts, ports and
//!   `activeDeadlineSeconds` are not enforced. A container is ready as soon as it started.
//! - The node never goes stale: the control plane runs no node lifecycle controller, so Ready
//!   stays True until [`TestNode::lose`] deletes the Node.
//! - A missing `kube-root-ca.crt` ConfigMap (no root-CA publisher runs) is projected as an empty
//!   `ca.crt`.
//!
//! Logs: `debug` for each pod transition, `warn` when a container cannot start or a status cannot
//! be written (enable with a tracing subscriber and `RUST_LOG=voxel_e2e=debug`).

mod expansion;
mod pod;
mod sandbox;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        HostPathVolumeSource, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus,
        NodeSystemInfo, ObjectReference, PersistentVolume, PersistentVolumeClaim,
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec, Pod, Taint,
        VolumeResourceRequirements,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        wait::{await_condition, conditions},
        watcher::{self, Event, watcher},
    },
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::debug;

use self::pod::Wanted;

/// The node's own address, reported as every pod's `hostIP`.
pub const HOST_IP: &str = "127.0.0.1";

/// Label (and taint key) naming the test node, so that a test's pods land on its own node only:
/// they carry a matching nodeSelector and toleration (see [`TestNode::pod_placement`]).
pub const TEST_NODE_LABEL: &str = "voxel.dev/test-node";

/// The labels by which GKE, Karpenter, EKS and AKS mark spot capacity.
pub const SPOT_LABELS: [(&str, &str); 4] = [
    ("cloud.google.com/gke-spot", "true"),
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
];

/// The `NoSchedule` taints GKE and AKS put on spot nodes.
pub const SPOT_TAINTS: [(&str, &str); 2] = [
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
];

/// `reason` of the `DisruptionTarget` condition of a preempted pod, the kubelet's own.
pub const PREEMPTION_REASON: &str = "TerminationByKubelet";

/// `message` of that condition, and of the preempted pod's status.
pub const PREEMPTION_MESSAGE: &str = "test node: spot instance reclaimed";

/// The longest a pod's processes get between SIGTERM and SIGKILL, whatever the pod asks for:
/// tests should not wait minutes on a stubborn process.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_PERIOD_S: i64 = 30;

/// The node's capacity besides GPUs: a plausible training machine.
const CPU: &str = "16";
const MEMORY: &str = "64Gi";
const EPHEMERAL_STORAGE: &str = "200Gi";
const MAX_PODS: &str = "110";

/// The extended resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// How long [`TestNode::lose`] and [`TestNode::stop`] wait for a pod's task to notice.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// What node to register and how to run its pods.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The Node's name; unique per test, since tests share the control plane.
    pub name: String,
    /// `nvidia.com/gpu` capacity.
    pub gpus: u32,
    /// Marks the node as spot capacity (labels and taints of [`SPOT_LABELS`], [`SPOT_TAINTS`]).
    pub spot: bool,
    /// More labels.
    pub extra_labels: BTreeMap<String, String>,
    /// More taints.
    pub extra_taints: Vec<Taint>,
    /// Host folder for the pods' sandboxes: `root/<namespace>/<pod>/`.
    pub root: PathBuf,
    /// PersistentVolumeClaim name → the host folder it stands for (claims of every namespace).
    /// A claim not named here resolves through its bound PersistentVolume's `hostPath` or `local`
    /// path (see [`bind_claim`]).
    pub claims: BTreeMap<String, PathBuf>,
    /// A container's `command[0]` (e.g. `voxel-trainer`) → the host executable that runs for it.
    pub commands: BTreeMap<String, PathBuf>,
}

impl NodeOptions {
    /// Options for a node without GPUs, claims or commands.
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            root: root.into(),
            ..Self::default()
        }
    }
}

/// A registered node whose pods run as host processes. Stop it with [`TestNode::stop`]; dropped
/// without that it still kills its processes, but leaves the Node object behind.
pub struct TestNode {
    host: Arc<Host>,
    watch: Mutex<Option<JoinHandle<()>>>,
}

/// What the pod tasks share: the API, the options, and the pods known.
struct Host {
    client: Client,
    node: String,
    root: PathBuf,
    claims: BTreeMap<String, PathBuf>,
    commands: BTreeMap<String, PathBuf>,
    /// Pods bound here, by uid.
    pods: Mutex<BTreeMap<String, PodEntry>>,
    /// `<namespace>/<name>` of each pod whose first process started, in order.
    started: Mutex<Vec<String>>,
    /// Set by `lose` and `stop`: nothing more is written to the API.
    lost: AtomicBool,
}

/// The node's handle on one pod's task.
struct PodEntry {
    key: String,
    /// The grace period the pod's spec asks for (capped).
    grace: Duration,
    wanted: watch::Sender<Wanted>,
    /// True once the task has reported the pod's end.
    finished: watch::Receiver<bool>,
    /// Process group of the running container; 0 when none runs.
    process_group: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl TestNode {
    /// Registers the node (replacing a Node of the same name), makes it Ready and schedulable,
    /// and starts running the pods bound to it.
    pub async fn start(client: Client, options: NodeOptions) -> anyhow::Result<TestNode> {
        let name = options.name.clone();
        let nodes: Api<Node> = Api::all(client.clone());
        if let Some(old) = nodes.get_opt(&name).await? {
            delete_node(&nodes, &name).await?;
            let uid = old.uid().unwrap_or_default();
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(nodes.clone(), &name, conditions::is_deleted(&uid)),
            )
            .await
            .with_context(|| format!("the old Node {name} was not deleted within 30 s"))??;
        }

        let taints = taints(&options);
        nodes
            .create(&PostParams::default(), &node_object(&options, &taints))
            .await
            .with_context(|| format!("cannot create Node {name}"))?;
        let version = client.apiserver_version().await?.git_version;
        let status = serde_json::json!({ "status": node_status(&options, &version) });
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("cannot report the status of Node {name}"))?;
        // The TaintNodesByCondition admission plugin adds `node.kubernetes.io/not-ready` to a new
        // Node, and no node lifecycle controller runs to lift it once the node is Ready.
        let spec = serde_json::json!({ "spec": { "taints": taints } });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&spec))
            .await
            .with_context(|| format!("cannot set the taints of Node {name}"))?;
        debug!(node = %name, gpus = options.gpus, spot = options.spot, "test node ready");

        let host = Arc::new(Host {
            client,
            node: name,
            root: options.root,
            claims: options.claims,
            commands: options.commands,
            pods: Mutex::new(BTreeMap::new()),
            started: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
        });
        let watch = tokio::spawn(watch_pods(host.clone()));
        Ok(TestNode {
            host,
            watch: Mutex::new(Some(watch)),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.host.node
    }

    /// The nodeSelector and toleration that place a pod on this node and no other:
    /// `(nodeSelector, tolerations)` to set in a pod spec.
    pub fn pod_placement(
        &self,
    ) -> (
        BTreeMap<String, String>,
        Vec<k8s_openapi::api::core::v1::Toleration>,
    ) {
        let selector = BTreeMap::from([(TEST_NODE_LABEL.to_string(), self.host.node.clone())]);
        let toleration = k8s_openapi::api::core::v1::Toleration {
            key: Some(TEST_NODE_LABEL.into()),
            operator: Some("Equal".into()),
            value: Some(self.host.node.clone()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        (selector, vec![toleration])
    }

    /// The sandbox folder of a pod of this node (its logs, termination log and volumes).
    pub fn sandbox_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.host.root.join(namespace).join(pod)
    }

    /// Reclaims the node's instance under one pod, as a spot provider does: marks the pod
    /// `DisruptionTarget` (reason `TerminationByKubelet`), sends SIGTERM to its processes,
    /// SIGKILL after its grace period, and returns once the pod is reported `Failed` with the
    /// exit code (143 after SIGTERM). The pod object stays.
    pub async fn preempt(&self, namespace: &str, pod: &str) -> anyhow::Result<()> {
        let key = format!("{namespace}/{pod}");
        let (wanted, mut finished, grace) = {
            let pods = self
                .host
                .pods
                .lock()
                .expect("the pod table is never poisoned");
            let entry = pods
                .values()
                .find(|e| e.key == key && !*e.finished.borrow())
                .with_context(|| {
                    format!("pod {key} is not running on test node {}", self.name())
                })?;
            (entry.wanted.clone(), entry.finished.clone(), entry.grace)
        };

        let condition = serde_json::json!({ "status": { "conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": PREEMPTION_REASON,
            "message": PREEMPTION_MESSAGE,
            "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        let pods: Api<Pod> = Api::namespaced(self.host.client.clone(), namespace);
        pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(condition))
            .await
            .with_context(|| format!("cannot mark pod {key} as a disruption target"))?;
        debug!(pod = %key, grace_s = grace.as_secs(), "preempting");

        wanted.send_modify(|w| w.stop_by(Instant::now() + grace, true));
        let limit = grace + Duration::from_secs(30);
        tokio::time::timeout(limit, finished.wait_for(|done| *done))
            .await
            .with_context(|| format!("pod {key} was not reported failed within {limit:?}"))?
            .with_context(|| format!("test node {} stopped while preempting {key}", self.name()))?;
        Ok(())
    }

    /// The node vanishes: every process is killed at once, nothing more is reported (pods stay
    /// as last reported, typically Running), the Node object is deleted.
    pub async fn lose(&self) -> anyhow::Result<()> {
        self.shut_down().await;
        let nodes: Api<Node> = Api::all(self.host.client.clone());
        delete_node(&nodes, &self.host.node).await?;
        debug!(node = %self.host.node, "test node lost");
        Ok(())
    }

    /// `<namespace>/<name>` of each pod this node started a process for, in start order.
    pub fn pods_started(&self) -> Vec<String> {
        self.host
            .started
            .lock()
            .expect("the start log is never poisoned")
            .clone()
    }

    /// Kills the node's processes and deletes its Node object (after [`TestNode::lose`] too).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.lose().await
    }

    /// Stops watching, tells every pod task to forget its pod, and waits for them.
    async fn shut_down(&self) {
        self.host.lost.store(true, Ordering::SeqCst);
        let watch = self
            .watch
            .lock()
            .expect("the watch slot is never poisoned")
            .take();
        if let Some(watch) = watch {
            watch.abort();
            let _ = watch.await;
        }
        let entries = std::mem::take(&mut *self.host.pods.lock().expect("never poisoned"));
        for entry in entries.values() {
            entry.wanted.send_modify(|w| w.gone = true);
        }
        for mut entry in entries.into_values() {
            if tokio::time::timeout(SHUTDOWN_WAIT, &mut entry.task)
                .await
                .is_err()
            {
                entry.task.abort();
            }
            // The task kills its process; this covers a task that was stuck.
            let group = entry.process_group.load(Ordering::SeqCst);
            if group != 0 {
                signal_group(group, "KILL");
            }
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.host.lost.store(true, Ordering::SeqCst);
        if let Ok(mut watch) = self.watch.lock()
            && let Some(watch) = watch.take()
        {
            watch.abort();
        }
        if let Ok(mut pods) = self.host.pods.lock() {
            for entry in std::mem::take(&mut *pods).into_values() {
                entry.task.abort();
                let group = entry.process_group.load(Ordering::SeqCst);
                if group != 0 {
                    signal_group(group, "KILL");
                }
            }
        }
    }
}

impl Host {
    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn record_start(&self, key: &str) {
        let mut started = self
            .started
            .lock()
            .expect("the start log is never poisoned");
        started.push(key.to_string());
    }

    /// A pod bound here was added or changed: start supervising it, or pass on its deletion.
    fn observe(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let grace = grace_period(&pod);
        let mut pods = self.pods.lock().expect("the pod table is never poisoned");
        if let Some(entry) = pods.get(&uid) {
            if deleting {
                let deletion_grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .map_or(entry.grace, seconds);
                entry.wanted.send_if_modified(|w| {
                    let before = *w;
                    w.stop_by(Instant::now() + deletion_grace, false);
                    w.finalize = true;
                    *w != before
                });
            }
            return;
        }

        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let mut wanted = Wanted::default();
        if deleting {
            wanted.stop_by(Instant::now(), false);
            wanted.finalize = true;
        }
        let (wanted, wanted_rx) = watch::channel(wanted);
        let (finished_tx, finished) = watch::channel(false);
        let process_group = Arc::new(AtomicU32::new(0));
        debug!(pod = %key, "pod bound to the test node");
        let task = tokio::spawn(pod::supervise(
            self.clone(),
            pod,
            wanted_rx,
            finished_tx,
            process_group.clone(),
        ));
        pods.insert(
            uid,
            PodEntry {
                key,
                grace,
                wanted,
                finished,
                process_group,
                task,
            },
        );
    }

    /// A pod's object is gone (finalised, or force-deleted): kill what is left of it.
    fn forget(&self, uid: &str) {
        let entry = self
            .pods
            .lock()
            .expect("the pod table is never poisoned")
            .remove(uid);
        if let Some(entry) = entry {
            debug!(pod = %entry.key, "pod object gone");
            entry.wanted.send_modify(|w| w.gone = true);
        }
    }
}

/// Follows the pods bound to the node until the node stops.
async fn watch_pods(host: Arc<Host>) {
    let pods: Api<Pod> = Api::all(host.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", host.node));
    let mut events = pin!(watcher(pods, config).default_backoff());
    // Uids seen in a relist: pods the node knows but the relist lacks were deleted meanwhile.
    let mut relisted: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relisted = Some(BTreeSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (&mut relisted, &pod.metadata.uid) {
                    seen.insert(uid.clone());
                }
                host.observe(pod);
            }
            Ok(Event::InitDone) => {
                let seen = relisted.take().unwrap_or_default();
                let known: Vec<String> = {
                    let pods = host.pods.lock().expect("the pod table is never poisoned");
                    pods.keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect()
                };
                for uid in known {
                    host.forget(&uid);
                }
            }
            Ok(Event::Apply(pod)) => host.observe(pod),
            Ok(Event::Delete(pod)) => host.forget(pod.metadata.uid.as_deref().unwrap_or_default()),
            Err(error) => debug!(node = %host.node, %error, "pod watch failed; retrying"),
        }
    }
}

/// The grace period a pod's spec asks for, capped at [`MAX_GRACE_PERIOD`].
fn grace_period(pod: &Pod) -> Duration {
    let spec = pod.spec.as_ref();
    let asked = spec.and_then(|s| s.termination_grace_period_seconds);
    seconds(asked.unwrap_or(DEFAULT_GRACE_PERIOD_S))
}

fn seconds(value: i64) -> Duration {
    Duration::from_secs(value.max(0) as u64).min(MAX_GRACE_PERIOD)
}

/// Sends a signal (`TERM`, `KILL`) to a process group with kill(1); a group that is already gone
/// is no error.
fn signal_group(group: u32, signal: &str) {
    let result = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{group}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(error) = result {
        tracing::warn!(group, signal, %error, "cannot run kill(1)");
    }
}

/// A fresh loopback address per pod, unique within the test process: 127.0.0.2, 127.0.0.3, ...
/// (skipping the .0 and .255 of each /24).
fn allocate_pod_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(2);
    loop {
        let [_, b, c, d] = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        if d != 0 && d != 255 {
            return format!("127.{b}.{c}.{d}");
        }
    }
}

async fn delete_node(nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot delete Node {name}")),
    }
}

fn taint(key: &str, value: &str) -> Taint {
    Taint {
        key: key.into(),
        value: Some(value.into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }
}

/// The node's taints: its own, the spot ones, the extra ones.
fn taints(options: &NodeOptions) -> Vec<Taint> {
    let mut taints = vec![taint(TEST_NODE_LABEL, &options.name)];
    if options.spot {
        taints.extend(SPOT_TAINTS.iter().map(|(k, v)| taint(k, v)));
    }
    taints.extend(options.extra_taints.iter().cloned());
    taints
}

fn node_object(options: &NodeOptions, taints: &[Taint]) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), options.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (TEST_NODE_LABEL.to_string(), options.name.clone()),
    ]);
    if options.spot {
        labels.extend(
            SPOT_LABELS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    labels.extend(options.extra_labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(options.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints.to_vec()),
            ..Default::default()
        }),
        status: None,
    }
}

fn node_status(options: &NodeOptions, kubelet_version: &str) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(CPU.into())),
        ("memory".to_string(), Quantity(MEMORY.into())),
        (
            "ephemeral-storage".to_string(),
            Quantity(EPHEMERAL_STORAGE.into()),
        ),
        ("pods".to_string(), Quantity(MAX_PODS.into())),
        (GPU_RESOURCE.to_string(), Quantity(options.gpus.to_string())),
    ]);
    let now = Some(Time(Timestamp::now()));
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: now.clone(),
        last_transition_time: now.clone(),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let machine = format!("voxel-test-node-{}", options.name);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "test node",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "test node",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "test node",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "test node: kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: HOST_IP.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: options.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "Voxel test node (host processes)".into(),
            kernel_version: kernel.trim().to_string(),
            kubelet_version: kubelet_version.into(),
            kube_proxy_version: String::new(),
            container_runtime_version: "test-node://0.1.0".into(),
            boot_id: format!("{machine}-{}", Timestamp::now().as_second()),
            machine_id: machine.clone(),
            system_uuid: machine,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Provisions a claim as the PersistentVolume controller would (the test control plane runs
/// none, and the scheduler refuses pods whose claims are unbound): creates the claim `name` in
/// `namespace` unless it exists, a `hostPath` PersistentVolume of `host_dir` for it (named
/// `<namespace>-<name>`, left behind as the control plane is), and binds the two. The test
/// node then maps the claim to `host_dir`.
pub async fn bind_claim(
    client: &Client,
    namespace: &str,
    name: &str,
    host_dir: &Path,
) -> anyhow::Result<()> {
    const SIZE: &str = "10Gi";
    const ACCESS: &str = "ReadWriteMany";
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume_name = format!("{namespace}-{name}");
    let size = BTreeMap::from([("storage".to_string(), Quantity(SIZE.into()))]);

    let claim = match claims.get_opt(name).await? {
        Some(claim) => claim,
        None => {
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec![ACCESS.into()]),
                    storage_class_name: Some(String::new()),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(size.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            };
            claims.create(&PostParams::default(), &claim).await?
        }
    };
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    if bound_to.is_some_and(|v| v != volume_name) {
        bail!("claim {namespace}/{name} is bound to another volume already");
    }

    let volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec![ACCESS.into()]),
            capacity: Some(size.clone()),
            storage_class_name: Some(String::new()),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            host_path: Some(HostPathVolumeSource {
                path: host_dir.display().to_string(),
                type_: Some("Directory".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: claim.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .with_context(|| format!("cannot create PersistentVolume {volume_name}"))?;
    let bound = serde_json::json!({ "status": { "phase": "Bound" } });
    volumes
        .patch_status(&volume_name, &PatchParams::default(), &Patch::Merge(&bound))
        .await?;

    // The finalizers of the StorageObjectInUseProtection admission plugin are lifted by a
    // controller that does not run here; without this the claim's namespace never goes away.
    let binding = serde_json::json!({
        "metadata": {
            "finalizers": null,
            "annotations": { "pv.kubernetes.io/bind-completed": "yes" },
        },
        "spec": { "volumeName": volume_name },
    });
    claims
        .patch(name, &PatchParams::default(), &Patch::Merge(&binding))
        .await?;
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: Some(vec![ACCESS.into()]),
        capacity: Some(size),
        ..Default::default()
    };
    let status = serde_json::json!({ "status": status });
    claims
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let unprotected = serde_json::json!({ "metadata": { "finalizers": null } });
    volumes
        .patch(
            &volume_name,
            &PatchParams::default(),
            &Patch::Merge(&unprotected),
        )
        .await?;
    Ok(())
}
