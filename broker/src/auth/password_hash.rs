//! The password hashes a password file may hold, read as Mosquitto's
//! `mosquitto_passwd` writes them (so a Mosquitto user's file works
//! unchanged) plus bcrypt, which htpasswd and EMQX exports use:
//!
//! | prefix | what | from |
//! |---|---|---|
//! | `$6$<salt>$<hash>` | one SHA-512 over the password, then the salt | `mosquitto_passwd -H sha512` |
//! | `$7$<iterations>$<salt>$<hash>` | PBKDF2-HMAC-SHA512, 64-byte key | `mosquitto_passwd` (the default) |
//! | `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` | Argon2id | Mosquitto 2.1 built with argon2 |
//! | `$2a$`, `$2b$`, `$2y$` | bcrypt | htpasswd, EMQX |
//!
//! Salts and hashes of `$6$`/`$7$` are standard base64 with padding, of
//! argon2id without; the salt is used as the decoded bytes. Mosquitto 2.0
//! writes 12-byte salts, 2.1 64-byte ones; both are read. Comparisons take
//! the same time whatever the bytes.
//!
//! What a file can make verification cost is bounded, so that one bad line
//! cannot stall the broker: PBKDF2 at most [`MAX_PBKDF2_ITERATIONS`]
//! iterations, Argon2 at most [`MAX_ARGON2_MEMORY_KIB`] of memory and
//! [`MAX_ARGON2_PASSES`] passes, bcrypt at most cost [`MAX_BCRYPT_COST`].

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_ARGON2_PASSES: u32 = 64;
pub const MAX_BCRYPT_COST: u32 = 16;

/// Iterations `starling passwd` writes. Each check costs about 4 ms of
/// one core at 10,000 (40 ms at 100,000): a storm of first connects of
/// distinct users is bounded by it (`bench/auth-connect.sh`; a reconnect
/// storm is served from the verification cache). Ten times Mosquitto
/// 2.1's default; device secrets should be random, which matters more
/// than the count.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 10_000;

/// Salt bytes `starling passwd` writes: 12, the length Mosquitto 2.0
/// requires, so that the file stays usable by Mosquitto too.
const WRITTEN_SALT_BYTES: usize = 12;

/// One user's stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: one pass of SHA-512 over the password and then the salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512 with a 64-byte derived key.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$argon2id$`: Argon2id, version 0x13.
    Argon2id {
        memory_kib: u32,
        passes: u32,
        lanes: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$2a$`, `$2b$`, `$2y$`: bcrypt, kept as written.
    Bcrypt(String),
}

impl std::fmt::Debug for PasswordHash {
    // Never print salts or hashes (logs, test failures).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordHash::Sha512 { .. } => "PasswordHash::Sha512",
            PasswordHash::Pbkdf2Sha512 { .. } => "PasswordHash::Pbkdf2Sha512",
            PasswordHash::Argon2id { .. } => "PasswordHash::Argon2id",
            PasswordHash::Bcrypt(_) => "PasswordHash::Bcrypt",
        })
    }
}

/// Why a stored hash cannot be used; names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error(
        "not a known password hash (expected $6$, $7$, $argon2id$ or bcrypt $2b$; \
         plaintext passwords are not accepted: use `starling passwd`)"
    )]
    UnknownKind,
    #[error("{kind}: {problem}")]
    Malformed { kind: &'static str, problem: String },
}

fn malformed(kind: &'static str, problem: impl Into<String>) -> HashError {
    HashError::Malformed {
        kind,
        problem: problem.into(),
    }
}

impl PasswordHash {
    /// Reads a stored hash (the part of a line after `user:`).
    pub fn parse(text: &str) -> Result<PasswordHash, HashError> {
        if let Some(rest) = text.strip_prefix("$6$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or_else(|| malformed("$6$", "expected $6$<salt>$<hash>"))?;
            let salt = decode_padded("$6$", "salt", salt)?;
            let hash = decode_padded("$6$", "hash", hash)?;
            check_len("$6$", "hash", &hash, 64)?;
            return Ok(PasswordHash::Sha512 { salt, hash });
        }
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.splitn(3, '$');
            let (Some(iterations), Some(salt), Some(hash)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(malformed("$7$", "expected $7$<iterations>$<salt>$<hash>"));
            };
            let iterations: u32 = iterations.parse().map_err(|_| {
                malformed("$7$", format!("iterations {iterations:?} is not a number"))
            })?;
            if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
                return Err(malformed(
                    "$7$",
                    format!("iterations must be between 1 and {MAX_PBKDF2_ITERATIONS}"),
                ));
            }
            let salt = decode_padded("$7$", "salt", salt)?;
            let hash = decode_padded("$7$", "hash", hash)?;
            check_len("$7$", "hash", &hash, 64)?;
            return Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = text.strip_prefix("$argon2id$") {
            return parse_argon2id(rest);
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            let cost: u32 = text
                .get(4..6)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| malformed("bcrypt", "expected $2b$<cost>$<salt and hash>"))?;
            if !(4..=MAX_BCRYPT_COST).contains(&cost) {
                return Err(malformed(
                    "bcrypt",
                    format!("cost must be between 4 and {MAX_BCRYPT_COST}"),
                ));
            }
            if text.len() != 60 {
                return Err(malformed("bcrypt", "a bcrypt hash is 60 characters long"));
            }
            return Ok(PasswordHash::Bcrypt(text.to_string()));
        }
        Err(HashError::UnknownKind)
    }

    /// Whether `password` is the one this hash was made from.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                bool::from(derived.as_slice().ct_eq(hash))
            }
            PasswordHash::Argon2id {
                memory_kib,
                passes,
                lanes,
                salt,
                hash,
            } => {
                let Ok(params) =
                    argon2::Params::new(*memory_kib, *passes, *lanes, Some(hash.len()))
                else {
                    return false;
                };
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut derived = vec![0u8; hash.len()];
                argon
                    .hash_password_into(password, salt, &mut derived)
                    .is_ok()
                    && bool::from(derived.as_slice().ct_eq(hash))
            }
            PasswordHash::Bcrypt(stored) => bcrypt::verify(password, stored).unwrap_or(false),
        }
    }

    /// A new `$7$` hash of `password` with a fresh random salt.
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> std::io::Result<PasswordHash> {
        let mut salt = vec![0u8; WRITTEN_SALT_BYTES];
        fill_random(&mut salt)?;
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Ok(PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// The stored form, as `mosquitto_passwd` writes it.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Argon2id {
                memory_kib,
                passes,
                lanes,
                salt,
                hash,
            } => format!(
                "$argon2id$v=19$m={memory_kib},t={passes},p={lanes}${}${}",
                STANDARD_NO_PAD.encode(salt),
                STANDARD_NO_PAD.encode(hash)
            ),
            PasswordHash::Bcrypt(stored) => stored.clone(),
        }
    }
}

fn parse_argon2id(rest: &str) -> Result<PasswordHash, HashError> {
    const KIND: &str = "$argon2id$";
    let mut parts = rest.split('$');
    let (Some(version), Some(params), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(malformed(
            KIND,
            "expected $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>",
        ));
    };
    if version != "v=19" {
        return Err(malformed(KIND, "only version 19 (v=19) is known"));
    }
    let (mut memory_kib, mut passes, mut lanes) = (None, None, None);
    for param in params.split(',') {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| malformed(KIND, format!("parameter {param:?} is not name=value")))?;
        let value: u32 = value
            .parse()
            .map_err(|_| malformed(KIND, format!("parameter {name} is not a number")))?;
        match name {
            "m" => memory_kib = Some(value),
            "t" => passes = Some(value),
            "p" => lanes = Some(value),
            other => return Err(malformed(KIND, format!("unknown parameter {other:?}"))),
        }
    }
    let (Some(memory_kib), Some(passes), Some(lanes)) = (memory_kib, passes, lanes) else {
        return Err(malformed(KIND, "m, t and p are all needed"));
    };
    if memory_kib > MAX_ARGON2_MEMORY_KIB || passes > MAX_ARGON2_PASSES || lanes > 255 {
        return Err(malformed(
            KIND,
            format!(
                "parameters above what this broker verifies (m ≤ {MAX_ARGON2_MEMORY_KIB}, \
                 t ≤ {MAX_ARGON2_PASSES}, p ≤ 255)"
            ),
        ));
    }
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|e| malformed(KIND, format!("salt is not base64: {e}")))?;
    let hash = STANDARD_NO_PAD
        .decode(hash)
        .map_err(|e| malformed(KIND, format!("hash is not base64: {e}")))?;
    if argon2::Params::new(memory_kib, passes, lanes, Some(hash.len())).is_err() || salt.len() < 8 {
        return Err(malformed(
            KIND,
            "parameters, salt or hash length out of Argon2's range",
        ));
    }
    Ok(PasswordHash::Argon2id {
        memory_kib,
        passes,
        lanes,
        salt,
        hash,
    })
}

fn decode_padded(kind: &'static str, part: &str, text: &str) -> Result<Vec<u8>, HashError> {
    STANDARD
        .decode(text)
        .map_err(|e| malformed(kind, format!("{part} is not base64: {e}")))
}

fn check_len(
    kind: &'static str,
    part: &str,
    bytes: &[u8],
    expected: usize,
) -> Result<(), HashError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(malformed(
            kind,
            format!("{part} is {} bytes, not {expected}", bytes.len()),
        ))
    }
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from)?;
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mosquitto's own test vector for `$6$` (password `password`).
    const SHA512_VECTOR: &str = "$6$vZY4TS+/HBxHw38S$vvjVFECzb8dyuu/mruD2QKTfdFn0WmKxbc+1TsdB0L8EdHk3v9JRmfjHd56+VaTnUcSZOZ/hzkdvWCtxlX7AUQ==";
    /// Written by Debian's mosquitto_passwd 2.0.11 (password `secret`).
    const PBKDF2_2_0: &str = "$7$101$2eecUjc7a/YSgLSG$Y+fuXd8Ec/JxuKG11pM2WrE3IQcZIR+khTMmIkwC/EKaGf9TMWapLDDY4KLxDrnYmNLTJoPE0E/kYbZRXCMJ6Q==";
    /// Mosquitto 2.1's test file: a 64-byte salt (password `password`).
    const PBKDF2_2_1: &str = "$7$1000$h0tqVxBwkB9rKAXukTtffzdbBQtNy1q5FBTDwSW4hucfjpqunBbxW10NVnRk7Cfh0lQndnOv2+k4wJavgz1JNw==$02ujkUXlKkJGFzlQHNjUgXwG3XRB1mr3vs8NX5teGCJGbN4hdgSpHNHuj47j8r5SHXsO7GeHpmkpPNhLraVVcQ==";

    #[test]
    fn mosquitto_hashes_verify_their_passwords_and_only_those() {
        for (stored, password) in [
            (SHA512_VECTOR, "password"),
            (PBKDF2_2_0, "secret"),
            (PBKDF2_2_1, "password"),
        ] {
            let hash = PasswordHash::parse(stored).unwrap();
            assert!(hash.verify(password.as_bytes()), "{stored}");
            assert!(!hash.verify(b"Password"), "{stored}");
            assert!(!hash.verify(b""), "{stored}");
            assert_eq!(hash.encode(), stored, "round trip");
        }
    }

    #[test]
    fn a_new_hash_verifies_and_reads_back() {
        let hash = PasswordHash::new_pbkdf2(b"s3cret", 1000).unwrap();
        let stored = hash.encode();
        assert!(stored.starts_with("$7$1000$"), "{stored}");
        let read = PasswordHash::parse(&stored).unwrap();
        assert!(read.verify(b"s3cret"));
        assert!(!read.verify(b"s3cret "));
        let again = PasswordHash::new_pbkdf2(b"s3cret", 1000).unwrap();
        assert_ne!(again.encode(), stored, "a fresh salt each time");
    }

    #[test]
    fn argon2id_and_bcrypt_verify() {
        let salt = b"0123456789abcdef".to_vec();
        let mut hash = vec![0u8; 32];
        let params = argon2::Params::new(64, 1, 1, Some(32)).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(b"pw", &salt, &mut hash)
            .unwrap();
        let stored = PasswordHash::Argon2id {
            memory_kib: 64,
            passes: 1,
            lanes: 1,
            salt,
            hash,
        }
        .encode();
        let read = PasswordHash::parse(&stored).unwrap();
        assert!(read.verify(b"pw") && !read.verify(b"pW"));

        let stored = bcrypt::hash("pw", 4).unwrap();
        let read = PasswordHash::parse(&stored).unwrap();
        assert!(read.verify(b"pw") && !read.verify(b"px"));
    }

    #[test]
    fn bad_hashes_say_what_is_wrong() {
        for (stored, expected) in [
            ("secret", "plaintext passwords are not accepted"),
            ("$6$abc", "expected $6$<salt>$<hash>"),
            ("$6$AAAA$AAAA", "hash is 3 bytes, not 64"),
            ("$7$0$AAAA$AAAA", "iterations must be between 1"),
            ("$7$99999999999$AAAA$AAAA", "not a number"),
            ("$7$101$!!$AAAA", "salt is not base64"),
            (
                "$argon2id$v=16$m=64,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAA",
                "version 19",
            ),
            (
                "$argon2id$v=19$m=99999999,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAA",
                "above what",
            ),
            (
                "$2b$31$abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz0",
                "cost",
            ),
        ] {
            let error = PasswordHash::parse(stored).unwrap_err().to_string();
            assert!(error.contains(expected), "{stored}: {error}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let hash = PasswordHash::parse(PBKDF2_2_0).unwrap();
        assert_eq!(format!("{hash:?}"), "PasswordHash::Pbkdf2Sha512");
    }
}
