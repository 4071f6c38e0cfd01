//! The local model registry: a directory of immutable, numbered model versions and movable
//! aliases.
//!
//! ```text
//! <root>/<model>/versions/<N>/model.yaml     the Model resource of version N
//!                             metrics.csv    per-subject test metrics (for later comparisons)
//!                             artifacts/…    weights and configuration
//!                             publish-key    what was published, to make a retried publish a no-op
//! <root>/<model>/aliases/<alias>.json        the version an alias points to, with its history
//! <root>/<model>/.lock                       held while publishing or moving an alias
//! <root>/<model>/.staging/                   versions being assembled
//! ```
//!
//! A version is assembled completely in `.staging/` and then renamed to `versions/<N>`. The
//! rename is atomic and fails when `<N>` exists, so a version folder is never seen half-written,
//! and two publishers can never both get `N`. Publishing also holds the model's lock file, which
//! keeps versions gap-free and makes a publish with the same key return the existing version.
//! Published files are made read-only: a published version never changes.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// File name of the Model resource inside a version folder.
pub const MODEL_MANIFEST: &str = "model.yaml";
/// File name of the per-subject test metrics inside a version folder.
pub const VERSION_METRICS: &str = "metrics.csv";
/// Folder of the weights and configuration inside a version folder.
pub const ARTIFACTS: &str = "artifacts";
const PUBLISH_KEY: &str = "publish-key";
const VERSIONS: &str = "versions";
const ALIASES: &str = "aliases";
const STAGING: &str = ".staging";
const LOCK: &str = ".lock";

/// Why the registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file operation failed.
    #[error("model registry {path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model has no versions.
    #[error("model registry {root}: no model named `{model}`")]
    UnknownModel {
        /// The registry root.
        root: PathBuf,
        /// The model name asked for.
        model: String,
    },
    /// The version does not exist.
    #[error("model registry: `{model}` has no version {version} (versions: {known})")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: u32,
        /// The versions that exist, for the message.
        known: String,
    },
    /// The alias does not exist.
    #[error("model registry: `{model}` has no alias `{alias}`")]
    UnknownAlias {
        /// The model.
        model: String,
        /// The alias asked for.
        alias: String,
    },
    /// A name that cannot be a folder of the registry.
    #[error(
        "model registry: `{0}` is not a valid name (lower-case letters, digits and '-', at most 63)"
    )]
    InvalidName(String),
    /// A reference that is neither `NAME`, `NAME:VERSION` nor `NAME@ALIAS`.
    #[error("`{0}` is not a model reference: expected NAME, NAME:VERSION or NAME@ALIAS")]
    InvalidReference(String),
    /// Rendering the Model resource for a version failed.
    #[error("model registry: cannot render the Model resource of `{model}`: {message}")]
    Render {
        /// The model.
        model: String,
        /// Why.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which version of a model: a number, an alias, or the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The highest version.
    Latest,
    /// A version number.
    Version(u32),
    /// The version an alias points to.
    Alias(String),
}

/// A model and a version selector, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReference {
    /// The model name.
    pub model: String,
    /// Which version.
    pub selector: VersionSelector,
}

impl std::str::FromStr for ModelReference {
    type Err = RegistryError;

    /// Parses `NAME`, `NAME:VERSION` or `NAME@ALIAS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || RegistryError::InvalidReference(text.to_string());
        let (model, selector) = if let Some((model, version)) = text.split_once(':') {
            let version: u32 = version.parse().map_err(|_| invalid())?;
            if version == 0 {
                return Err(invalid());
            }
            (model, VersionSelector::Version(version))
        } else if let Some((model, alias)) = text.split_once('@') {
            check_name(alias).map_err(|_| invalid())?;
            (model, VersionSelector::Alias(alias.to_string()))
        } else {
            (text, VersionSelector::Latest)
        };
        check_name(model).map_err(|_| invalid())?;
        Ok(Self {
            model: model.to_string(),
            selector,
        })
    }
}

impl std::fmt::Display for ModelReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            VersionSelector::Latest => write!(f, "{}", self.model),
            VersionSelector::Version(v) => write!(f, "{}:{v}", self.model),
            VersionSelector::Alias(a) => write!(f, "{}@{a}", self.model),
        }
    }
}

/// Model and alias names are DNS-1123 labels, so that they are valid in a cluster too.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.to_string()))
    }
}

/// A version to publish.
pub struct NewVersion<'a> {
    /// The model name.
    pub model: &'a str,
    /// Identifies what is published (for example the digests of the manifest and weights): a
    /// second publish with the same key returns the existing version instead of a new one.
    pub publish_key: &'a str,
    /// Files to copy: source path and destination relative to the version folder.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Renders the Model resource (`model.yaml`) once the version number is known.
    pub render: &'a dyn Fn(u32) -> Result<String, String>,
}

/// The result of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new version was created.
    New(u32),
    /// The same publication already existed as this version.
    Existing(u32),
}

impl Published {
    /// The version number, new or existing.
    pub fn version(self) -> u32 {
        match self {
            Published::New(v) | Published::Existing(v) => v,
        }
    }
}

/// Where an alias points, with the versions it pointed to before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AliasRecord {
    /// The version the alias points to.
    pub version: u32,
    /// When it was moved there (RFC 3339).
    pub moved_at: String,
    /// Earlier versions, oldest first.
    #[serde(default)]
    pub history: Vec<u32>,
}

/// The local registry rooted at a folder.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// Holds a model's lock file until dropped.
struct ModelLock(File);

impl Drop for ModelLock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking first just makes it prompt.
        let _ = self.0.unlock();
    }
}

impl Registry {
    /// The registry in `root` (created on first publish).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The registry's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn model_dir(&self, model: &str) -> PathBuf {
        self.root.join(model)
    }

    /// The folder of a published version.
    pub fn version_dir(&self, model: &str, version: u32) -> PathBuf {
        self.model_dir(model)
            .join(VERSIONS)
            .join(version.to_string())
    }

    /// The models that have at least one version, sorted.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut models = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if check_name(&name).is_ok() && !self.versions(&name)?.is_empty() {
                models.push(name);
            }
        }
        models.sort();
        Ok(models)
    }

    /// The published versions of a model, ascending (empty for an unknown model).
    pub fn versions(&self, model: &str) -> Result<Vec<u32>, RegistryError> {
        let dir = self.model_dir(model).join(VERSIONS);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            if let Ok(version) = entry.file_name().to_string_lossy().parse::<u32>()
                && entry.path().join(MODEL_MANIFEST).is_file()
            {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// The version a reference selects.
    pub fn resolve(&self, reference: &ModelReference) -> Result<u32, RegistryError> {
        let versions = self.versions(&reference.model)?;
        if versions.is_empty() {
            return Err(RegistryError::UnknownModel {
                root: self.root.clone(),
                model: reference.model.clone(),
            });
        }
        match &reference.selector {
            VersionSelector::Latest => Ok(*versions.last().expect("not empty")),
            VersionSelector::Version(v) if versions.contains(v) => Ok(*v),
            VersionSelector::Version(v) => Err(RegistryError::UnknownVersion {
                model: reference.model.clone(),
                version: *v,
                known: versions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            VersionSelector::Alias(alias) => self
                .alias(&reference.model, alias)?
                .map(|record| record.version)
                .ok_or_else(|| RegistryError::UnknownAlias {
                    model: reference.model.clone(),
                    alias: alias.clone(),
                }),
        }
    }

    /// The Model resource text of a version.
    pub fn manifest(&self, model: &str, version: u32) -> Result<String, RegistryError> {
        let path = self.version_dir(model, version).join(MODEL_MANIFEST);
        std::fs::read_to_string(&path).map_err(io(&path))
    }

    /// Where an alias points, if it exists.
    pub fn alias(&self, model: &str, alias: &str) -> Result<Option<AliasRecord>, RegistryError> {
        let path = self.alias_path(model, alias);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RegistryError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every alias of a model with the version it points to, sorted by name.
    pub fn aliases(&self, model: &str) -> Result<Vec<(String, u32)>, RegistryError> {
        let dir = self.model_dir(model).join(ALIASES);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut aliases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(alias) = name.strip_suffix(".json")
                && let Some(record) = self.alias(model, alias)?
            {
                aliases.push((alias.to_string(), record.version));
            }
        }
        aliases.sort();
        Ok(aliases)
    }

    fn alias_path(&self, model: &str, alias: &str) -> PathBuf {
        self.model_dir(model)
            .join(ALIASES)
            .join(format!("{alias}.json"))
    }

    fn lock(&self, model: &str) -> Result<ModelLock, RegistryError> {
        let dir = self.model_dir(model);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(ModelLock(file))
    }

    /// Publishes a new version: copies the files, renders `model.yaml` with the allocated
    /// version number and makes the version visible atomically. A publish whose key matches an
    /// existing version returns that version.
    pub fn publish(&self, new: &NewVersion<'_>) -> Result<Published, RegistryError> {
        check_name(new.model)?;
        let _lock = self.lock(new.model)?;
        if let Some(version) = self.version_with_key(new.model, new.publish_key)? {
            return Ok(Published::Existing(version));
        }

        let staging = self.model_dir(new.model).join(STAGING).join(format!(
            "{}-{}",
            std::process::id(),
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        for (source, destination) in &new.files {
            let target = staging.join(destination);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(source, &target).map_err(io(source))?;
        }
        let key_path = staging.join(PUBLISH_KEY);
        std::fs::write(&key_path, new.publish_key).map_err(io(&key_path))?;

        let versions = self.model_dir(new.model).join(VERSIONS);
        std::fs::create_dir_all(&versions).map_err(io(&versions))?;
        let mut version = self.versions(new.model)?.last().copied().unwrap_or(0) + 1;
        loop {
            let manifest = (new.render)(version).map_err(|message| RegistryError::Render {
                model: new.model.to_string(),
                message,
            })?;
            let manifest_path = staging.join(MODEL_MANIFEST);
            std::fs::write(&manifest_path, manifest).map_err(io(&manifest_path))?;
            let target = versions.join(version.to_string());
            match std::fs::rename(&staging, &target) {
                Ok(()) => {
                    make_read_only(&target).map_err(io(&target))?;
                    return Ok(Published::New(version));
                }
                // Taken by a publisher that does not hold the lock (a registry shared over a
                // file system without locks): take the next number.
                Err(_) if target.exists() => version += 1,
                Err(e) => return Err(io(&target)(e)),
            }
        }
    }

    fn version_with_key(&self, model: &str, key: &str) -> Result<Option<u32>, RegistryError> {
        for version in self.versions(model)? {
            let path = self.version_dir(model, version).join(PUBLISH_KEY);
            if std::fs::read_to_string(&path).is_ok_and(|existing| existing == key) {
                return Ok(Some(version));
            }
        }
        Ok(None)
    }

    /// Moves `alias` to `version` if `allow` agrees, holding the model's lock so that the
    /// holder `allow` sees is the one replaced. `allow` gets the current holder (if any) and
    /// returns `Ok(())` to move or `Err(reason)` to keep the alias where it is.
    pub fn move_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        allow: impl FnOnce(Option<u32>) -> Result<(), String>,
    ) -> Result<Result<AliasRecord, String>, RegistryError> {
        check_name(alias)?;
        let known = self.versions(model)?;
        if !known.contains(&version) {
            return Err(RegistryError::UnknownVersion {
                model: model.to_string(),
                version,
                known: known
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let _lock = self.lock(model)?;
        let current = self.alias(model, alias)?;
        if let Err(reason) = allow(current.as_ref().map(|r| r.version)) {
            return Ok(Err(reason));
        }
        let mut history = current
            .as_ref()
            .map(|r| r.history.clone())
            .unwrap_or_default();
        if let Some(previous) = current.filter(|r| r.version != version) {
            history.push(previous.version);
        }
        let record = AliasRecord {
            version,
            moved_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            history,
        };
        let path = self.alias_path(model, alias);
        let dir = path.parent().expect("an alias path has a folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let temporary = path.with_extension("json.partial");
        let text = serde_json::to_string_pretty(&record).expect("an alias record serialises");
        std::fs::write(&temporary, text + "\n").map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        Ok(Ok(record))
    }
}

/// Removes write permission from every file and folder under `dir`.
fn make_read_only(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            make_read_only(&path)?;
        } else {
            let mut permissions = std::fs::metadata(&path)?.permissions();
            permissions.set_readonly(true);
            std::fs::set_permissions(&path, permissions)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn publish(registry: &Registry, key: &str) -> Published {
        let render = |version: u32| Ok(format!("version: {version}\n"));
        registry
            .publish(&NewVersion {
                model: "hippocampus",
                publish_key: key,
                files: Vec::new(),
                render: &render,
            })
            .unwrap()
    }

    #[test]
    fn versions_count_up_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        assert_eq!(publish(&registry, "a"), Published::New(1));
        assert_eq!(publish(&registry, "b"), Published::New(2));
        assert_eq!(registry.versions("hippocampus").unwrap(), vec![1, 2]);
        assert_eq!(registry.manifest("hippocampus", 2).unwrap(), "version: 2\n");
    }

    #[test]
    fn publishing_the_same_thing_again_returns_the_existing_version() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        publish(&registry, "a");
        assert_eq!(publish(&registry, "a"), Published::Existing(1));
        assert_eq!(registry.versions("hippocampus").unwrap(), vec![1]);
    }

    #[test]
    fn concurrent_publishers_get_distinct_consecutive_versions() {
        let dir = tempfile::tempdir().unwrap();
        let publishers = 8;
        let barrier = Arc::new(Barrier::new(publishers));
        let handles: Vec<_> = (0..publishers)
            .map(|i| {
                let registry = Registry::new(dir.path());
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    publish(&registry, &format!("publisher {i}")).version()
                })
            })
            .collect();
        let mut versions: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=publishers as u32).collect::<Vec<_>>());
        let registry = Registry::new(dir.path());
        for version in 1..=publishers as u32 {
            let text = registry.manifest("hippocampus", version).unwrap();
            assert_eq!(
                text,
                format!("version: {version}\n"),
                "the manifest names its own version"
            );
        }
    }

    #[test]
    fn published_files_are_copied_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("weights.safetensors");
        std::fs::write(&source, b"weights").unwrap();
        let registry = Registry::new(dir.path().join("registry"));
        let render = |version: u32| Ok(format!("version: {version}\n"));
        let published = registry
            .publish(&NewVersion {
                model: "hippocampus",
                publish_key: "k",
                files: vec![(source, PathBuf::from("artifacts/model.safetensors"))],
                render: &render,
            })
            .unwrap();
        let copy = registry
            .version_dir("hippocampus", published.version())
            .join("artifacts/model.safetensors");
        assert_eq!(std::fs::read(&copy).unwrap(), b"weights");
        assert!(std::fs::metadata(&copy).unwrap().permissions().readonly());
    }

    #[test]
    fn references_parse_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        publish(&registry, "a");
        publish(&registry, "b");
        registry
            .move_alias("hippocampus", "production", 1, |_| Ok(()))
            .unwrap()
            .unwrap();
        let resolve = |text: &str| registry.resolve(&text.parse().unwrap());
        assert_eq!(resolve("hippocampus").unwrap(), 2);
        assert_eq!(resolve("hippocampus:1").unwrap(), 1);
        assert_eq!(resolve("hippocampus@production").unwrap(), 1);
        let missing = resolve("hippocampus:7").unwrap_err().to_string();
        assert!(
            missing.contains("no version 7 (versions: 1, 2)"),
            "{missing}"
        );
        assert!(
            resolve("hippocampus@staging")
                .unwrap_err()
                .to_string()
                .contains("no alias `staging`")
        );
        assert!(
            resolve("prostate")
                .unwrap_err()
                .to_string()
                .contains("no model named `prostate`")
        );
        for bad in [
            "Hippo",
            "hippocampus:0",
            "hippocampus:x",
            "hippocampus@",
            "",
        ] {
            assert!(bad.parse::<ModelReference>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_alias_moves_only_when_allowed_and_keeps_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        publish(&registry, "a");
        publish(&registry, "b");
        publish(&registry, "c");
        let moved = registry.move_alias("hippocampus", "production", 1, |holder| {
            assert_eq!(holder, None);
            Ok(())
        });
        assert_eq!(moved.unwrap().unwrap().version, 1);
        let refused = registry
            .move_alias("hippocampus", "production", 2, |holder| {
                assert_eq!(holder, Some(1));
                Err("version 2 is worse".into())
            })
            .unwrap();
        assert_eq!(refused, Err("version 2 is worse".to_string()));
        assert_eq!(
            registry
                .alias("hippocampus", "production")
                .unwrap()
                .unwrap()
                .version,
            1
        );
        let record = registry
            .move_alias("hippocampus", "production", 3, |_| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!((record.version, record.history), (3, vec![1]));
        assert_eq!(
            registry.aliases("hippocampus").unwrap(),
            vec![("production".into(), 3)]
        );
    }
}
