//! SHA-512 crypt (`$6$`) password hashes, the format `/etc/shadow`, preseed's
//! `passwd/*-password-crypted` and kickstart's `rootpw --iscrypted` take. Uses RustCrypto's
//! `sha-crypt`, a well-kept implementation of the Drepper specification.

use std::io::Read;

use sha_crypt::{sha512_crypt_b64, Sha512Params, ROUNDS_DEFAULT};

/// Characters crypt(3) allows in a salt.
const SALT_CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SALT_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid salt {salt:?}: use 1-16 characters from [./0-9A-Za-z]")]
    BadSalt { salt: String },
    #[error("cannot read random bytes for a salt: {0}")]
    Random(std::io::Error),
    #[error("SHA-512 crypt failed: {0:?}")]
    Crypt(sha_crypt::CryptError),
}

/// Hashes `password` with `salt` at the default 5000 rounds; the same result as
/// `openssl passwd -6 -salt SALT PASSWORD`.
pub fn sha512_crypt_with_salt(password: &str, salt: &str) -> Result<String, PasswordError> {
    if salt.is_empty() || salt.len() > SALT_LEN || !salt.bytes().all(|b| SALT_CHARS.contains(&b)) {
        return Err(PasswordError::BadSalt {
            salt: salt.to_string(),
        });
    }
    let params = Sha512Params::new(ROUNDS_DEFAULT).map_err(PasswordError::Crypt)?;
    let hash = sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params)
        .map_err(PasswordError::Crypt)?;
    Ok(format!("$6${salt}${hash}"))
}

/// Hashes `password` with a fresh random 16-character salt.
pub fn sha512_crypt(password: &str) -> Result<String, PasswordError> {
    let mut bytes = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(PasswordError::Random)?;
    let salt: String = bytes
        .iter()
        .map(|b| SALT_CHARS[usize::from(*b) % SALT_CHARS.len()] as char)
        .collect();
    sha512_crypt_with_salt(password, &salt)
}

/// Whether `s` looks like a crypt(3) SHA-512 hash (`$6$[rounds=N$]salt$86 chars`).
pub fn is_sha512_crypt(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("$6$") else {
        return false;
    };
    let hash = rest.rsplit('$').next().unwrap_or("");
    hash.len() == 86 && hash.bytes().all(|b| SALT_CHARS.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_salts_differ_and_look_right() {
        let a = sha512_crypt("pw").unwrap();
        let b = sha512_crypt("pw").unwrap();
        assert_ne!(a, b);
        assert!(is_sha512_crypt(&a), "{a}");
    }

    #[test]
    fn bad_salt_is_refused() {
        assert!(sha512_crypt_with_salt("pw", "a$b").is_err());
        assert!(sha512_crypt_with_salt("pw", "").is_err());
    }
}
