//! Helpers of the end-to-end tests: the built `voxel` and `voxel-trainer` executables, the
//! shipped example data, and small manifests over it.
//!
//! The executables are the workspace's own, found beside the test binary
//! (`target/<profile>/`), so `cargo build --workspace --bins` must have run first; the
//! Makefile's `test` target does that.
//!
//! The cluster tests run against the test control plane of `scripts/with-control-plane.sh`
//! ([`control_plane`]); [`node`] is the process-backed node that plays its kubelet.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sha2::{Digest, Sha256};

pub mod node;

/// A workspace executable, built into the same target folder as the running test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's executables first (`cargo build --workspace --bins`, \
         which `make test` runs)",
        path.display()
    );
    path
}

/// `voxel` with the workspace's `voxel-trainer`, one LibTorch thread per trainer (kernels are
/// deterministic for a fixed thread count) and the state in `state`.
pub fn voxel(state: &Path) -> Command {
    let mut command = Command::new(workspace_bin("voxel"));
    command
        .env("VOXEL_TRAINER", workspace_bin("voxel-trainer"))
        .env("VOXEL_STATE", state)
        .env_remove("VOXEL_REGISTRY")
        .env("RUST_LOG", "warn");
    command
}

/// The output of a command that must succeed, or a panic with its stderr.
pub fn success(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The example data folder (real hippocampus MRI, see `examples/hippocampus/data/README.md`).
pub fn example_data() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hippocampus/data");
    // Canonical: a PersistentVolume's hostPath must not contain `..`.
    std::fs::canonicalize(&path).expect("the example folder exists")
}

/// The subjects of a dataset CSV, sorted.
pub fn dataset_subjects(csv: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(csv).expect("the dataset CSV reads");
    let mut subjects: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next())
        .map(str::to_string)
        .collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

/// `sha256:<hex>` of a file's bytes.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("the file reads");
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An example manifest from `examples/hippocampus/`, shrunk so that it trains in seconds: the
/// shipped subset (`dataset_small.csv`, 40 subjects) with a fifth held out for the test, a narrow
/// two-level U-Net on 16³ patches, `epochs` epochs, a local data folder made absolute. Everything
/// else (kinds, names, folds, seeds, ensembles, comparisons, publication) is the example's own.
pub fn shrunk_example(name: &str, epochs: u32) -> serde_yaml::Value {
    let path = example_data().join("..").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut manifest: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = &mut manifest["spec"];
    let experiment = if spec.get("template").is_some() {
        &mut spec["template"]
    } else {
        spec
    };
    if experiment.get("model").is_some() {
        let model = &mut experiment["model"];
        model["network"]["baseChannels"] = 4.into();
        model["network"]["levels"] = 2.into();
        model["preprocessing"]["cropSize"] = yaml("[16, 16, 16]");
        model["preprocessing"]["tileSize"] = yaml("[24, 32, 24]");
        experiment["training"]["epochs"] = epochs.into();
        experiment["training"]["optimizer"]["learningRate"] = 0.01.into();
        experiment["training"]["checkpointEveryEpochs"] = 1.into();
    }
    let data = &mut experiment["data"];
    // A cluster manifest reads its data from a claim, which the test maps to the same folder.
    if data["source"].get("persistentVolumeClaim").is_none() {
        data["source"]["localPath"] = example_data().display().to_string().into();
    }
    data["dataset"] = "dataset_small.csv".into();
    data["split"]["testFraction"] = 0.2.into();
    manifest
}

/// Writes a manifest into `dir` as `<file>` and returns its path.
pub fn write_manifest(dir: &Path, file: &str, manifest: &serde_yaml::Value) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(
        &path,
        serde_yaml::to_string(manifest).expect("a YAML value serialises"),
    )
    .expect("the manifest is written");
    path
}

/// A YAML value from its text.
pub fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

/// The test control plane that `scripts/with-control-plane.sh` started: its admin kubeconfig and
/// a kubectl. `None` (with a note on stderr) when there is none; with `CI` set a missing control
/// plane fails the test instead, so that CI never skips the cluster layer silently.
pub fn control_plane() -> Option<ControlPlane> {
    match std::env::var_os("VOXEL_TEST_KUBECONFIG") {
        Some(kubeconfig) => Some(ControlPlane {
            kubeconfig: PathBuf::from(kubeconfig),
            kubectl: std::env::var_os("VOXEL_TEST_KUBECTL")
                .map_or_else(|| PathBuf::from("kubectl"), PathBuf::from),
        }),
        None if std::env::var_os("CI").is_some() => panic!(
            "CI is set but VOXEL_TEST_KUBECONFIG is not: run the tests through \
             scripts/with-control-plane.sh (make test does)"
        ),
        None => {
            eprintln!(
                "skipped: no test control plane (VOXEL_TEST_KUBECONFIG unset); `make test` \
                 starts one when Go is installed"
            );
            None
        }
    }
}

/// A running test control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The kubectl executable.
    pub kubectl: PathBuf,
}

impl ControlPlane {
    /// A Kubernetes client with the admin credentials of the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        use anyhow::Context as _;
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("cannot read {}", self.kubeconfig.display()))?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs kubectl against the control plane with `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.kubectl.display()));
        let mut input = child.stdin.take().expect("stdin is piped");
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("kubectl reads its input");
        drop(input);
        child.wait_with_output().expect("kubectl ends")
    }

    /// Runs kubectl and panics with its stderr unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.kubectl(args, stdin);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Installs the CRDs generated from the types (server-side apply, so that every test may
    /// do it) and waits until the API server serves them.
    pub fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/voxel/crds");
        let crds = crds.display().to_string();
        self.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=voxel-e2e",
                "-f",
                &crds,
            ],
            None,
        );
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &crds,
            ],
            None,
        );
    }

    /// Creates a namespace of its own for one test; the namespace controller removes it and
    /// everything in it when the returned guard drops.
    pub fn namespace(&self, prefix: &str) -> Namespace {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        self.kubectl_ok(&["create", "namespace", &name], None);
        Namespace {
            control_plane: self.clone(),
            name,
        }
    }
}

/// A namespace deleted (without waiting) when dropped.
#[derive(Debug)]
pub struct Namespace {
    control_plane: ControlPlane,
    /// Its name.
    pub name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .control_plane
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}
