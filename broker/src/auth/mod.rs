//! Authentication: who may connect. A CONNECT's credentials go through a
//! chain of backends (today: the password file); the first that knows the
//! user decides, and a user no backend knows is refused. A client without
//! a user name is anonymous: admitted only with `auth.allow_anonymous`.
//!
//! - [`password_hash`]: the hashes a password file holds (Mosquitto's
//!   `$6$`, `$7$`, `$argon2id$`, and bcrypt);
//! - [`password_file`]: the file itself;
//! - [`passwd_command`]: `starling passwd`, which edits a password file;
//! - [`cache`]: verifications that succeeded, so that a reconnect storm
//!   does not hash every password again;
//! - [`throttle`]: refusals slowed down per source address.
//!
//! docs/security.md describes the whole.

pub mod cache;
pub mod passwd_command;
pub mod password_file;
pub mod password_hash;
pub mod throttle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use cache::VerifiedCache;
use password_file::{PasswordFile, PasswordFileError};
use throttle::Throttle;

/// What a client presents in CONNECT.
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
}

/// The answer to a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A user the backends know, with the wrong password; or a user none
    /// of them knows (CONNACK 0x86; 3.1.1: 4).
    BadCredentials,
    /// Anonymous while anonymous access is off (CONNACK 0x87; 3.1.1: 5).
    NotAuthorized,
}

/// The authentication chain of a broker, with its cache and throttle.
pub struct Authenticator {
    allow_anonymous: bool,
    password_file: Option<(PathBuf, RwLock<Arc<PasswordFile>>)>,
    cache: VerifiedCache,
    throttle: Throttle,
    /// Password checks running at once: one per core. More would only
    /// add blocking threads (and their memory) without checking faster.
    hashing: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
}

/// What a reload read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// Users of the password file now in force; `None` without one.
    pub password_file_users: Option<usize>,
}

/// Why the authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.password_file {path}: {source}")]
    PasswordFile {
        path: String,
        source: PasswordFileError,
    },
}

impl Authenticator {
    /// The chain `config` describes, its files read now.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Authenticator, AuthError> {
        let password_file = match &config.auth.password_file {
            Some(path) => {
                let file = load(path)?;
                info!(path = %path.display(), users = file.len(), "password file loaded");
                Some((path.clone(), RwLock::new(Arc::new(file))))
            }
            None => None,
        };
        let allow_anonymous = config.auth.allow_anonymous_in_effect();
        if allow_anonymous && password_file.is_none() {
            warn!(
                "anyone may connect: no password file, and anonymous access allowed (set auth.password_file, or auth.allow_anonymous = false; see docs/security.md)"
            );
        }
        Ok(Authenticator {
            allow_anonymous,
            password_file,
            cache: VerifiedCache::new(
                Duration::from_secs(config.auth.cache_ttl_secs),
                config.auth.cache_max_entries,
            ),
            throttle: Throttle::default(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
            metrics,
        })
    }

    /// Reads the password file again; on error the loaded one stays.
    /// Either outcome is logged here, whoever asked (SIGHUP, the API).
    pub fn reload(&self) -> Result<Reloaded, AuthError> {
        let mut reloaded = Reloaded::default();
        if let Some((path, loaded)) = &self.password_file {
            let file = load(path).inspect_err(|error| {
                warn!(%error, "password file not reloaded: the loaded one stays");
            })?;
            info!(path = %path.display(), users = file.len(), "password file reloaded");
            reloaded.password_file_users = Some(file.len());
            *loaded.write() = Arc::new(file);
        }
        Ok(reloaded)
    }

    /// Whether `credentials` may connect. Password hashing runs on a
    /// blocking thread; a refusal is slowed down according to the
    /// refusals its address had lately.
    pub async fn authenticate(&self, credentials: &Credentials<'_>) -> Decision {
        let decision = self.decide(credentials).await;
        match decision {
            Decision::Allow => Metrics::inc(&self.metrics.auth_allowed),
            Decision::BadCredentials | Decision::NotAuthorized => {
                Metrics::inc(&self.metrics.auth_refused);
                let delay = self.throttle.refused(credentials.peer.ip());
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        decision
    }

    async fn decide(&self, credentials: &Credentials<'_>) -> Decision {
        let Some(username) = credentials.username else {
            return if self.allow_anonymous {
                Decision::Allow
            } else {
                Decision::NotAuthorized
            };
        };
        let Some((_, loaded)) = &self.password_file else {
            // No backend knows users: with anonymous access everyone is
            // admitted, whatever name they give (as Mosquitto does).
            return if self.allow_anonymous {
                Decision::Allow
            } else {
                Decision::BadCredentials
            };
        };
        let file = loaded.read().clone();
        let Some(stored) = file.get(username) else {
            return Decision::BadCredentials;
        };
        let password = credentials.password.unwrap_or_default();
        let key = self.cache.key(username, password, stored);
        if self.cache.holds(&key) {
            Metrics::inc(&self.metrics.auth_cache_hits);
            return Decision::Allow;
        }
        let Ok(_permit) = self.hashing.acquire().await else {
            return Decision::BadCredentials;
        };
        let (stored, password) = (stored.clone(), password.to_vec());
        let verified = tokio::task::spawn_blocking(move || stored.verify(&password))
            .await
            .unwrap_or(false);
        if verified {
            self.cache.insert(key);
            Decision::Allow
        } else {
            Decision::BadCredentials
        }
    }
}

fn load(path: &std::path::Path) -> Result<PasswordFile, AuthError> {
    PasswordFile::load(path).map_err(|source| AuthError::PasswordFile {
        path: path.display().to_string(),
        source,
    })
}
