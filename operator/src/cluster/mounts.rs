//! The claims mounted into the operator's own pod, through which it reads what trainer pods
//! wrote: split files, per-subject metrics, weights to digest, and the dataset to digest.
//!
//! Per-subject results stay in the artifact store; the operator reads them from there when a
//! comparison or a publication needs them and keeps only summaries in status. `voxel operator
//! --claim-mount CLAIM=DIR` says that the claim `CLAIM` of the watched namespace is mounted at
//! `DIR` (the Helm chart mounts the claims it is given).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Why a file of a claim cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountError {
    /// The operator has no mount of the claim.
    #[error(
        "claim {claim} is not mounted into the operator (start it with --claim-mount \
         {claim}=DIR, or set the chart's claimMounts) so it cannot read {path}"
    )]
    NotMounted {
        /// The claim.
        claim: String,
        /// The path inside it.
        path: String,
    },
    /// The location is not on a claim.
    #[error("{0}: the operator reads results from a persistentVolumeClaim only (pvc://CLAIM/PATH)")]
    NotAClaim(String),
    /// A path tries to leave its claim.
    #[error("{0}: a path inside a claim has no '..'")]
    Escapes(String),
}

/// Claim name → folder where the operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimMounts(BTreeMap<String, PathBuf>);

impl ClaimMounts {
    /// Mounts from `CLAIM=DIR` arguments.
    pub fn parse(arguments: &[String]) -> Result<Self, String> {
        let mut mounts = BTreeMap::new();
        for argument in arguments {
            let (claim, dir) = argument
                .split_once('=')
                .filter(|(c, d)| !c.is_empty() && !d.is_empty())
                .ok_or_else(|| format!("--claim-mount {argument}: expected CLAIM=DIR"))?;
            if mounts
                .insert(claim.to_string(), PathBuf::from(dir))
                .is_some()
            {
                return Err(format!("--claim-mount: claim {claim} is given twice"));
            }
        }
        Ok(Self(mounts))
    }

    /// Where the operator sees `path` of `claim`.
    pub fn resolve(&self, claim: &str, path: &str) -> Result<PathBuf, MountError> {
        if Path::new(path)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(MountError::Escapes(path.into()));
        }
        let root = self.0.get(claim).ok_or_else(|| MountError::NotMounted {
            claim: claim.into(),
            path: path.into(),
        })?;
        Ok(root.join(path.trim_start_matches('/')))
    }

    /// Where the operator sees a `pvc://CLAIM/PATH` location.
    pub fn resolve_uri(&self, uri: &str) -> Result<PathBuf, MountError> {
        let (claim, path) = parse_claim_uri(uri)?;
        self.resolve(claim, path)
    }
}

/// `(claim, path)` of a `pvc://CLAIM/PATH` location.
pub fn parse_claim_uri(uri: &str) -> Result<(&str, &str), MountError> {
    uri.strip_prefix("pvc://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(claim, _)| !claim.is_empty())
        .ok_or_else(|| MountError::NotAClaim(uri.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_resolve_to_their_mounts_and_nothing_escapes_them() {
        let mounts = ClaimMounts::parse(&["artifacts=/mnt/a".into()]).unwrap();
        assert_eq!(
            mounts.resolve_uri("pvc://artifacts/ns/cv-fold-0").unwrap(),
            PathBuf::from("/mnt/a/ns/cv-fold-0")
        );
        assert_eq!(
            mounts.resolve("other", "x"),
            Err(MountError::NotMounted {
                claim: "other".into(),
                path: "x".into()
            })
        );
        assert_eq!(
            mounts.resolve("artifacts", "ns/../../etc"),
            Err(MountError::Escapes("ns/../../etc".into()))
        );
        assert_eq!(
            mounts.resolve_uri("s3://bucket/key"),
            Err(MountError::NotAClaim("s3://bucket/key".into()))
        );
    }

    #[test]
    fn mount_arguments_need_a_claim_and_a_folder_once_each() {
        assert!(ClaimMounts::parse(&["a".into()]).is_err());
        assert!(ClaimMounts::parse(&["=b".into()]).is_err());
        let twice = ClaimMounts::parse(&["a=/x".into(), "a=/y".into()]).unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
    }
}
