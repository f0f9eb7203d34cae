//! OpenPGP verification of a clearsigned `InRelease` against a binary keyring (such as
//! the host's Debian archive keyring), with rpgp, the maintained pure-Rust OpenPGP
//! implementation (lighter than Sequoia). Key expiry and revocation are not checked.

use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read keyring {path}: {source}")]
    Keyring {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {path} holds no usable OpenPGP public keys")]
    NoKeys { path: PathBuf },
    #[error("{what} is not a clearsigned OpenPGP message: {message}")]
    NotSigned { what: String, message: String },
    #[error("{what}: no valid signature by a key in {keyring}; refusing it")]
    BadSignature { what: String, keyring: PathBuf },
}

/// Verifies `text` (named `what` in errors) and returns the signed content with `\n`
/// line endings. Only this returned text may be trusted, not `text` itself.
pub fn verify_clearsigned(
    what: &str,
    text: &str,
    keyring: &Path,
) -> Result<String, SignatureError> {
    let data = std::fs::read(keyring).map_err(|source| SignatureError::Keyring {
        path: keyring.to_path_buf(),
        source,
    })?;
    let keys: Vec<SignedPublicKey> = SignedPublicKey::from_bytes_many(&data[..])
        .map_err(|_| SignatureError::NoKeys {
            path: keyring.to_path_buf(),
        })?
        .filter_map(|k| k.ok())
        .collect();
    if keys.is_empty() {
        return Err(SignatureError::NoKeys {
            path: keyring.to_path_buf(),
        });
    }
    let (msg, _headers) =
        CleartextSignedMessage::from_string(text).map_err(|e| SignatureError::NotSigned {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    let valid = keys
        .iter()
        .any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|sk| msg.verify(sk).is_ok()));
    if !valid {
        return Err(SignatureError::BadSignature {
            what: what.to_string(),
            keyring: keyring.to_path_buf(),
        });
    }
    Ok(msg.signed_text().replace("\r\n", "\n"))
}
