//! Mirroring the output folder to an object store (`--sync-to s3://bucket/prefix`), for trainer
//! pods whose artifacts live in a bucket: the trainer works in a local folder, pulls what an
//! earlier attempt left before it starts, and pushes after every checkpoint and at the end.
//!
//! A checkpoint folder counts only once its `state.json` exists (see
//! [`crate::train::checkpoint`]), so each push uploads every other file first and the
//! `state.json` files last: a pod killed mid-upload leaves the previous checkpoint usable.
//! Checkpoints pruned locally are deleted remotely too; files being written (`.partial*`) are
//! never uploaded.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Context;
use futures::TryStreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, path::Path as Key,
};
use tracing::{debug, info};

use crate::outputs;

/// The name of a checkpoint's state file, uploaded last.
const STATE_FILE: &str = "state.json";

/// An output folder's mirror in an object store.
pub struct ArtifactSync {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    url: String,
    runtime: tokio::runtime::Runtime,
    /// Size and modification time of each file at its last upload, by relative path.
    uploaded: Mutex<BTreeMap<PathBuf, (u64, SystemTime)>>,
}

impl std::fmt::Debug for ArtifactSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactSync")
            .field("url", &self.url)
            .finish()
    }
}

impl ArtifactSync {
    /// A mirror at `s3://bucket/prefix`, configured from the environment as the AWS tools are:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            crate::error::bad_config(format!("--sync-to {url}: expected s3://BUCKET/PREFIX"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(crate::error::bad_config(format!(
                "--sync-to {url}: no bucket"
            )));
        }
        // TLS through rustls with ring; a second install (in tests) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("--sync-to {url}: cannot configure the S3 client"))?;
        Self::with_store(Arc::new(store), prefix, url)
    }

    /// A mirror under `prefix` of `store` (any object store; tests use an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        url: &str,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime of the artifact upload")?;
        Ok(Self {
            store,
            prefix: Key::from(prefix.trim_matches('/')),
            url: url.to_string(),
            runtime,
            uploaded: Mutex::new(BTreeMap::new()),
        })
    }

    /// Where the mirror is, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Downloads every object under the prefix into `dir` (an earlier attempt's checkpoints and
    /// files); returns how many.
    pub fn pull(&self, dir: &Path) -> anyhow::Result<usize> {
        let objects: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&self.prefix)).try_collect::<Vec<_>>())
            .with_context(|| format!("listing {}", self.url))?;
        let mut count = 0;
        for object in objects {
            let Some(relative) = self.relative(&object.location) else {
                continue;
            };
            let bytes = self
                .runtime
                .block_on(async { self.store.get(&object.location).await?.bytes().await })
                .with_context(|| format!("downloading {} from {}", object.location, self.url))?;
            let path = dir.join(&relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            self.remember(&relative, &path);
            count += 1;
        }
        if count > 0 {
            info!(files = count, from = %self.url, "pulled the previous attempt's artifacts");
        }
        Ok(count)
    }

    /// Uploads the files of `dir` that changed since their last upload (state files last) and
    /// deletes remote checkpoint files that no longer exist locally; returns how many uploads.
    pub fn push(&self, dir: &Path) -> anyhow::Result<usize> {
        let mut files = Vec::new();
        walk(dir, Path::new(""), &mut files)?;
        upload_order(&mut files);
        let mut count = 0;
        for relative in &files {
            let path = dir.join(relative);
            let stamp = stamp(&path)?;
            if self.uploaded.lock().expect("never poisoned").get(relative) == Some(&stamp) {
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let key = self.key(relative);
            self.runtime
                .block_on(self.store.put(&key, PutPayload::from(bytes)))
                .with_context(|| format!("uploading {} to {}", relative.display(), self.url))?;
            self.uploaded
                .lock()
                .expect("never poisoned")
                .insert(relative.clone(), stamp);
            count += 1;
        }
        // Checkpoints the trainer pruned go remotely too, state file first.
        let checkpoints = self.prefix.clone().join(outputs::CHECKPOINTS);
        let remote: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&checkpoints)).try_collect::<Vec<_>>())
            .with_context(|| format!("listing {}", self.url))?;
        let mut stale: Vec<PathBuf> = remote
            .iter()
            .filter_map(|o| self.relative(&o.location))
            .filter(|relative| !files.contains(relative))
            .collect();
        stale.sort_by_key(|r| (r.file_name().is_none_or(|n| n != STATE_FILE), r.clone()));
        for relative in stale {
            self.runtime
                .block_on(self.store.delete(&self.key(&relative)))
                .with_context(|| format!("deleting {} from {}", relative.display(), self.url))?;
            self.uploaded
                .lock()
                .expect("never poisoned")
                .remove(&relative);
        }
        debug!(files = count, to = %self.url, "pushed artifacts");
        Ok(count)
    }

    fn key(&self, relative: &Path) -> Key {
        let mut key = self.prefix.clone();
        for part in relative.iter() {
            key = key.join(part.to_string_lossy().as_ref());
        }
        key
    }

    fn relative(&self, key: &Key) -> Option<PathBuf> {
        let parts = key.prefix_match(&self.prefix)?;
        let relative: PathBuf = parts.map(|p| p.as_ref().to_string()).collect();
        (!relative.as_os_str().is_empty()).then_some(relative)
    }

    fn remember(&self, relative: &Path, path: &Path) {
        if let Ok(stamp) = stamp(path) {
            self.uploaded
                .lock()
                .expect("never poisoned")
                .insert(relative.to_path_buf(), stamp);
        }
    }
}

/// Sorts files for upload: checkpoint states last, so that a remote checkpoint is complete once
/// it counts.
fn upload_order(files: &mut [PathBuf]) {
    files.sort_by_key(|relative| {
        (
            relative.file_name().is_some_and(|n| n == STATE_FILE),
            relative.clone(),
        )
    });
}

fn stamp(path: &Path) -> anyhow::Result<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.len(), meta.modified()?))
}

/// Every file below `dir` (relative to the walk's root), leaving out `.partial*` entries.
fn walk(root: &Path, relative: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(relative);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".partial") {
            continue;
        }
        let path = relative.join(&name);
        if entry.file_type()?.is_dir() {
            walk(root, &path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn write(dir: &Path, relative: &str, text: &str) {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn keys(store: &InMemory) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut keys: Vec<String> = rt
            .block_on(store.list(None).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn a_push_uploads_what_changed_and_a_pull_restores_it_elsewhere() {
        let store = Arc::new(InMemory::new());
        let local = tempfile::tempdir().unwrap();
        write(local.path(), "epochs.csv", "epoch\n1\n");
        write(
            local.path(),
            "checkpoints/epoch-0001/model.safetensors",
            "w1",
        );
        write(local.path(), "checkpoints/epoch-0001/state.json", "{}");
        write(
            local.path(),
            "checkpoints/.partial-epoch-0002/model.safetensors",
            "half",
        );
        let sync = ArtifactSync::with_store(store.clone(), "runs/lab/hippo", "mem://").unwrap();
        assert_eq!(sync.push(local.path()).unwrap(), 3);
        assert_eq!(
            keys(&store),
            [
                "runs/lab/hippo/checkpoints/epoch-0001/model.safetensors",
                "runs/lab/hippo/checkpoints/epoch-0001/state.json",
                "runs/lab/hippo/epochs.csv",
            ]
        );
        // Nothing changed: nothing uploaded.
        assert_eq!(sync.push(local.path()).unwrap(), 0);

        // The trainer moves on and prunes the first checkpoint.
        write(
            local.path(),
            "checkpoints/epoch-0002/model.safetensors",
            "w2",
        );
        write(local.path(), "checkpoints/epoch-0002/state.json", "{}");
        std::fs::remove_dir_all(local.path().join("checkpoints/epoch-0001")).unwrap();
        assert_eq!(sync.push(local.path()).unwrap(), 2);
        let remote = keys(&store);
        assert!(
            remote.iter().all(|k| !k.contains("epoch-0001")),
            "{remote:?}"
        );

        // A new attempt on another machine gets the same files.
        let elsewhere = tempfile::tempdir().unwrap();
        let next = ArtifactSync::with_store(store, "runs/lab/hippo/", "mem://").unwrap();
        assert_eq!(next.pull(elsewhere.path()).unwrap(), 3);
        let state = elsewhere.path().join("checkpoints/epoch-0002/state.json");
        assert_eq!(std::fs::read_to_string(state).unwrap(), "{}");
        assert_eq!(
            next.push(elsewhere.path()).unwrap(),
            0,
            "pulled files are not uploaded again"
        );
    }

    #[test]
    fn state_files_are_uploaded_after_the_rest_of_their_checkpoint() {
        let mut files = [
            PathBuf::from("checkpoints/epoch-0003/state.json"),
            PathBuf::from("checkpoints/epoch-0003/optimizer.safetensors"),
            PathBuf::from("summary.json"),
            PathBuf::from("checkpoints/epoch-0003/model.safetensors"),
        ];
        upload_order(&mut files);
        assert_eq!(
            files.last().unwrap(),
            Path::new("checkpoints/epoch-0003/state.json")
        );
    }

    #[test]
    fn a_url_that_is_not_s3_is_a_configuration_error() {
        let error = ArtifactSync::from_url("gs://bucket/x").unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&error),
            crate::error::EXIT_BAD_CONFIG
        );
        assert!(error.to_string().contains("s3://BUCKET/PREFIX"), "{error}");
    }
}
