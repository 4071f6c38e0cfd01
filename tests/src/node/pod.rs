//! One pod's life on the test node: sandbox, init containers, the first container as a host
//! process, status reports, termination and finalisation.
//!
//! Every pod is supervised by its own task, which the node steers through a [`Wanted`] value:
//! stop the containers (deletion or preemption), delete the pod object once they stopped, or
//! forget the pod at once (its object is gone, or the node is).

use std::{
    os::unix::process::ExitStatusExt,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, warn};

use super::{
    HOST_IP, Host, PREEMPTION_MESSAGE, allocate_pod_ip,
    sandbox::{CONFIG_ERROR, Launch, Sandbox, StartFailure},
    signal_group,
};

/// The most a termination message may hold, as the kubelet truncates it.
const MAX_TERMINATION_MESSAGE_BYTES: usize = 4096;

/// How much of a failed container's log `FallbackToLogsOnError` uses.
const MAX_LOG_MESSAGE_BYTES: usize = 2048;

/// Exit code recorded for a start failure: the code container runtimes report for it.
const START_FAILURE_EXIT_CODE: i32 = 128;

/// What the node wants of a pod's task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Wanted {
    /// Stop the running container: SIGTERM now, SIGKILL at the deadline.
    pub stop: Option<Stop>,
    /// The pod has a deletionTimestamp: delete its object for good once the containers stopped.
    pub finalize: bool,
    /// Forget the pod: kill its processes at once and write nothing more to the API (the object
    /// is gone, or the node is lost).
    pub gone: bool,
}

/// The node's latest wish, copied out so that no lock is held across an await.
fn current(wanted: &watch::Receiver<Wanted>) -> Wanted {
    *wanted.borrow()
}

/// A request to stop the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stop {
    /// When SIGTERM turns into SIGKILL.
    pub deadline: Instant,
    /// A spot reclaim rather than a deletion: the pod ends Failed whatever its exit code.
    pub preempted: bool,
}

impl Wanted {
    /// Whether the containers should not (or no longer) run.
    fn stopping(&self) -> bool {
        self.stop.is_some() || self.gone
    }

    /// Asks to stop by `deadline`; an earlier request keeps its earlier deadline.
    pub fn stop_by(&mut self, deadline: Instant, preempted: bool) {
        let deadline = match self.stop {
            Some(stop) => stop.deadline.min(deadline),
            None => deadline,
        };
        let preempted = preempted || self.stop.is_some_and(|s| s.preempted);
        self.stop = Some(Stop {
            deadline,
            preempted,
        });
    }
}

/// The task of one pod: runs it unless it already ran, tells `finished` when its containers are
/// done, and finalises the object once it is deleted.
pub(super) async fn supervise(
    host: Arc<Host>,
    pod: Pod,
    mut wanted: watch::Receiver<Wanted>,
    finished: watch::Sender<bool>,
    process_group: Arc<AtomicU32>,
) {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match phase {
        Some("Succeeded" | "Failed") => {}
        // Bound here and reported running, but not by this node: an earlier node of the same
        // name ran it, and its process is gone.
        Some("Running") => {
            PodRun::new(&host, &pod, String::new())
                .lost_container()
                .await
        }
        _ => run(&host, &pod, &mut wanted, &process_group).await,
    }
    finished.send_replace(true);

    let settled = wanted.wait_for(|w| w.finalize || w.gone).await.map(|w| *w);
    if let Ok(Wanted {
        finalize: true,
        gone: false,
        ..
    }) = settled
    {
        finalise(&host, &pod).await;
    }
}

/// Runs the init containers in order, then the first container, reporting each step.
async fn run(
    host: &Host,
    pod: &Pod,
    wanted: &mut watch::Receiver<Wanted>,
    process_group: &AtomicU32,
) {
    let mut run = PodRun::new(host, pod, allocate_pod_ip());
    let spec = pod.spec.clone().unwrap_or_default();
    let Some(main) = spec.containers.first() else {
        return;
    };
    if spec.containers.len() > 1 {
        debug!(pod = %run.key, containers = spec.containers.len(), "test node runs only the first container");
    }
    if current(wanted).stopping() {
        return run.stopped_before_start(current(wanted)).await;
    }

    let sandbox = match Sandbox::prepare(host, pod, &run.pod_ip).await {
        Ok(sandbox) => sandbox,
        Err(failure) => return run.cannot_start(main, false, failure).await,
    };
    run.condition("PodReadyToStartContainers", true, None);
    debug!(pod = %run.key, ip = %run.pod_ip, sandbox = %sandbox.dir.display(), "sandbox ready");

    let init_containers = spec.init_containers.unwrap_or_default();
    run.condition("Initialized", init_containers.is_empty(), None);
    for init in &init_containers {
        if init.restart_policy.as_deref() == Some("Always") {
            let message = "test node: sidecar init containers (restartPolicy: Always) are not \
                           supported";
            let failure = StartFailure {
                reason: CONFIG_ERROR,
                message: message.into(),
            };
            return run.cannot_start(init, true, failure).await;
        }
        let Some(exit) = run
            .container(&sandbox, init, true, wanted, process_group)
            .await
        else {
            return;
        };
        if exit.code != 0 || current(wanted).stop.is_some() {
            return run.finished(Some(&exit), current(wanted)).await;
        }
    }
    run.condition("Initialized", true, None);

    if let Some(exit) = run
        .container(&sandbox, main, false, wanted, process_group)
        .await
    {
        run.finished(Some(&exit), current(wanted)).await;
    }
}

/// How a container process ended.
#[derive(Debug)]
struct Exit {
    /// The exit code, or 128 + the signal that killed the process.
    code: i32,
    signal: Option<i32>,
    message: String,
    started_at: Timestamp,
    finished_at: Timestamp,
    container_id: String,
}

/// A pod being run, and everything the node has said about it so far: each report re-sends the
/// whole status, so a later report never loses an earlier field.
struct PodRun<'a> {
    host: &'a Host,
    pod: &'a Pod,
    api: Api<Pod>,
    /// `<namespace>/<name>`, for logs and `pods_started`.
    key: String,
    pod_ip: String,
    start_time: Timestamp,
    /// The conditions the kubelet owns; `PodScheduled` (the scheduler's) and `DisruptionTarget`
    /// (set by `TestNode::preempt`) are left to the strategic merge patch.
    conditions: Vec<PodCondition>,
    init_statuses: Vec<ContainerStatus>,
    statuses: Vec<ContainerStatus>,
    /// Whether a process of this pod has started yet.
    started: bool,
}

impl<'a> PodRun<'a> {
    fn new(host: &'a Host, pod: &'a Pod, pod_ip: String) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        Self {
            host,
            pod,
            api: Api::namespaced(host.client.clone(), &namespace),
            key: format!("{namespace}/{name}"),
            pod_ip,
            start_time: Timestamp::now(),
            conditions: Vec::new(),
            init_statuses: Vec::new(),
            statuses: Vec::new(),
            started: false,
        }
    }

    /// Sets a condition; its transition time changes only when its status does.
    fn condition(&mut self, type_: &str, status: bool, reason: Option<&str>) {
        let status = if status { "True" } else { "False" }.to_string();
        let reason = reason.map(str::to_string);
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) if existing.status == status => existing.reason = reason,
            Some(existing) => {
                existing.status = status;
                existing.reason = reason;
                existing.last_transition_time = Some(Time(Timestamp::now()));
            }
            None => self.conditions.push(PodCondition {
                type_: type_.into(),
                status,
                reason,
                last_transition_time: Some(Time(Timestamp::now())),
                ..Default::default()
            }),
        }
    }

    /// Runs one container to its end: `None` when it was forgotten (nothing more is reported).
    async fn container(
        &mut self,
        sandbox: &Sandbox,
        container: &Container,
        init: bool,
        wanted: &mut watch::Receiver<Wanted>,
        process_group: &AtomicU32,
    ) -> Option<Exit> {
        let launch = match sandbox
            .launch(self.host, self.pod, &self.pod_ip, container)
            .await
        {
            Ok(launch) => launch,
            Err(failure) => {
                self.cannot_start(container, init, failure).await;
                return None;
            }
        };
        if current(wanted).stopping() {
            self.stopped_before_start(current(wanted)).await;
            return None;
        }
        let process = match Process::spawn(launch) {
            Ok(process) => process,
            Err(failure) => {
                self.cannot_start(container, init, failure).await;
                return None;
            }
        };
        process_group.store(process.group, Ordering::SeqCst);
        if !self.started {
            self.started = true;
            self.host.record_start(&self.key);
        }
        debug!(
            pod = %self.key,
            container = %container.name,
            pid = process.group,
            stdout = %process.launch.stdout.display(),
            "container started"
        );

        let running = running_status(container, process.started_at, process.group);
        self.set_status(init, running);
        if !init {
            self.condition("ContainersReady", true, None);
            self.condition("Ready", true, None);
        }
        let phase = if init { "Pending" } else { "Running" };
        self.report(phase, None).await;

        let exit = process.wait(wanted).await;
        process_group.store(0, Ordering::SeqCst);
        debug!(pod = %self.key, container = %container.name, exit_code = exit.code, "container exited");
        if current(wanted).gone {
            return None;
        }
        self.set_status(init, terminated_status(container, &exit));
        Some(exit)
    }

    /// Replaces the status of the container of the same name (or adds it).
    fn set_status(&mut self, init: bool, status: ContainerStatus) {
        let statuses = if init {
            &mut self.init_statuses
        } else {
            &mut self.statuses
        };
        match statuses.iter_mut().find(|s| s.name == status.name) {
            Some(existing) => *existing = status,
            None => statuses.push(status),
        }
    }

    /// Reports the end of the pod: after its last container exited, or after one failed.
    async fn finished(&mut self, exit: Option<&Exit>, wanted: Wanted) {
        let preempted = wanted.stop.is_some_and(|s| s.preempted);
        let phase = match exit {
            Some(exit) if exit.code == 0 && !preempted => "Succeeded",
            _ => "Failed",
        };
        self.condition("ContainersReady", false, Some("PodCompleted"));
        self.condition("Ready", false, Some("PodCompleted"));
        let reason = preempted.then_some(("Terminated", PREEMPTION_MESSAGE));
        self.report(phase, reason).await;
        debug!(pod = %self.key, phase, "pod finished");
    }

    /// Reports a container that could not start; the pod fails (restartPolicy Never).
    async fn cannot_start(&mut self, container: &Container, init: bool, failure: StartFailure) {
        warn!(pod = %self.key, container = %container.name, reason = failure.reason, message = %failure.message, "container cannot start");
        let now = Timestamp::now();
        let status = ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            started: Some(false),
            restart_count: 0,
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: START_FAILURE_EXIT_CODE,
                    reason: Some(failure.reason.into()),
                    message: Some(failure.message),
                    started_at: Some(Time(now)),
                    finished_at: Some(Time(now)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.set_status(init, status);
        self.finished(None, Wanted::default()).await;
    }

    /// A pod stopped (deleted or preempted) before any process of it started.
    async fn stopped_before_start(&mut self, wanted: Wanted) {
        if wanted.stop.is_some_and(|s| s.preempted) && !wanted.gone {
            self.finished(None, wanted).await;
        }
    }

    /// A pod reported running by an earlier node of this name: its container is lost, as the
    /// kubelet reports it after a node restart.
    async fn lost_container(&mut self) {
        let status = self.pod.status.clone().unwrap_or_default();
        self.pod_ip = status.pod_ip.unwrap_or_default();
        if let Some(start) = status.start_time {
            self.start_time = start.0;
        }
        let now = Timestamp::now();
        for mut container in status.container_statuses.unwrap_or_default() {
            container.ready = false;
            container.state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 137,
                    reason: Some("ContainerStatusUnknown".into()),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    finished_at: Some(Time(now)),
                    ..Default::default()
                }),
                ..Default::default()
            });
            self.statuses.push(container);
        }
        self.finished(None, Wanted::default()).await;
    }

    /// Patches the pod's status subresource with everything said so far.
    async fn report(&self, phase: &str, reason: Option<(&str, &str)>) {
        if self.host.is_lost() {
            return;
        }
        let ips = (!self.pod_ip.is_empty()).then(|| {
            vec![PodIP {
                ip: self.pod_ip.clone(),
            }]
        });
        let status = PodStatus {
            phase: Some(phase.into()),
            pod_ip: ips.as_ref().map(|_| self.pod_ip.clone()),
            pod_ips: ips,
            host_ip: Some(HOST_IP.into()),
            host_ips: Some(vec![HostIP { ip: HOST_IP.into() }]),
            start_time: Some(Time(self.start_time)),
            reason: reason.map(|(reason, _)| reason.into()),
            message: reason.map(|(_, message)| message.into()),
            conditions: Some(self.conditions.clone()),
            init_container_statuses: (!self.init_statuses.is_empty())
                .then(|| self.init_statuses.clone()),
            container_statuses: (!self.statuses.is_empty()).then(|| self.statuses.clone()),
            ..Default::default()
        };
        let patch = Patch::Strategic(serde_json::json!({ "status": status }));
        let name = self.pod.metadata.name.as_deref().unwrap_or_default();
        if let Err(error) = self
            .api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            warn!(pod = %self.key, phase, %error, "cannot report the pod's status");
        }
    }
}

fn running_status(container: &Container, started_at: Timestamp, pid: u32) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: image_id(container),
        container_id: Some(container_id(pid)),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(started_at)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn terminated_status(container: &Container, exit: &Exit) -> ContainerStatus {
    let reason = if exit.code == 0 { "Completed" } else { "Error" };
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: image_id(container),
        container_id: Some(exit.container_id.clone()),
        ready: false,
        started: Some(false),
        restart_count: 0,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit.code,
                signal: exit.signal,
                reason: Some(reason.into()),
                message: (!exit.message.is_empty()).then(|| exit.message.clone()),
                started_at: Some(Time(exit.started_at)),
                finished_at: Some(Time(exit.finished_at)),
                container_id: Some(exit.container_id.clone()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A made-up image ID: the node has no images, only host executables.
fn image_id(container: &Container) -> String {
    format!(
        "test-node://{}",
        container.image.as_deref().unwrap_or_default()
    )
}

fn container_id(pid: u32) -> String {
    format!("test-node://{pid}")
}

/// Deletes a pod object whose containers have stopped, as the kubelet does once it has cleaned
/// up (without it a gracefully deleted pod would stay forever).
async fn finalise(host: &Host, pod: &Pod) {
    if host.is_lost() {
        return;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(host.client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => debug!(pod = %format!("{namespace}/{name}"), "pod finalised"),
        // Gone already, or replaced by a pod of the same name (the uid precondition fails).
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
        Err(error) => {
            warn!(pod = %format!("{namespace}/{name}"), %error, "cannot finalise the pod")
        }
    }
}

/// A running container process, the leader of its own process group.
struct Process {
    child: tokio::process::Child,
    /// Its process group (= its pid).
    group: u32,
    started_at: Timestamp,
    launch: Launch,
}

impl Process {
    fn spawn(launch: Launch) -> Result<Self, StartFailure> {
        let failure = |message: String| StartFailure {
            reason: super::sandbox::START_ERROR,
            message,
        };
        let log = |path: &std::path::Path| {
            std::fs::File::create(path)
                .map_err(|e| failure(format!("test node: {}: {e}", path.display())))
        };
        let (stdout, stderr) = (log(&launch.stdout)?, log(&launch.stderr)?);
        let child = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.working_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failure(format!(
                    "cannot start {} in {}: {e}",
                    launch.program.display(),
                    launch.working_dir.display()
                ))
            })?;
        let group = child.id().expect("a freshly spawned child has a pid");
        Ok(Self {
            child,
            group,
            started_at: Timestamp::now(),
            launch,
        })
    }

    /// Waits for the process to exit, signalling its group as `wanted` asks.
    async fn wait(mut self, wanted: &mut watch::Receiver<Wanted>) -> Exit {
        let mut terminated = false;
        let mut killed = false;
        let status = loop {
            let now = *wanted.borrow_and_update();
            if now.gone && !killed {
                signal_group(self.group, "KILL");
                killed = true;
            } else if now.stop.is_some() && !terminated && !killed {
                signal_group(self.group, "TERM");
                terminated = true;
            }
            let deadline = now.stop.filter(|_| !killed).map(|s| s.deadline);
            tokio::select! {
                status = self.child.wait() => break status,
                changed = wanted.changed() => if changed.is_err() {
                    // The node dropped the pod without a word: kill it rather than leak it.
                    signal_group(self.group, "KILL");
                    break self.child.wait().await;
                },
                () = sleep_until(deadline) => {
                    signal_group(self.group, "KILL");
                    killed = true;
                }
            }
        };
        // The leader is gone; its group may not be.
        signal_group(self.group, "KILL");

        let finished_at = Timestamp::now();
        let (code, signal) = match &status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => (code, None),
                (None, Some(signal)) => (128 + signal, Some(signal)),
                (None, None) => (START_FAILURE_EXIT_CODE, None),
            },
            Err(error) => {
                warn!(pid = self.group, %error, "cannot wait for a container process");
                (START_FAILURE_EXIT_CODE, None)
            }
        };
        Exit {
            code,
            signal,
            message: termination_message(&self.launch, code),
            started_at: self.started_at,
            finished_at,
            container_id: container_id(self.group),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The termination message: the termination-log file, or with `FallbackToLogsOnError` the tail
/// of a failed container's output when the file is empty.
fn termination_message(launch: &Launch, exit_code: i32) -> String {
    let message = tail(
        &launch.termination_log,
        MAX_TERMINATION_MESSAGE_BYTES,
        false,
    );
    if !message.is_empty() || !launch.fallback_to_logs || exit_code == 0 {
        return message;
    }
    let stderr = tail(&launch.stderr, MAX_LOG_MESSAGE_BYTES, true);
    if stderr.is_empty() {
        tail(&launch.stdout, MAX_LOG_MESSAGE_BYTES, true)
    } else {
        stderr
    }
}

/// At most `limit` bytes of a text file: its start, or with `from_end` its end, cut at a
/// character boundary.
fn tail(path: &std::path::Path, limit: usize, from_end: bool) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let bytes = if bytes.len() <= limit {
        &bytes[..]
    } else if from_end {
        &bytes[bytes.len() - limit..]
    } else {
        &bytes[..limit]
    };
    // A cut may split a character; drop the partial one rather than the whole message.
    let text = String::from_utf8_lossy(bytes);
    text.trim_matches('\u{FFFD}').to_string()
}
