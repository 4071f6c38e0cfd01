//! The children of an Experiment, built as pure functions of the Experiment and the operator's
//! settings: the ConfigMap with the trainer's configuration and the pod of each attempt.
//!
//! Nothing here talks to the API server, so that every field can be checked in table tests and
//! the controller stays a thin loop around [`crate::attempts::plan`] and these builders.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
        EmptyDirVolumeSource, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
        NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
        SeccompProfile, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use thiserror::Error;
use voxel_crds::{
    Ensemble, Experiment,
    experiment::{ExperimentSpec, S3Store},
};

use crate::attempts::pod_name;

/// Port of the trainer's metrics endpoint in its pod.
pub const METRICS_PORT: u16 = 9090;
/// Where the ConfigMap with the configuration is mounted.
pub const CONFIG_DIR: &str = "/etc/voxel";
/// File name of the configuration in the ConfigMap.
pub const CONFIG_FILE: &str = "experiment.yaml";
/// Where the data claim is mounted, read-only.
pub const DATA_DIR: &str = "/data";
/// Where the artifact claim is mounted.
pub const ARTIFACTS_DIR: &str = "/artifacts";
/// The container's only writable scratch folder (the root file system is read-only).
pub const SCRATCH_DIR: &str = "/tmp";
/// Name of the trainer container.
pub const TRAINER_CONTAINER: &str = "trainer";
/// Where the trainer leaves its termination message (the kubelet's default path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Label with the name of the Experiment a child belongs to.
pub const LABEL_EXPERIMENT: &str = "voxel.dev/experiment";
/// Label with the attempt number of a trainer pod.
pub const LABEL_ATTEMPT: &str = "voxel.dev/attempt";

/// User and group the trainer runs as: any non-root id works, this is the conventional
/// "nonroot" of distroless images.
const TRAINER_UID: i64 = 65532;

/// Labels that GKE, Karpenter, EKS and AKS put on spot capacity: a spot trainer requires a node
/// with one of them.
pub const SPOT_NODE_LABELS: [(&str, &str); 4] = [
    ("cloud.google.com/gke-spot", "true"),
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
];

/// `NoSchedule` taints that GKE and AKS put on spot nodes: a spot trainer tolerates them.
pub const SPOT_TAINTS: [(&str, &str); 2] = [
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
];

/// The operator's side of the pod: what is the same for every Experiment it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Image of the trainer container.
    pub trainer_image: String,
    /// Extended resource of a GPU when the Experiment names none.
    pub gpu_resource: String,
    /// Claim for artifacts of Experiments that set no `spec.artifacts`, if any.
    pub default_artifacts_claim: Option<String>,
    /// Image pull policy of the trainer container (`IfNotPresent` unless set).
    pub image_pull_policy: Option<String>,
    /// The trainer's `--device` for every pod, instead of `cuda` for pods with GPUs and `cpu`
    /// for the others (`auto` for nodes whose GPUs the trainer may not see, such as the
    /// process-backed test node).
    pub trainer_device: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            trainer_image: "ghcr.io/voxel-dev/voxel-trainer:0.1.0".into(),
            gpu_resource: "nvidia.com/gpu".into(),
            default_artifacts_claim: None,
            image_pull_policy: None,
            trainer_device: None,
        }
    }
}

/// Why an Experiment cannot run on a cluster as written.
#[derive(Debug, Error, PartialEq)]
pub enum BuildError {
    /// `spec.data.source` is not something a pod can mount.
    #[error(
        "spec.data.source: a cluster reads data from a persistentVolumeClaim; localPath is for \
         local mode (`voxel run`)"
    )]
    DataNotMountable,
    /// Nowhere to write checkpoints.
    #[error(
        "spec.artifacts: set persistentVolumeClaim or s3 (or start the operator with \
         --artifacts-claim) so that checkpoints survive a preempted pod"
    )]
    NoArtifactStore,
}

/// Where an Experiment's artifacts live.
#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactLocation {
    /// A folder of a claim mounted into the pod.
    Claim {
        /// The claim.
        claim: String,
        /// Folder inside the claim: `<subPath>/<namespace>/<name>`.
        path: String,
    },
    /// A key prefix in a bucket the trainer mirrors its output folder to.
    Bucket {
        /// The store, as the Experiment names it.
        store: S3Store,
        /// Key prefix: `<prefix>/<namespace>/<name>`.
        key: String,
    },
}

impl ArtifactLocation {
    /// The location as written in `status.artifacts`: `pvc://<claim>/<path>` or
    /// `s3://<bucket>/<key>`.
    pub fn uri(&self) -> String {
        match self {
            Self::Claim { claim, path } => format!("pvc://{claim}/{path}"),
            Self::Bucket { store, key } => format!("s3://{}/{key}", store.bucket),
        }
    }
}

/// The artifact location of an Experiment.
pub fn artifact_location(
    experiment: &Experiment,
    settings: &Settings,
) -> Result<ArtifactLocation, BuildError> {
    let namespace = experiment.namespace().unwrap_or_default();
    let name = experiment.name_any();
    let under = |prefix: Option<&str>| match prefix.map(|p| p.trim_matches('/')) {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}/{namespace}/{name}"),
        _ => format!("{namespace}/{name}"),
    };
    let store = experiment.spec.artifacts.as_ref();
    if let Some(s3) = store.and_then(|s| s.s3.as_ref()) {
        return Ok(ArtifactLocation::Bucket {
            store: s3.clone(),
            key: under(s3.prefix.as_deref()),
        });
    }
    // An Experiment that started on the operator's default claim stays there, even if the
    // operator restarts with another (or without one).
    if store.is_none()
        && let Some(recorded) = experiment
            .status
            .as_ref()
            .and_then(|s| s.artifacts.as_deref())
        && let Some((claim, path)) = recorded
            .strip_prefix("pvc://")
            .and_then(|r| r.split_once('/'))
        && !claim.is_empty()
    {
        return Ok(ArtifactLocation::Claim {
            claim: claim.into(),
            path: path.into(),
        });
    }
    let (claim, sub_path) = match store.and_then(|s| s.persistent_volume_claim.as_ref()) {
        Some(claim) => (claim.claim_name.clone(), claim.sub_path.clone()),
        None => (
            settings
                .default_artifacts_claim
                .clone()
                .ok_or(BuildError::NoArtifactStore)?,
            None,
        ),
    };
    Ok(ArtifactLocation::Claim {
        claim,
        path: under(sub_path.as_deref()),
    })
}

/// Name of the ConfigMap holding an Experiment's configuration.
pub fn config_map_name(experiment: &str) -> String {
    const MAX: usize = 253;
    let name = format!("{experiment}-config");
    if name.len() <= MAX {
        name
    } else {
        format!("{}-config", &experiment[..MAX - 7])
    }
}

/// The labels every child of an Experiment carries.
pub fn labels(experiment: &Experiment, component: &str) -> BTreeMap<String, String> {
    let name = experiment.name_any();
    let mut labels = common_labels(&name, component);
    labels.insert(LABEL_EXPERIMENT.into(), label_value(&name));
    labels
}

/// The `app.kubernetes.io` labels of everything the operator makes for the resource `name`.
pub fn common_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "voxel-trainer".into()),
        // A label value is at most 63 characters; the full name is in the owner reference.
        ("app.kubernetes.io/instance".into(), label_value(name)),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/part-of".into(), "voxel".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "voxel-operator".into(),
        ),
    ])
}

/// Whether the object with `meta` is controlled by the owner with UID `owner`: the test
/// that keeps a controller from adopting an object someone else made under its child's name.
pub fn controlled_by(meta: &ObjectMeta, owner: Option<&str>) -> bool {
    owner.is_some_and(|uid| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
    })
}

/// A name cut to the 63 characters of a label value, ending on an alphanumeric character.
pub fn label_value(name: &str) -> String {
    let cut = &name[..name.len().min(63)];
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The controller owner reference to the Experiment: deleting it deletes the child, and the
/// child's events wake the Experiment's reconcile.
pub fn owner(experiment: &Experiment) -> OwnerReference {
    experiment
        .controller_owner_ref(&())
        .expect("an Experiment from the API server has a name and uid")
}

/// The ConfigMap holding the configuration the trainer reads: the Experiment's spec as a
/// manifest (status and server metadata left out).
pub fn config_map(experiment: &Experiment) -> ConfigMap {
    let manifest = Experiment {
        metadata: ObjectMeta {
            name: experiment.metadata.name.clone(),
            namespace: experiment.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: experiment.spec.clone(),
        status: None,
    };
    let yaml = serde_yaml::to_string(&manifest).expect("an Experiment serialises");
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&experiment.name_any())),
            namespace: experiment.namespace(),
            labels: Some(labels(experiment, "config")),
            owner_references: Some(vec![owner(experiment)]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), yaml)])),
        // Training must not change under a running pod; a changed spec is a new ConfigMap
        // content written by the controller before the next attempt.
        immutable: None,
        ..ConfigMap::default()
    }
}

/// The trainer pod of attempt `attempt` (1-based).
pub fn trainer_pod(
    experiment: &Experiment,
    attempt: usize,
    settings: &Settings,
) -> Result<Pod, BuildError> {
    let spec = &experiment.spec;
    let data = spec
        .data
        .source
        .persistent_volume_claim
        .as_ref()
        .ok_or(BuildError::DataNotMountable)?;
    let artifacts = artifact_location(experiment, settings)?;
    let name = experiment.name_any();

    let mut labels = labels(experiment, "trainer");
    labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());

    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        Volume {
            name: "artifacts".into(),
            // A claim is mounted; a bucket's mirror is a folder of the pod's own.
            persistent_volume_claim: match &artifacts {
                ArtifactLocation::Claim { claim, .. } => Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: None,
                }),
                ArtifactLocation::Bucket { .. } => None,
            },
            empty_dir: matches!(artifacts, ArtifactLocation::Bucket { .. })
                .then(EmptyDirVolumeSource::default),
            ..Volume::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mounts = vec![
        mount("config", CONFIG_DIR, None, true),
        mount("data", DATA_DIR, data.sub_path.clone(), true),
        mount("artifacts", ARTIFACTS_DIR, None, false),
        mount("scratch", SCRATCH_DIR, None, false),
    ];
    let output = match &artifacts {
        ArtifactLocation::Claim { path, .. } => format!("{ARTIFACTS_DIR}/{path}"),
        ArtifactLocation::Bucket { .. } => format!("{ARTIFACTS_DIR}/run"),
    };

    let mut args = vec![
        "train".to_string(),
        "--config".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        "--output".into(),
        output,
        "--data-root".into(),
        DATA_DIR.into(),
        "--termination-log".into(),
        TERMINATION_LOG.into(),
        "--log-format".into(),
        "json".into(),
        "--device".into(),
        settings.trainer_device.clone().unwrap_or_else(|| {
            if spec.resources.gpus > 0 {
                "cuda"
            } else {
                "cpu"
            }
            .into()
        }),
    ];
    let mut env = vec![
        EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        // Bound to the pod's own address: the operator scrapes it there.
        env_value(
            "VOXEL_METRICS_ADDRESS",
            &format!("$(POD_IP):{METRICS_PORT}"),
        ),
        env_value("HOME", SCRATCH_DIR),
        env_value("TMPDIR", SCRATCH_DIR),
    ];
    if let ArtifactLocation::Bucket { store, .. } = &artifacts {
        args.extend(["--sync-to".to_string(), artifacts.uri()]);
        env.extend(bucket_env(store));
    }

    let parts = PodParts {
        name: pod_name(&name, attempt),
        namespace: experiment.namespace(),
        labels,
        annotations: BTreeMap::from([
            ("prometheus.io/scrape".into(), "true".into()),
            ("prometheus.io/port".into(), METRICS_PORT.to_string()),
        ]),
        owner: owner(experiment),
        args,
        env,
        volumes,
        mounts,
        metrics_port: true,
    };
    Ok(assemble(parts, spec, settings))
}

/// Label with the name of the Ensemble an evaluation pod belongs to.
pub const LABEL_ENSEMBLE: &str = "voxel.dev/ensemble";

/// What an Ensemble's evaluation pod runs: `voxel-trainer ensemble` over member folders of one
/// claim, writing into another folder of it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleJob<'a> {
    /// The Ensemble.
    pub ensemble: &'a Ensemble,
    /// The attempt, from 1.
    pub attempt: usize,
    /// The claim with the members' folders and the output.
    pub claim: String,
    /// The members' training output folders inside the claim.
    pub members: Vec<String>,
    /// The output folder inside the claim.
    pub output: String,
    /// The test subjects to predict and score.
    pub subjects: Vec<String>,
    /// Resources and scheduling of the pod (those the members trained with).
    pub template: &'a ExperimentSpec,
}

/// Name of the evaluation pod of an Ensemble's attempt.
pub fn ensemble_pod_name(ensemble: &str, attempt: usize) -> String {
    pod_name(&format!("{ensemble}-eval"), attempt)
}

/// The pod that evaluates an Ensemble on its test subjects.
pub fn ensemble_pod(job: &EnsembleJob<'_>, settings: &Settings) -> Result<Pod, BuildError> {
    let ensemble = job.ensemble;
    let data = ensemble
        .spec
        .data
        .source
        .persistent_volume_claim
        .as_ref()
        .ok_or(BuildError::DataNotMountable)?;
    let name = ensemble.name_any();
    let mut labels = common_labels(&name, "ensemble");
    labels.insert(LABEL_ENSEMBLE.into(), label_value(&name));
    labels.insert(LABEL_ATTEMPT.into(), job.attempt.to_string());
    let volumes = vec![
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        Volume {
            name: "artifacts".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: job.claim.clone(),
                read_only: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mounts = vec![
        mount("data", DATA_DIR, data.sub_path.clone(), true),
        mount("artifacts", ARTIFACTS_DIR, None, false),
        mount("scratch", SCRATCH_DIR, None, false),
    ];
    let mut args = vec!["ensemble".to_string()];
    for member in &job.members {
        args.extend(["--model".into(), format!("{ARTIFACTS_DIR}/{member}")]);
    }
    args.extend([
        "--dataset".into(),
        format!("{DATA_DIR}/{}", ensemble.spec.data.dataset),
        "--subjects".into(),
        job.subjects.join(","),
        "--combine".into(),
        match ensemble.spec.combine {
            voxel_crds::common::Combine::Mean => "mean",
            voxel_crds::common::Combine::MajorityVote => "majority-vote",
        }
        .into(),
        "--output".into(),
        format!("{ARTIFACTS_DIR}/{}", job.output),
        "--termination-log".into(),
        TERMINATION_LOG.into(),
        "--log-format".into(),
        "json".into(),
        "--device".into(),
        settings.trainer_device.clone().unwrap_or_else(|| {
            if job.template.resources.gpus > 0 {
                "cuda"
            } else {
                "cpu"
            }
            .into()
        }),
    ]);
    if let Some(largest) = ensemble
        .spec
        .postprocessing
        .as_ref()
        .map(|p| p.largest_component)
    {
        args.extend(["--largest-component".into(), largest.to_string()]);
    }
    let parts = PodParts {
        name: ensemble_pod_name(&name, job.attempt),
        namespace: ensemble.namespace(),
        labels,
        annotations: BTreeMap::new(),
        owner: ensemble
            .controller_owner_ref(&())
            .expect("an Ensemble from the API server has a name and uid"),
        args,
        env: vec![
            env_value("HOME", SCRATCH_DIR),
            env_value("TMPDIR", SCRATCH_DIR),
        ],
        volumes,
        mounts,
        metrics_port: false,
    };
    Ok(assemble(parts, job.template, settings))
}

/// What differs between the pods the operator makes: the rest is [`assemble`]'s.
struct PodParts {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owner: OwnerReference,
    args: Vec<String>,
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    /// The container serves the trainer's progress metrics.
    metrics_port: bool,
}

/// A pod running `voxel-trainer` with `parts`, the resources and scheduling of `spec`, and the
/// restricted security profile.
fn assemble(parts: PodParts, spec: &ExperimentSpec, settings: &Settings) -> Pod {
    let gpu_resource = spec
        .resources
        .gpu_resource_name
        .clone()
        .unwrap_or_else(|| settings.gpu_resource.clone());
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if spec.resources.gpus > 0 {
        let gpus = Quantity(spec.resources.gpus.to_string());
        requests.insert(gpu_resource.clone(), gpus.clone());
        limits.insert(gpu_resource, gpus);
    }
    if let Some(cpu) = &spec.resources.cpu {
        requests.insert("cpu".into(), cpu.clone());
    }
    if let Some(memory) = &spec.resources.memory {
        requests.insert("memory".into(), memory.clone());
        limits.insert("memory".into(), memory.clone());
    }

    let container = Container {
        name: TRAINER_CONTAINER.into(),
        image: Some(settings.trainer_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["voxel-trainer".into()]),
        args: Some(parts.args),
        env: Some(parts.env),
        ports: parts.metrics_port.then(|| {
            vec![ContainerPort {
                name: Some("metrics".into()),
                container_port: i32::from(METRICS_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        resources: Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(parts.mounts),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let scheduling = &spec.scheduling;
    let mut tolerations = scheduling.tolerations.clone();
    let mut affinity = scheduling.affinity.clone();
    if scheduling.spot {
        tolerations.extend(spot_tolerations());
        affinity = Some(require_spot_node(affinity.unwrap_or_default()));
    }
    if spec.resources.gpus > 0 {
        // GPU node pools are commonly tainted with the resource name, so that only pods asking
        // for a GPU land there.
        let key = spec
            .resources
            .gpu_resource_name
            .clone()
            .unwrap_or_else(|| settings.gpu_resource.clone());
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(&key)) {
            tolerations.push(Toleration {
                key: Some(key),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            });
        }
    }

    Pod {
        metadata: ObjectMeta {
            name: Some(parts.name),
            namespace: parts.namespace,
            labels: Some(parts.labels),
            annotations: (!parts.annotations.is_empty()).then_some(parts.annotations),
            owner_references: Some(vec![parts.owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(parts.volumes),
            restart_policy: Some("Never".into()),
            // The trainer never talks to the API server.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: (!scheduling.node_selector.is_empty())
                .then(|| scheduling.node_selector.clone()),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity,
            priority_class_name: scheduling.priority_class_name.clone(),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(TRAINER_UID),
                run_as_group: Some(TRAINER_UID),
                fs_group: Some(TRAINER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The variables that configure the trainer's S3 client: the access key only by reference to
/// its Secret, never as a value in the pod.
fn bucket_env(store: &S3Store) -> Vec<EnvVar> {
    let secret = &store.credentials_secret;
    let from_secret = |name: &str, key: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        from_secret("AWS_ACCESS_KEY_ID", &secret.access_key_id_key),
        from_secret("AWS_SECRET_ACCESS_KEY", &secret.secret_access_key_key),
        env_value("AWS_REGION", store.region.as_deref().unwrap_or("us-east-1")),
    ];
    if let Some(endpoint) = &store.endpoint {
        env.push(env_value("AWS_ENDPOINT", endpoint));
        if endpoint.starts_with("http://") {
            env.push(env_value("AWS_ALLOW_HTTP", "true"));
        }
    }
    env
}

fn mount(name: &str, path: &str, sub_path: Option<String>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub_path.filter(|p| !p.is_empty()),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Tolerations of the spot taints of the major clouds.
pub fn spot_tolerations() -> Vec<Toleration> {
    SPOT_TAINTS
        .iter()
        .map(|(key, value)| Toleration {
            key: Some((*key).into()),
            operator: Some("Equal".into()),
            value: Some((*value).into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        })
        .collect()
}

/// `affinity` with a required node affinity for a spot node of any major cloud, combined
/// with the user's own required terms: node selector terms are ORed, so each user term is
/// repeated once per spot label with that label's requirement added.
pub fn require_spot_node(mut affinity: Affinity) -> Affinity {
    let spot_requirement = |(key, value): &(&str, &str)| NodeSelectorRequirement {
        key: (*key).into(),
        operator: "In".into(),
        values: Some(vec![(*value).into()]),
    };
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let user_terms = node_affinity
        .required_during_scheduling_ignored_during_execution
        .take()
        .map(|s| s.node_selector_terms)
        .filter(|terms| !terms.is_empty())
        .unwrap_or_else(|| vec![NodeSelectorTerm::default()]);
    let terms = user_terms
        .iter()
        .flat_map(|term| {
            SPOT_NODE_LABELS.iter().map(move |label| {
                let mut term = term.clone();
                term.match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(spot_requirement(label));
                term
            })
        })
        .collect();
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: terms,
    });
    affinity
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodAffinity, PodAffinityTerm};
    use voxel_crds::experiment::{ArtifactStore, PvcSource};

    use super::*;

    fn experiment(extra: &str) -> Experiment {
        let yaml = format!(
            r#"
apiVersion: voxel.dev/v1alpha1
kind: Experiment
metadata: {{name: hippo, namespace: lab, uid: 1f0e-uid}}
spec:
  model: {{task: Segmentation, architecture: UNet3D, imageChannels: [mr], structures: [anterior, posterior], preprocessing: {{cropSize: [16, 16, 16]}}}}
  training: {{epochs: 2, seed: 3}}
  data:
    source: {{persistentVolumeClaim: {{claimName: mri, subPath: hippocampus}}}}
    dataset: dataset.csv
{extra}"#
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn with_artifacts(mut e: Experiment) -> Experiment {
        e.spec.artifacts = Some(ArtifactStore {
            persistent_volume_claim: Some(PvcSource {
                claim_name: "runs".into(),
                sub_path: Some("voxel/".into()),
            }),
            s3: None,
        });
        e
    }

    fn spec(pod: &Pod) -> &PodSpec {
        pod.spec.as_ref().unwrap()
    }

    fn trainer(pod: &Pod) -> &Container {
        &spec(pod).containers[0]
    }

    #[test]
    fn the_pod_runs_the_trainer_on_the_mounted_data_and_claim() {
        let pod = trainer_pod(&with_artifacts(experiment("")), 2, &Settings::default()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("hippo-attempt-2"));
        let c = trainer(&pod);
        assert_eq!(
            c.command.as_deref(),
            Some(&["voxel-trainer".to_string()][..])
        );
        let args = c.args.clone().unwrap();
        let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("--config"), "/etc/voxel/experiment.yaml");
        assert_eq!(after("--output"), "/artifacts/voxel/lab/hippo");
        assert_eq!(after("--data-root"), "/data");
        assert_eq!(after("--termination-log"), "/dev/termination-log");
        assert_eq!(after("--device"), "cuda");
        let mounts = c.volume_mounts.clone().unwrap();
        let data = mounts.iter().find(|m| m.name == "data").unwrap();
        assert_eq!(
            (data.sub_path.as_deref(), data.read_only),
            (Some("hippocampus"), Some(true))
        );
        let volumes = spec(&pod).volumes.clone().unwrap();
        let claim = |name: &str| {
            let v = volumes.iter().find(|v| v.name == name).unwrap();
            v.persistent_volume_claim.clone().unwrap().claim_name
        };
        assert_eq!(
            (claim("data"), claim("artifacts")),
            ("mri".into(), "runs".into())
        );
        assert_eq!(spec(&pod).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_pod_meets_the_restricted_pod_security_profile() {
        let pod = trainer_pod(&with_artifacts(experiment("")), 1, &Settings::default()).unwrap();
        let pod_security = spec(&pod).security_context.clone().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_ne!(pod_security.run_as_user, Some(0));
        assert_eq!(
            pod_security.seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        let security = trainer(&pod).security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(spec(&pod).automount_service_account_token, Some(false));
        // Only the volume types the restricted profile allows.
        for volume in spec(&pod).volumes.as_ref().unwrap() {
            assert!(
                volume.config_map.is_some()
                    || volume.persistent_volume_claim.is_some()
                    || volume.empty_dir.is_some(),
                "{volume:?}"
            );
        }
    }

    #[test]
    fn children_carry_the_recommended_labels_and_an_owner_reference() {
        let e = with_artifacts(experiment(""));
        let pod = trainer_pod(&e, 3, &Settings::default()).unwrap();
        let labels = pod.metadata.labels.clone().unwrap();
        for (key, value) in [
            ("app.kubernetes.io/name", "voxel-trainer"),
            ("app.kubernetes.io/instance", "hippo"),
            ("app.kubernetes.io/component", "trainer"),
            ("app.kubernetes.io/part-of", "voxel"),
            ("app.kubernetes.io/managed-by", "voxel-operator"),
            ("voxel.dev/experiment", "hippo"),
            ("voxel.dev/attempt", "3"),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
        }
        for owners in [
            pod.metadata.owner_references.unwrap(),
            config_map(&e).metadata.owner_references.unwrap(),
        ] {
            assert_eq!(owners.len(), 1);
            assert_eq!(
                (owners[0].kind.as_str(), owners[0].uid.as_str()),
                ("Experiment", "1f0e-uid")
            );
            assert_eq!(owners[0].controller, Some(true));
        }
    }

    #[test]
    fn gpus_cpu_and_memory_become_requests_and_limits() {
        let e = with_artifacts(experiment(
            "  resources: {gpus: 2, cpu: 3500m, memory: 16Gi, gpuResourceName: amd.com/gpu}",
        ));
        let pod = trainer_pod(&e, 1, &Settings::default()).unwrap();
        let resources = trainer(&pod).resources.clone().unwrap();
        let requests = resources.requests.unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(requests["amd.com/gpu"].0, "2");
        assert_eq!(limits["amd.com/gpu"].0, "2");
        assert_eq!(requests["cpu"].0, "3500m");
        assert!(
            !limits.contains_key("cpu"),
            "a CPU limit only throttles the data loader"
        );
        assert_eq!(
            (requests["memory"].0.as_str(), limits["memory"].0.as_str()),
            ("16Gi", "16Gi")
        );
        let tolerations = spec(&pod).tolerations.clone().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("amd.com/gpu"))
        );
    }

    #[test]
    fn a_cpu_experiment_asks_for_no_gpu_and_trains_on_the_cpu() {
        let e = with_artifacts(experiment("  resources: {gpus: 0}"));
        let pod = trainer_pod(&e, 1, &Settings::default()).unwrap();
        let resources = trainer(&pod).resources.clone().unwrap();
        assert!(resources.requests.is_none() && resources.limits.is_none());
        assert!(spec(&pod).tolerations.is_none());
        let args = trainer(&pod).args.clone().unwrap();
        assert_eq!(args.last().map(String::as_str), Some("cpu"));
    }

    #[test]
    fn spot_adds_the_clouds_tolerations_and_requires_a_spot_node() {
        let e = with_artifacts(experiment("  scheduling: {spot: true}"));
        let pod = trainer_pod(&e, 1, &Settings::default()).unwrap();
        let tolerations = spec(&pod).tolerations.clone().unwrap();
        for (key, _) in SPOT_TAINTS {
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(key)),
                "{key}"
            );
        }
        let terms = spec(&pod)
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let keys: Vec<String> = terms
            .iter()
            .map(|t| t.match_expressions.as_ref().unwrap()[0].key.clone())
            .collect();
        assert_eq!(keys, SPOT_NODE_LABELS.map(|(k, _)| k.to_string()));
    }

    #[test]
    fn spot_keeps_the_users_required_terms_in_each_alternative() {
        let user = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "gpu-type".into(),
                            operator: "In".into(),
                            values: Some(vec!["h100".into()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            pod_affinity: Some(PodAffinity {
                preferred_during_scheduling_ignored_during_execution: None,
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    topology_key: "zone".into(),
                    ..PodAffinityTerm::default()
                }]),
            }),
            ..Affinity::default()
        };
        let combined = require_spot_node(user.clone());
        assert_eq!(combined.pod_affinity, user.pod_affinity);
        let terms = combined
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), SPOT_NODE_LABELS.len());
        for term in terms {
            let expressions = term.match_expressions.unwrap();
            assert_eq!(expressions[0].key, "gpu-type");
            assert_eq!(expressions.len(), 2);
        }
    }

    #[test]
    fn the_users_placement_is_kept() {
        let e = with_artifacts(experiment(
            "  scheduling:\n    nodeSelector: {pool: gpu}\n    priorityClassName: research\n    \
             tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]",
        ));
        let pod = trainer_pod(&e, 1, &Settings::default()).unwrap();
        let s = spec(&pod);
        assert_eq!(s.node_selector.clone().unwrap()["pool"], "gpu");
        assert_eq!(s.priority_class_name.as_deref(), Some("research"));
        assert_eq!(
            s.tolerations.clone().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(s.affinity.is_none());
    }

    #[test]
    fn a_local_path_or_no_artifact_store_cannot_run_on_a_cluster() {
        let mut local = with_artifacts(experiment(""));
        local.spec.data.source.persistent_volume_claim = None;
        local.spec.data.source.local_path = Some("data".into());
        assert_eq!(
            trainer_pod(&local, 1, &Settings::default()).unwrap_err(),
            BuildError::DataNotMountable
        );
        assert_eq!(
            trainer_pod(&experiment(""), 1, &Settings::default()).unwrap_err(),
            BuildError::NoArtifactStore
        );
        let settings = Settings {
            default_artifacts_claim: Some("shared".into()),
            ..Settings::default()
        };
        let location = artifact_location(&experiment(""), &settings).unwrap();
        assert_eq!(location.uri(), "pvc://shared/lab/hippo");
        // Once recorded, the default claim stays the Experiment's, whatever the operator's.
        let mut started = experiment("");
        started.status = Some(Default::default());
        started.status.as_mut().unwrap().artifacts = Some(location.uri());
        let later = artifact_location(&started, &Settings::default()).unwrap();
        assert_eq!(later, location);
    }

    #[test]
    fn a_bucket_store_mirrors_a_pod_folder_with_credentials_from_the_secret() {
        let e = experiment(
            "  artifacts:\n    s3:\n      bucket: voxel-runs\n      prefix: /team/\n      \
             endpoint: http://minio.storage:9000\n      credentialsSecret: {name: s3-keys}",
        );
        let location = artifact_location(&e, &Settings::default()).unwrap();
        assert_eq!(location.uri(), "s3://voxel-runs/team/lab/hippo");
        let pod = trainer_pod(&e, 1, &Settings::default()).unwrap();
        let c = trainer(&pod);
        let args = c.args.clone().unwrap();
        let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("--sync-to"), "s3://voxel-runs/team/lab/hippo");
        assert_eq!(after("--output"), "/artifacts/run");
        let volumes = spec(&pod).volumes.clone().unwrap();
        let artifacts = volumes.iter().find(|v| v.name == "artifacts").unwrap();
        assert!(artifacts.empty_dir.is_some() && artifacts.persistent_volume_claim.is_none());
        let env = c.env.clone().unwrap();
        let var = |name: &str| env.iter().find(|v| v.name == name).cloned().unwrap();
        for (name, key) in [
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ] {
            let v = var(name);
            assert!(v.value.is_none(), "{name} must not be a literal value");
            let secret = v.value_from.unwrap().secret_key_ref.unwrap();
            assert_eq!(
                (secret.name.as_str(), secret.key.as_str()),
                ("s3-keys", key)
            );
        }
        assert_eq!(
            var("AWS_ENDPOINT").value.as_deref(),
            Some("http://minio.storage:9000")
        );
        assert_eq!(var("AWS_ALLOW_HTTP").value.as_deref(), Some("true"));
        assert_eq!(var("AWS_REGION").value.as_deref(), Some("us-east-1"));
    }

    #[test]
    fn the_config_map_holds_the_spec_as_a_manifest() {
        let e = with_artifacts(experiment(""));
        let map = config_map(&e);
        assert_eq!(map.metadata.name.as_deref(), Some("hippo-config"));
        let yaml = &map.data.unwrap()[CONFIG_FILE];
        let read: Experiment = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(read.spec, e.spec);
        assert!(read.metadata.uid.is_none() && read.status.is_none());
    }

    #[test]
    fn long_names_give_valid_label_values() {
        let long = "a".repeat(70) + "-b";
        assert_eq!(label_value(&long).len(), 63);
        assert_eq!(label_value("x-----"), "x");
    }
}
