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

use std::collections::BTreeMap;

use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
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
            return Ok(Published {
                version: version.spec.version,
                new: false,
            });
        }
        let version = existing.keys().next_back().map_or(1, |v| v + 1);
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
            Ok(_) => return Ok(Published { version, new: true }),
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

/// The version a `compareTo` names: its `version`, or else the latest. (Aliases are kept by
/// the local registry only; see the README's Limitations.)
pub async fn resolve_baseline(
    client: &Client,
    namespace: &str,
    spec: &CompareToSpec,
) -> Result<Model, ModelError> {
    let mut versions = versions(client, namespace, &spec.model).await?;
    if let Some(alias) = &spec.alias {
        return Err(ModelError::NotFound(format!(
            "spec.compareTo.alias: {alias}: aliases are not kept in the cluster yet; name a \
             version of model {} instead",
            spec.model
        )));
    }
    let found = match spec.version {
        Some(version) => versions.remove(&version),
        None => versions.pop_last().map(|(_, m)| m),
    };
    found.ok_or_else(|| {
        ModelError::NotFound(format!(
            "spec.compareTo: model {}{} has no published version in namespace {namespace}",
            spec.model,
            spec.version
                .map(|v| format!(" version {v}"))
                .unwrap_or_default()
        ))
    })
}

/// The reference to a published version.
pub fn version_ref(model: &str, version: u32) -> VersionRef {
    VersionRef {
        model: model.to_string(),
        version,
    }
}
