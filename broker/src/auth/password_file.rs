//! A password file: `user:hash` lines, as `mosquitto_passwd` writes them
//! (see `password_hash` for the hashes). Blank lines and lines starting
//! with `#` are skipped; white space around the user and the hash is
//! trimmed (CRLF files work). Unlike Mosquitto 2.0, which skips a bad line
//! and starts without that user, a bad line makes the whole file refused,
//! naming the line: a user silently locked out is worse than a broker that
//! says what is wrong (Mosquitto 2.1 refuses such files too).

use std::collections::HashMap;
use std::path::Path;

use super::password_hash::{HashError, PasswordHash};

/// Longest user name accepted (MQTT's own limit for a UTF-8 string).
const MAX_USERNAME_BYTES: usize = 65_535;

#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

/// Why a password file cannot be used, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |problem: String| PasswordFileError::Line { line, problem };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = trimmed.split_once(':') else {
                return Err(bad("expected user:hash".to_string()));
            };
            let (user, hash) = (user.trim(), hash.trim());
            if user.is_empty() {
                return Err(bad("the user name is empty".to_string()));
            }
            if user.len() > MAX_USERNAME_BYTES {
                return Err(bad("the user name is longer than 65535 bytes".to_string()));
            }
            let hash = PasswordHash::parse(hash)
                .map_err(|error: HashError| bad(format!("user {user:?}: {error}")))?;
            if let Some(first) = first_line.insert(user.to_string(), line) {
                return Err(bad(format!("user {user:?} is also on line {first}")));
            }
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    /// The stored hash of `user`, if the file has one.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// `text` (a password file) with `user`'s line set to `hash`: replaced in
/// place if the user is there, appended otherwise; every other line, and
/// comments, kept as they are.
pub fn with_user(text: &str, user: &str, hash: &PasswordHash) -> String {
    let entry = format!("{user}:{}", hash.encode());
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|raw| {
            if is_line_of(raw, user) && !found {
                found = true;
                entry.clone()
            } else {
                raw.to_string()
            }
        })
        .collect();
    if !found {
        out.push(entry);
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// Whether `raw`, a line of a password file, is `user`'s.
fn is_line_of(raw: &str, user: &str) -> bool {
    let trimmed = raw.trim();
    !trimmed.starts_with('#')
        && trimmed
            .split_once(':')
            .is_some_and(|(name, _)| name.trim() == user)
}

/// `text` without `user`'s line; `None` if it has none.
pub fn without_user(text: &str, user: &str) -> Option<String> {
    let mut found = false;
    let kept: Vec<&str> = text
        .lines()
        .filter(|raw| {
            let is_user = is_line_of(raw, user);
            found |= is_user;
            !is_user
        })
        .collect();
    if !found {
        return None;
    }
    let mut joined = kept.join("\n");
    if !joined.is_empty() {
        joined.push('\n');
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_2_0: &str = "$7$101$2eecUjc7a/YSgLSG$Y+fuXd8Ec/JxuKG11pM2WrE3IQcZIR+khTMmIkwC/EKaGf9TMWapLDDY4KLxDrnYmNLTJoPE0E/kYbZRXCMJ6Q==";

    #[test]
    fn users_comments_blank_lines_and_crlf() {
        let text = format!("# devices\r\n\r\nalice:{SECRET_2_0}\r\n  bob : {SECRET_2_0}  \n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.get("alice").unwrap().verify(b"secret"));
        assert!(file.get("bob").unwrap().verify(b"secret"));
        assert!(file.get("carol").is_none());
    }

    #[test]
    fn a_bad_line_names_its_number() {
        for (text, expected) in [
            (
                "alice:secret\n".to_string(),
                "line 1: user \"alice\": not a known password hash",
            ),
            (
                format!("alice:{SECRET_2_0}\nbob\n"),
                "line 2: expected user:hash",
            ),
            (
                format!("a:{SECRET_2_0}\n\na:{SECRET_2_0}\n"),
                "line 3: user \"a\" is also on line 1",
            ),
            (format!(":{SECRET_2_0}\n"), "line 1: the user name is empty"),
        ] {
            let error = PasswordFile::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn setting_a_user_replaces_its_line_and_keeps_the_rest() {
        let text = format!("# keep me\nalice:{SECRET_2_0}\nbob:{SECRET_2_0}\n");
        let new = PasswordHash::new_pbkdf2(b"new", 10).unwrap();
        let updated = with_user(&text, "alice", &new);
        assert!(updated.starts_with("# keep me\nalice:$7$10$"), "{updated}");
        assert!(updated.contains(&format!("bob:{SECRET_2_0}")));
        let file = PasswordFile::parse(&updated).unwrap();
        assert!(file.get("alice").unwrap().verify(b"new"));
        let added = with_user(&updated, "carol", &new);
        assert!(PasswordFile::parse(&added).unwrap().get("carol").is_some());
    }
}
