//! Model versions in the cluster: one immutable Model resource per version, named
//! `<model>-v<version>`.
//!
//! Version numbers are allocated by the API server's own guarantee that a name exists once: a
//! publisher takes the number after the highest it sees and creates that object; when another
//! publisher took the number first, the create fails with a conflict and it tries the next.
//! Each version records the key of what was published (the source's UID and the artifact
//! digest) in an annotation, and a publisher first looks for its key, so that a publish retried
//! after a timeout, or after the operator restarted, finds its version instead of making a
//! second one.
//!
//! Aliases of a model live in one ConfigMap, `voxel-model-<model>-aliases` (alias → version),
//! so that moving one is a single write the API server checks against the version read
//! (`resourceVersion`): two promotions at once cannot both move from the same holder. Each
//! Model's `status.aliases` mirrors the map. The ConfigMap also records the highest number
//! ever allocated (`voxel.dev/last-version`): numbers are not reused when the latest version
//! is deleted, and a new version never inherits the aliases of a deleted one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use thiserror::Error;
use voxel_crds::{
    Model,
    common::{CompareToSpec, VersionRef},
};

/// Label with the model name of a Model resource.
pub const LABEL_MODEL: &str = "voxel.dev/model";
/// Label with the version number of a Model resource.
pub const LABEL_VERSION: &str = "voxel.dev/version";
/// Annotation with the key of what a version published.
pub const ANNOTATION_PUBLISH_KEY: &str = "voxel.dev/publish-key";
/// Annotation with the path of the per-subject test metrics, relative to the artifact location.
pub const ANNOTATION_METRICS: &str = "voxel.dev/metrics";
/// Annotation a user (or a CD pipeline) sets on a CrossValidation or Ensemble with the Git
/// commit of its manifest; published versions record it in their lineage.
pub const ANNOTATION_GIT_COMMIT: &str = "voxel.dev/git-commit";

/// Annotation of a model's aliases ConfigMap with the highest version number ever allocated,
/// so that a deleted latest version gives neither its number nor its aliases to the next one.
pub const ANNOTATION_LAST_VERSION: &str = "voxel.dev/last-version";

/// How many versions another publisher may take between two tries before giving up.
const MAX_TRIES: usize = 20;

/// Why a version cannot be published or found.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Other publishers kept taking the next number.
    #[error("model {model}: no free version number after {MAX_TRIES} tries")]
    Contended {
        /// The model.
        model: String,
    },
    /// The baseline a spec names does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// The outcome of a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The version.
    pub version: u32,
    /// False when the same key had been published before.
    pub new: bool,
}

/// The versions of `model` in `namespace`, by number.
pub async fn versions(
    client: &Client,
    namespace: &str,
    model: &str,
) -> Result<BTreeMap<u32, Model>, ModelError> {
    let api: Api<Model> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{LABEL_MODEL}={model}")))
        .await
        .map_err(|source| ModelError::Api {
            action: format!("listing the versions of model {namespace}/{model}"),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|m| m.spec.model_name == model)
        .map(|m| (m.spec.version, m))
        .collect())
}

/// Publishes `resource` (built for any version; its name, number and labels are set here) as
/// the next version of its model, unless a version with the same `key` exists.
pub async fn publish(
    client: &Client,
    namespace: &str,
    mut resource: Model,
    key: &str,
) -> Result<Published, ModelError> {
    let model = resource.spec.model_name.clone();
    let api: Api<Model> = Api::namespaced(client.clone(), namespace);
    for _ in 0..MAX_TRIES {
        let existing = versions(client, namespace, &model).await?;
        if let Some(version) = existing.values().find(|m| {
            m.annotations()
                .get(ANNOTATION_PUBLISH_KEY)
                .map(String::as_str)
                == Some(key)
        }) {
            let version = version.spec.version;
            // A publisher stopped after its create may not have recorded the number.
            record_allocation(client, namespace, &model, version, false).await?;
            return Ok(Published {
                version,
                new: false,
            });
        }
        let (_, map) = aliases(client, namespace, &model).await?;
        let highest = existing.keys().next_back().copied().unwrap_or(0);
        let version = highest.max(last_version(map.as_ref())) + 1;
        resource.metadata.name = Some(voxel_crds::model::model_object_name(&model, version));
        resource.metadata.namespace = Some(namespace.to_string());
        resource.spec.version = version;
        resource
            .labels_mut()
            .insert(LABEL_MODEL.into(), model.clone());
        resource
            .labels_mut()
            .insert(LABEL_VERSION.into(), version.to_string());
        resource
            .annotations_mut()
            .insert(ANNOTATION_PUBLISH_KEY.into(), key.to_string());
        match api.create(&PostParams::default(), &resource).await {
            Ok(_) => {
                record_allocation(client, namespace, &model, version, true).await?;
                return Ok(Published { version, new: true });
            }
            // Another publisher took this number (or ours landed and the reply was lost): look
            // again.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => {
                return Err(ModelError::Api {
                    action: format!("creating Model {namespace}/{}", resource.name_any()),
                    source,
                });
            }
        }
    }
    Err(ModelError::Contended { model })
}

/// The version a `compareTo` names: its `version`, the holder of its `alias`, or else the
/// latest.
pub async fn resolve_baseline(
    client: &Client,
    namespace: &str,
    spec: &CompareToSpec,
) -> Result<Model, ModelError> {
    resolve(
        client,
        namespace,
        &spec.model,
        spec.version,
        spec.alias.as_deref(),
        "spec.compareTo",
    )
    .await
}

/// Version `version` of `model`, or the holder of `alias`, or else the latest; `field` names
/// the reference in the error.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    model: &str,
    version: Option<u32>,
    alias: Option<&str>,
    field: &str,
) -> Result<Model, ModelError> {
    let mut versions = versions(client, namespace, model).await?;
    let (wanted, what) = match (version, alias) {
        (Some(version), _) => (Some(version), format!("version {version} of model {model}")),
        (None, Some(alias)) => {
            let Some(version) = aliases(client, namespace, model).await?.0.remove(alias) else {
                return Err(ModelError::NotFound(format!(
                    "{field}.alias: model {model} has no alias {alias} in namespace \
                     {namespace} (publish with promote first)"
                )));
            };
            (
                Some(version),
                format!("version {version} of model {model} (alias {alias})"),
            )
        }
        (None, None) => (None, format!("a version of model {model}")),
    };
    let found = match wanted {
        Some(version) => versions.remove(&version),
        None => versions.pop_last().map(|(_, m)| m),
    };
    found.ok_or_else(|| {
        ModelError::NotFound(format!(
            "{field}: {what} is not published in namespace {namespace}"
        ))
    })
}

/// Name of the ConfigMap with a model's aliases.
pub fn aliases_name(model: &str) -> String {
    format!("voxel-model-{model}-aliases")
}

/// A model's aliases (alias → version) and the ConfigMap they were read from, if it exists.
pub async fn aliases(
    client: &Client,
    namespace: &str,
    model: &str,
) -> Result<(BTreeMap<String, u32>, Option<ConfigMap>), ModelError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = aliases_name(model);
    let map = maps
        .get_opt(&name)
        .await
        .map_err(|source| ModelError::Api {
            action: format!("reading ConfigMap {namespace}/{name}"),
            source,
        })?;
    let aliases = map
        .iter()
        .flat_map(|m| m.data.iter().flatten())
        .filter_map(|(alias, version)| Some((alias.clone(), version.parse().ok()?)))
        .collect();
    Ok((aliases, map))
}

/// The highest version number the aliases ConfigMap records as allocated (0 without one).
fn last_version(map: Option<&ConfigMap>) -> u32 {
    map.and_then(|m| m.annotations().get(ANNOTATION_LAST_VERSION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A new aliases ConfigMap of `model`.
fn aliases_map(model: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(aliases_name(model)),
            labels: Some(BTreeMap::from([
                (LABEL_MODEL.to_string(), model.to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "voxel-operator".to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// Records `version` of `model` as allocated in its aliases ConfigMap. For a number just
/// created (`new`), an alias that still names it was left by a deleted version of that number
/// and is dropped: a new version holds no alias until it is promoted.
async fn record_allocation(
    client: &Client,
    namespace: &str,
    model: &str,
    version: u32,
    new: bool,
) -> Result<(), ModelError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = aliases_name(model);
    for _ in 0..MAX_TRIES {
        let (mut current, map) = aliases(client, namespace, model).await?;
        let before = current.len();
        if new {
            current.retain(|_, held| *held != version);
        }
        let dropped = current.len() != before;
        if last_version(map.as_ref()) >= version && !dropped {
            return Ok(());
        }
        let data = current
            .iter()
            .map(|(a, v)| (a.clone(), v.to_string()))
            .collect();
        let mut map = map.unwrap_or_else(|| aliases_map(model, BTreeMap::new()));
        map.data = Some(data);
        let last = last_version(Some(&map)).max(version);
        map.annotations_mut()
            .insert(ANNOTATION_LAST_VERSION.into(), last.to_string());
        // The resourceVersion read makes the write fail if the map changed meanwhile.
        let written = if map.metadata.resource_version.is_some() {
            maps.replace(&name, &PostParams::default(), &map).await
        } else {
            maps.create(&PostParams::default(), &map).await
        };
        match written {
            Ok(_) => {
                if dropped {
                    mirror_aliases(client, namespace, model, &current).await?;
                }
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => {
                return Err(ModelError::Api {
                    action: format!("writing ConfigMap {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Err(ModelError::Contended {
        model: model.to_string(),
    })
}

/// Moves `alias` of `model` to `version` if `allow` (given the current holder) agrees; the
/// inner `Err` says why it did not move.
pub async fn move_alias(
    client: &Client,
    namespace: &str,
    model: &str,
    alias: &str,
    version: u32,
    allow: impl Fn(Option<u32>) -> Result<(), String>,
) -> Result<Result<(), String>, ModelError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = aliases_name(model);
    for _ in 0..MAX_TRIES {
        let (mut current, map) = aliases(client, namespace, model).await?;
        let holder = current.get(alias).copied();
        if holder == Some(version) {
            return Ok(Ok(()));
        }
        if let Err(reason) = allow(holder) {
            return Ok(Err(reason));
        }
        current.insert(alias.to_string(), version);
        let data = current
            .iter()
            .map(|(a, v)| (a.clone(), v.to_string()))
            .collect();
        let written = match map {
            // The resourceVersion read makes the write fail if the aliases moved meanwhile.
            Some(mut map) => {
                map.data = Some(data);
                maps.replace(&name, &PostParams::default(), &map).await
            }
            None => {
                maps.create(&PostParams::default(), &aliases_map(model, data))
                    .await
            }
        };
        match written {
            Ok(_) => {
                mirror_aliases(client, namespace, model, &current).await?;
                return Ok(Ok(()));
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => {
                return Err(ModelError::Api {
                    action: format!("writing ConfigMap {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Err(ModelError::Contended {
        model: model.to_string(),
    })
}

/// Writes each version's `status.aliases` from the alias map.
async fn mirror_aliases(
    client: &Client,
    namespace: &str,
    model: &str,
    aliases: &BTreeMap<String, u32>,
) -> Result<(), ModelError> {
    let api: Api<Model> = Api::namespaced(client.clone(), namespace);
    for (version, resource) in versions(client, namespace, model).await? {
        let held: Vec<String> = aliases
            .iter()
            .filter(|(_, v)| **v == version)
            .map(|(a, _)| a.clone())
            .collect();
        let recorded = resource
            .status
            .as_ref()
            .map(|s| s.aliases.clone())
            .unwrap_or_default();
        if recorded == held {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "voxel.dev/v1alpha1",
            "kind": "Model",
            "status": {"aliases": held},
        });
        api.patch_status(
            &resource.name_any(),
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ModelError::Api {
            action: format!(
                "writing the status of Model {namespace}/{}",
                resource.name_any()
            ),
            source,
        })?;
    }
    Ok(())
}

/// The reference to a published version.
pub fn version_ref(model: &str, version: u32) -> VersionRef {
    VersionRef {
        model: model.to_string(),
        version,
    }
}
