//! A pod's sandbox on the host: its volumes as directories, and each container's command line,
//! environment and working directory with every container path rewritten to the host path it
//! stands for.
//!
//! Layout under `NodeOptions::root`:
//!
//! ```text
//! <namespace>/<pod>/volumes/<volume>/           emptyDir, configMap, secret, downwardAPI, projected
//! <namespace>/<pod>/home/                       HOME of every container
//! <namespace>/<pod>/<container>.stdout|.stderr  the container's output, kept after the pod
//! <namespace>/<pod>/<container>.termination-log its terminationMessagePath
//! ```
//!
//! A `persistentVolumeClaim` maps to `NodeOptions::claims[claimName]`, or else to the `hostPath`
//! or `local` path of the PersistentVolume the claim is bound to; a `hostPath` volume is the host
//! path itself. Other volume types are refused.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{
        ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
        PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
    },
};
use kube::{Api, api::PostParams};

use super::{HOST_IP, Host, expansion::expand};

/// `state.terminated.reason` of a container whose configuration the node cannot satisfy.
pub(super) const CONFIG_ERROR: &str = "CreateContainerConfigError";

/// `state.terminated.reason` of a container whose process did not start.
pub(super) const START_ERROR: &str = "StartError";

/// The kubelet's default `terminationMessagePath`.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Mode of projected files when the volume names none (the API server's default as well).
const DEFAULT_FILE_MODE: i32 = 0o644;

/// Host variables every container inherits: the trainer needs LibTorch's libraries, and a shell
/// command needs a PATH. Everything else of the test's environment is withheld, as a container
/// would not see it.
const INHERITED_VARIABLES: [&str; 2] = ["PATH", "LD_LIBRARY_PATH"];

/// The ConfigMap that the root-ca-cert-publisher controller would put in every namespace; the
/// test control plane does not run that controller, so the node projects it empty.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Why a container cannot start: the words of `state.terminated.reason` and `message`.
#[derive(Debug)]
pub(super) struct StartFailure {
    pub reason: &'static str,
    pub message: String,
}

impl StartFailure {
    fn config(message: impl Into<String>) -> Self {
        Self {
            reason: CONFIG_ERROR,
            message: message.into(),
        }
    }
}

/// A pod's directories on the host.
#[derive(Debug)]
pub(super) struct Sandbox {
    /// `root/<namespace>/<pod>/`.
    pub dir: PathBuf,
    /// Volume name → its directory on the host.
    volumes: BTreeMap<String, PathBuf>,
}

/// What it takes to start one container as a host process.
#[derive(Debug)]
pub(super) struct Launch {
    /// The executable: from `NodeOptions::commands`, a mapped path, or a name for PATH lookup.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment of the process.
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The host file behind the container's `terminationMessagePath`.
    pub termination_log: PathBuf,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub fallback_to_logs: bool,
}

impl Sandbox {
    /// Creates the sandbox of `pod` and fills its volumes. A sandbox left by an earlier pod of the
    /// same name is moved aside (to `<pod>~<n>`), so that its logs stay readable.
    pub async fn prepare(host: &Host, pod: &Pod, pod_ip: &str) -> Result<Self, StartFailure> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let dir = host.root.join(namespace).join(name);
        set_aside(&dir).map_err(|e| io_failure(&dir, &e))?;
        for sub in ["volumes", "home"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| io_failure(&path, &e))?;
        }

        let mut sandbox = Self {
            dir,
            volumes: BTreeMap::new(),
        };
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        for volume in volumes.unwrap_or_default() {
            let path = sandbox
                .materialise(host, pod, pod_ip, volume)
                .await
                .map_err(|e| {
                    StartFailure::config(format!("volume \"{}\": {}", volume.name, e.message))
                })?;
            sandbox.volumes.insert(volume.name.clone(), path);
        }
        Ok(sandbox)
    }

    /// The command line, environment and files of `container`, with container paths mapped to
    /// host paths.
    pub async fn launch(
        &self,
        host: &Host,
        pod: &Pod,
        pod_ip: &str,
        container: &Container,
    ) -> Result<Launch, StartFailure> {
        let env = environment(host, pod, pod_ip, container).await?;
        let lookup = |name: &str| env.get(name).cloned();

        let termination_log = self.dir.join(format!("{}.termination-log", container.name));
        std::fs::write(&termination_log, b"").map_err(|e| io_failure(&termination_log, &e))?;
        let mut paths = vec![(
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_string()),
            termination_log.clone(),
        )];
        for mount in container.volume_mounts.as_deref().unwrap_or_default() {
            let volume = self.volumes.get(&mount.name).ok_or_else(|| {
                StartFailure::config(format!("volumeMount of unknown volume \"{}\"", mount.name))
            })?;
            let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
                (Some(path), _) => path.clone(),
                (None, Some(expr)) => expand(expr, lookup),
                (None, None) => String::new(),
            };
            let host_path = if sub_path.is_empty() {
                volume.clone()
            } else {
                let path = volume.join(relative(&sub_path)?);
                if !path.exists() {
                    // The kubelet creates a missing subPath as a directory.
                    std::fs::create_dir_all(&path).map_err(|e| io_failure(&path, &e))?;
                }
                path
            };
            paths.push((mount.mount_path.clone(), host_path));
        }
        let paths = PathMap::new(paths);

        let (program, args) = command_line(host, container, &paths, &lookup)?;
        let working_dir = match &container.working_dir {
            Some(dir) => PathBuf::from(paths.map(dir)),
            None => self.dir.clone(),
        };

        let mut process_env: BTreeMap<String, String> = INHERITED_VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        process_env.insert("HOME".into(), self.dir.join("home").display().to_string());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        process_env.insert("HOSTNAME".into(), pod_name);
        for (name, value) in &env {
            process_env.insert(name.clone(), paths.map(value));
        }

        Ok(Launch {
            program,
            args,
            env: process_env,
            working_dir,
            stdout: self.dir.join(format!("{}.stdout", container.name)),
            stderr: self.dir.join(format!("{}.stderr", container.name)),
            termination_log,
            fallback_to_logs: container.termination_message_policy.as_deref()
                == Some("FallbackToLogsOnError"),
        })
    }

    /// The host directory of one volume, created and filled.
    async fn materialise(
        &self,
        host: &Host,
        pod: &Pod,
        pod_ip: &str,
        volume: &Volume,
    ) -> Result<PathBuf, StartFailure> {
        let dir = self.dir.join("volumes").join(&volume.name);
        let create = |dir: &Path| std::fs::create_dir_all(dir).map_err(|e| io_failure(dir, &e));
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");

        if volume.empty_dir.is_some() {
            create(&dir)?;
        } else if let Some(source) = &volume.config_map {
            create(&dir)?;
            let mode = source.default_mode.unwrap_or(DEFAULT_FILE_MODE);
            let data = key_values(host, namespace, Kind::ConfigMap, &source.name).await?;
            project(
                &dir,
                Kind::ConfigMap,
                &source.name,
                data,
                &source.items,
                source.optional,
                mode,
            )?;
        } else if let Some(source) = &volume.secret {
            create(&dir)?;
            let mode = source.default_mode.unwrap_or(DEFAULT_FILE_MODE);
            let name = source.secret_name.as_deref().unwrap_or_default();
            let data = key_values(host, namespace, Kind::Secret, name).await?;
            project(
                &dir,
                Kind::Secret,
                name,
                data,
                &source.items,
                source.optional,
                mode,
            )?;
        } else if let Some(source) = &volume.downward_api {
            create(&dir)?;
            let mode = source.default_mode.unwrap_or(DEFAULT_FILE_MODE);
            downward_files(
                &dir,
                pod,
                pod_ip,
                source.items.as_deref().unwrap_or_default(),
                mode,
            )?;
        } else if let Some(source) = &volume.projected {
            create(&dir)?;
            let mode = source.default_mode.unwrap_or(DEFAULT_FILE_MODE);
            for projection in source.sources.as_deref().unwrap_or_default() {
                if let Some(cm) = &projection.config_map {
                    let mut data = key_values(host, namespace, Kind::ConfigMap, &cm.name).await?;
                    if data.is_none() && cm.name == ROOT_CA_CONFIG_MAP {
                        data = Some(BTreeMap::from([("ca.crt".to_string(), Vec::new())]));
                    }
                    project(
                        &dir,
                        Kind::ConfigMap,
                        &cm.name,
                        data,
                        &cm.items,
                        cm.optional,
                        mode,
                    )?;
                } else if let Some(secret) = &projection.secret {
                    let data = key_values(host, namespace, Kind::Secret, &secret.name).await?;
                    let (items, optional) = (&secret.items, secret.optional);
                    project(
                        &dir,
                        Kind::Secret,
                        &secret.name,
                        data,
                        items,
                        optional,
                        mode,
                    )?;
                } else if let Some(downward) = &projection.downward_api {
                    downward_files(
                        &dir,
                        pod,
                        pod_ip,
                        downward.items.as_deref().unwrap_or_default(),
                        mode,
                    )?;
                } else if let Some(token) = &projection.service_account_token {
                    let jwt = service_account_token(host, pod, token.audience.clone()).await?;
                    let expiry = token.expiration_seconds;
                    tracing::debug!(volume = %volume.name, expiry, "projected a service account token");
                    write_file(&dir, &token.path, jwt.as_bytes(), 0o600)?;
                } else {
                    return Err(StartFailure::config(
                        "test node: only configMap, secret, downwardAPI and serviceAccountToken \
                         projections are supported",
                    ));
                }
            }
        } else if let Some(source) = &volume.persistent_volume_claim {
            return claim_dir(host, namespace, &source.claim_name).await;
        } else if let Some(source) = &volume.host_path {
            let path = PathBuf::from(&source.path);
            if source.type_.as_deref() == Some("DirectoryOrCreate") {
                create(&path)?;
            } else if !path.exists() {
                return Err(StartFailure::config(format!(
                    "hostPath {} does not exist",
                    path.display()
                )));
            }
            return Ok(path);
        } else {
            return Err(StartFailure::config(
                "test node: unsupported volume type (supported: emptyDir, configMap, secret, \
                 downwardAPI, projected, persistentVolumeClaim, hostPath)",
            ));
        }
        Ok(dir)
    }
}

/// Moves an existing sandbox directory out of the way, to the first free `<dir>~<n>`.
fn set_aside(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let aside = (1..)
        .map(|n| dir.with_file_name(format!("{name}~{n}")))
        .find(|path| !path.exists())
        .expect("an unbounded range has a free name");
    std::fs::rename(dir, aside)
}

fn io_failure(path: &Path, error: &std::io::Error) -> StartFailure {
    StartFailure::config(format!("test node: {}: {error}", path.display()))
}

/// A path inside a volume: relative, without `..`.
fn relative(path: &str) -> Result<&Path, StartFailure> {
    let path = Path::new(path);
    let escapes = path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(StartFailure::config(format!(
            "path {} must be relative and must not contain '..'",
            path.display()
        )));
    }
    Ok(path)
}

/// Writes one projected file, creating its parent directories.
fn write_file(dir: &Path, path: &str, bytes: &[u8], mode: i32) -> Result<(), StartFailure> {
    let file = dir.join(relative(path)?);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_failure(parent, &e))?;
    }
    std::fs::write(&file, bytes).map_err(|e| io_failure(&file, &e))?;
    let permissions = std::fs::Permissions::from_mode((mode & 0o777) as u32);
    std::fs::set_permissions(&file, permissions).map_err(|e| io_failure(&file, &e))
}

/// The two kinds of key–value objects that volumes and variables read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }
}

/// The keys and (decoded) values of a ConfigMap or Secret; `None` when it does not exist.
async fn key_values(
    host: &Host,
    namespace: &str,
    kind: Kind,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, StartFailure> {
    let failure = |e: kube::Error| {
        StartFailure::config(format!("cannot read {} \"{name}\": {e}", kind.word()))
    };
    let client = host.client.clone();
    Ok(match kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client, namespace);
            api.get_opt(name).await.map_err(failure)?.map(|cm| {
                let text = cm.data.unwrap_or_default().into_iter();
                let binary = cm.binary_data.unwrap_or_default().into_iter();
                text.map(|(k, v)| (k, v.into_bytes()))
                    .chain(binary.map(|(k, v)| (k, v.0)))
                    .collect()
            })
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client, namespace);
            api.get_opt(name).await.map_err(failure)?.map(|secret| {
                let data = secret.data.unwrap_or_default().into_iter();
                data.map(|(k, v)| (k, v.0)).collect()
            })
        }
    })
}

/// Writes the keys of a ConfigMap or Secret as files: all of them, or the `items` chosen.
fn project(
    dir: &Path,
    kind: Kind,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: &Option<Vec<KeyToPath>>,
    optional: Option<bool>,
    mode: i32,
) -> Result<(), StartFailure> {
    let optional = optional.unwrap_or(false);
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(StartFailure::config(format!(
            "{} \"{name}\" not found",
            kind.word()
        )));
    };
    match items {
        None => {
            for (key, value) in &data {
                write_file(dir, key, value, mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => write_file(dir, &item.path, value, item.mode.unwrap_or(mode))?,
                    None if optional => {}
                    None => {
                        return Err(StartFailure::config(format!(
                            "{} \"{name}\" has no key \"{}\"",
                            kind.word(),
                            item.key
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes downward API files: pod fields, with the whole label or annotation map as
/// `key="value"` lines.
fn downward_files(
    dir: &Path,
    pod: &Pod,
    pod_ip: &str,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
) -> Result<(), StartFailure> {
    for item in items {
        let Some(field) = &item.field_ref else {
            return Err(StartFailure::config(format!(
                "downwardAPI file {}: test node: only fieldRef is supported",
                item.path
            )));
        };
        let map = match field.field_path.as_str() {
            "metadata.labels" => Some(&pod.metadata.labels),
            "metadata.annotations" => Some(&pod.metadata.annotations),
            _ => None,
        };
        let text = match map {
            Some(map) => map
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect(),
            None => pod_field(pod, Some(pod_ip), &field.field_path)?,
        };
        write_file(dir, &item.path, text.as_bytes(), item.mode.unwrap_or(mode))?;
    }
    Ok(())
}

/// The value of a `fieldRef` path for `pod`, whose IP is `pod_ip`.
fn pod_field(pod: &Pod, pod_ip: Option<&str>, path: &str) -> Result<String, StartFailure> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let entry = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => pod_ip.map(str::to_string),
        "status.hostIP" | "status.hostIPs" => Some(HOST_IP.to_string()),
        _ => entry(&meta.labels, "metadata.labels['")
            .or_else(|| entry(&meta.annotations, "metadata.annotations['"))
            .map(Some)
            .ok_or_else(|| {
                StartFailure::config(format!("test node: unsupported fieldRef {path}"))
            })?,
    };
    Ok(value.unwrap_or_default())
}

/// A bound token of the pod's service account, as the kubelet projects it.
async fn service_account_token(
    host: &Host,
    pod: &Pod,
    audience: Option<String>,
) -> Result<String, StartFailure> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(host.client.clone(), namespace);
    let response = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            StartFailure::config(format!(
                "cannot get a token of serviceaccount \"{account}\": {e}"
            ))
        })?;
    Ok(response.status.and_then(|s| s.token).unwrap_or_default())
}

/// The host directory of a PersistentVolumeClaim.
async fn claim_dir(host: &Host, namespace: &str, claim: &str) -> Result<PathBuf, StartFailure> {
    if let Some(dir) = host.claims.get(claim) {
        return Ok(dir.clone());
    }
    let failure =
        |e: kube::Error| StartFailure::config(format!("cannot read claim \"{claim}\": {e}"));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(host.client.clone(), namespace);
    let volume_name = claims
        .get_opt(claim)
        .await
        .map_err(failure)?
        .and_then(|c| c.spec?.volume_name);
    let volume = match volume_name {
        Some(name) => {
            let volumes: Api<PersistentVolume> = Api::all(host.client.clone());
            volumes.get_opt(&name).await.map_err(failure)?
        }
        None => None,
    };
    let spec = volume.and_then(|v| v.spec);
    let path = spec.and_then(|s| {
        let host_path = s.host_path.map(|h| h.path);
        host_path.or(s.local.map(|l| l.path))
    });
    path.map(PathBuf::from).ok_or_else(|| {
        StartFailure::config(format!(
            "test node: no host directory for persistentvolumeclaim \"{claim}\" (NodeOptions::claims \
             does not name it and it is not bound to a hostPath or local PersistentVolume)"
        ))
    })
}

/// The container's variables as the container sees them: `envFrom` first, then `env` in order,
/// each value expanded over the variables before it.
async fn environment(
    host: &Host,
    pod: &Pod,
    pod_ip: &str,
    container: &Container,
) -> Result<BTreeMap<String, String>, StartFailure> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = BTreeMap::new();

    for source in container.env_from.as_deref().unwrap_or_default() {
        let prefix = source.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(cm), _) => (Kind::ConfigMap, cm.name.as_str(), cm.optional),
            (None, Some(secret)) => (Kind::Secret, secret.name.as_str(), secret.optional),
            (None, None) => continue,
        };
        match key_values(host, namespace, kind, name).await? {
            Some(data) => {
                for (key, value) in data {
                    let value = String::from_utf8_lossy(&value).into_owned();
                    env.insert(format!("{prefix}{key}"), value);
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(StartFailure::config(format!(
                    "{} \"{name}\" not found",
                    kind.word()
                )));
            }
        }
    }

    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => Some(expand(value, |name| env.get(name).cloned())),
            (None, Some(source)) => {
                if let Some(field) = &source.field_ref {
                    Some(pod_field(pod, Some(pod_ip), &field.field_path)?)
                } else if let Some(key) = &source.config_map_key_ref {
                    let data = key_values(host, namespace, Kind::ConfigMap, &key.name).await?;
                    selected_key(Kind::ConfigMap, &key.name, &key.key, key.optional, data)?
                } else if let Some(key) = &source.secret_key_ref {
                    let data = key_values(host, namespace, Kind::Secret, &key.name).await?;
                    selected_key(Kind::Secret, &key.name, &key.key, key.optional, data)?
                } else {
                    return Err(StartFailure::config(format!(
                        "variable {}: test node: only fieldRef, configMapKeyRef and secretKeyRef \
                         are supported",
                        var.name
                    )));
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }
    Ok(env)
}

/// One key of a ConfigMap or Secret for a variable; `None` for a missing optional one.
fn selected_key(
    kind: Kind,
    name: &str,
    key: &str,
    optional: Option<bool>,
    data: Option<BTreeMap<String, Vec<u8>>>,
) -> Result<Option<String>, StartFailure> {
    match data.as_ref().and_then(|d| d.get(key)) {
        Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
        None if optional == Some(true) => Ok(None),
        None => Err(StartFailure::config(format!(
            "couldn't find key {key} in {} \"{name}\"",
            kind.word()
        ))),
    }
}

/// The executable and its arguments: `command` (or, without one, the entrypoint that
/// `NodeOptions::commands` names for the image) and `args`, expanded, with paths mapped.
fn command_line(
    host: &Host,
    container: &Container,
    paths: &PathMap,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(PathBuf, Vec<String>), StartFailure> {
    let expanded = |words: &Option<Vec<String>>| -> Vec<String> {
        let words = words.as_deref().unwrap_or_default();
        words.iter().map(|w| expand(w, lookup)).collect()
    };
    let mut words = expanded(&container.command);
    words.extend(expanded(&container.args));

    let program = match container.command.as_deref() {
        Some([first, ..]) => {
            let first = expand(first, lookup);
            words.remove(0);
            let base = Path::new(&first)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let known = host.commands.get(&first);
            match known.or_else(|| host.commands.get(base.as_deref()?)) {
                Some(path) => path.clone(),
                None => PathBuf::from(paths.map(&first)),
            }
        }
        _ => {
            // No command: the image's entrypoint, known only through NodeOptions::commands.
            let image = container.image.as_deref().unwrap_or_default();
            host.commands
                .get(image_name(image))
                .cloned()
                .ok_or_else(|| {
                    StartFailure::config(format!(
                        "test node: container \"{}\" has no command and NodeOptions::commands has \
                         no entrypoint for image \"{image}\" (looked up as \"{}\")",
                        container.name,
                        image_name(image)
                    ))
                })?
        }
    };
    let args = words.iter().map(|w| paths.map(w)).collect();
    Ok((program, args))
}

/// The name of an image without registry, tag or digest: `ghcr.io/x/voxel-trainer:1` →
/// `voxel-trainer`.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Container paths (mount paths and the termination message path) and the host paths they stand
/// for.
#[derive(Debug)]
pub(super) struct PathMap {
    /// Longest container path first, so that nested mounts win over their parents.
    entries: Vec<(String, String)>,
}

impl PathMap {
    pub fn new(entries: Vec<(String, PathBuf)>) -> Self {
        let mut entries: Vec<(String, String)> = entries
            .into_iter()
            .map(|(container, host)| {
                let container = container.trim_end_matches('/').to_string();
                (container, host.display().to_string())
            })
            .filter(|(container, _)| !container.is_empty())
            .collect();
        entries.sort_by_key(|(container, _)| std::cmp::Reverse(container.len()));
        Self { entries }
    }

    /// `value` with every container path in it replaced by its host path. A container path
    /// counts where it stands as a whole path: at the start or after a character that cannot be
    /// part of a path (a space, `=`, a quote, `;`, `:` ...), and followed by `/`, the end, or such
    /// a character. So `/work`, `/work/out.txt`, `--out=/work/x` and the `/work/out.txt` inside a
    /// shell script all map, while `/workspace` and `/data/work` do not.
    pub fn map(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut previous: Option<char> = None;
        let mut index = 0;
        'scan: while index < value.len() {
            let rest = &value[index..];
            if rest.starts_with('/') && !previous.is_some_and(is_path_char) {
                for (container, host) in &self.entries {
                    let Some(after) = rest.strip_prefix(container.as_str()) else {
                        continue;
                    };
                    let next = after.chars().next();
                    if next.is_none_or(|c| c == '/' || !is_path_char(c)) {
                        out.push_str(host);
                        index += container.len();
                        previous = container.chars().last();
                        continue 'scan;
                    }
                }
            }
            let c = rest.chars().next().expect("index is inside the string");
            out.push(c);
            index += c.len_utf8();
            previous = Some(c);
        }
        out
    }
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~' | '+' | '@' | '%' | ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> PathMap {
        PathMap::new(vec![
            ("/work/".into(), PathBuf::from("/host/claim")),
            ("/work/cache".into(), PathBuf::from("/host/empty")),
            (
                "/dev/termination-log".into(),
                PathBuf::from("/host/sandbox/t.log"),
            ),
        ])
    }

    #[test]
    fn a_mount_path_and_paths_below_it_map_to_the_host() {
        let paths = paths();
        assert_eq!(paths.map("/work"), "/host/claim");
        assert_eq!(paths.map("/work/out.txt"), "/host/claim/out.txt");
        assert_eq!(paths.map("--output=/work/x"), "--output=/host/claim/x");
    }

    #[test]
    fn the_longest_mount_path_wins() {
        assert_eq!(paths().map("/work/cache/a"), "/host/empty/a");
        assert_eq!(paths().map("/work/cached"), "/host/claim/cached");
    }

    #[test]
    fn paths_inside_a_shell_script_map() {
        let script = r#"echo "$X" > /work/out.txt; echo m > /dev/termination-log"#;
        assert_eq!(
            paths().map(script),
            r#"echo "$X" > /host/claim/out.txt; echo m > /host/sandbox/t.log"#
        );
    }

    #[test]
    fn names_that_only_share_a_prefix_or_suffix_do_not_map() {
        let paths = paths();
        assert_eq!(paths.map("/workspace"), "/workspace");
        assert_eq!(paths.map("/data/work/x"), "/data/work/x");
        assert_eq!(paths.map("http://h/work"), "http://h/work");
        assert_eq!(paths.map("/work.txt"), "/work.txt");
    }

    #[test]
    fn an_image_name_drops_registry_tag_and_digest() {
        assert_eq!(image_name("ghcr.io/org/voxel-trainer:0.1"), "voxel-trainer");
        assert_eq!(image_name("voxel-trainer@sha256:abc"), "voxel-trainer");
        assert_eq!(image_name("localhost:5000/voxel-trainer"), "voxel-trainer");
    }

    #[test]
    fn sub_paths_must_stay_inside_their_volume() {
        assert!(relative("a/b").is_ok());
        assert!(relative("../b").is_err());
        assert!(relative("/etc").is_err());
    }
}
