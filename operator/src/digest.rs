//! SHA-256 digests in the `sha256:<hex>` form recorded in lineage and artifacts.

use std::{io::Read, path::Path};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a finished hash.
pub fn format_digest(hasher: Sha256) -> String {
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `sha256:<hex>` of bytes.
pub fn digest_bytes(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    format_digest(hasher)
}

/// Feeds a file's bytes into a hash, streaming.
pub fn hash_file(hasher: &mut Sha256, path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
}

/// `sha256:<hex>` and size in bytes of a file.
pub fn digest_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let bytes = hash_file(&mut hasher, path)?;
    Ok((format_digest(hasher), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_bytes_matches_the_sha256_test_vector() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            digest_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
