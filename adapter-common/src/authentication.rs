//! The answers to the core's authentication questions, off the broker's thread.
//!
//! The core asks ([`broker_state::Event::Authenticate`]); the hub answers what
//! needs no real work at once ([`Verifier::quick`]: anonymous clients, unknown
//! methods, a password verified a short while ago), and hands the rest to the
//! authentication task ([`crate::connection::run_authentication`]), which runs at
//! most `max_in_flight` verifications at a time on a worker pool (the `blocking`
//! crate's threads, the same under every runtime) and feeds each answer back. When
//! the pool is busy, further logins wait in line; they do not fail, and
//! connections that are already established never wait for them.
//!
//! Argon2 costs ~13 ms of CPU and 19 MiB per verification on purpose. A fleet that
//! reconnects within minutes does not pay it again: a successful verification is
//! remembered for [`CACHE_TTL`] by user name with a keyed digest of the password
//! (SipHash-1-3 with a 128-bit key drawn at start, so the cache holds nothing an
//! attacker could use offline). The cache is forgotten whenever the password file
//! changes on disk (checked by every verification and every second).

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use broker_state::{AuthKind, AuthQuestion, AuthStep};
use mqtt_proto::ReasonCode;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::passwd::PasswordFile;

/// How long a successful password verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Users remembered at most; beyond it the cache starts over.
const CACHE_MAX: usize = 100_000;

/// Decides who a client is: the password file, and anonymous clients where the
/// config allows them. Shared by the broker's thread (quick answers) and the
/// workers (verifications).
pub struct Verifier {
    path: Option<PathBuf>,
    file: RwLock<Loaded>,
    allow_anonymous: bool,
    cache: Mutex<Cache>,
    key: (u64, u64),
}

struct Loaded {
    passwords: Option<PasswordFile>,
    /// The file's modification time and length when it was read.
    stamp: Option<(SystemTime, u64)>,
}

#[derive(Default)]
struct Cache {
    /// User name -> digest of the password that was verified, and until when.
    users: HashMap<String, (u128, Instant)>,
}

impl Verifier {
    /// From the loaded password file (`path` is where it came from, watched for
    /// changes) and the anonymous policy. `key` is secret randomness for the
    /// cache's digests.
    pub fn new(
        path: Option<PathBuf>,
        passwords: Option<PasswordFile>,
        allow_anonymous: bool,
        key: (u64, u64),
    ) -> Self {
        let stamp = path.as_deref().and_then(stamp_of);
        Verifier {
            path,
            file: RwLock::new(Loaded { passwords, stamp }),
            allow_anonymous,
            cache: Mutex::new(Cache::default()),
            key,
        }
    }

    /// The answer, if it needs no verification: anonymous clients, methods this
    /// server does not support, a password verified within [`CACHE_TTL`]. Cheap
    /// enough for the broker's thread.
    pub fn quick(&self, q: &AuthQuestion, now: Instant) -> Option<AuthStep> {
        let (username, password) = match &q.kind {
            AuthKind::Password { username, password } => (username, password),
            // No enhanced authentication method is configured (yet): [MQTT-4.12.0-1].
            AuthKind::Start { .. } => {
                return Some(AuthStep::Failure(ReasonCode::BadAuthenticationMethod))
            }
            AuthKind::Step { .. } => return Some(AuthStep::Failure(ReasonCode::ProtocolError)),
        };
        let has_file = self.file.read().ok()?.passwords.is_some();
        let Some(user) = username else {
            return Some(self.anonymous(None));
        };
        if !has_file {
            // No password file: the user name names the session's owner.
            return Some(self.anonymous(Some(user.as_str())));
        }
        let digest = self.digest(user.as_str(), password.as_deref().unwrap_or_default());
        let cache = self.cache.lock().ok()?;
        match cache.users.get(user.as_str()) {
            Some(&(d, until)) if d == digest && now < until => Some(allow(user.as_str())),
            _ => None,
        }
    }

    /// Verifies a password (tens of milliseconds: call it on a worker, never on
    /// the broker's thread).
    pub fn verify(&self, q: &AuthQuestion) -> AuthStep {
        if let Some(step) = self.quick(q, Instant::now()) {
            return step;
        }
        self.refresh();
        let AuthKind::Password { username, password } = &q.kind else {
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        };
        let Some(user) = username else {
            return self.anonymous(None);
        };
        let password = password.as_deref().unwrap_or_default();
        let verified = match self.file.read() {
            // `verify` spends the same time on unknown users as on known ones.
            Ok(file) => file
                .passwords
                .as_ref()
                .is_some_and(|f| f.verify(user.as_str(), password)),
            Err(_) => false,
        };
        if !verified {
            return AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
        }
        let digest = self.digest(user.as_str(), password);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.users.len() >= CACHE_MAX {
                let now = Instant::now();
                cache.users.retain(|_, (_, until)| *until > now);
                if cache.users.len() >= CACHE_MAX {
                    cache.users.clear();
                }
            }
            cache.users.insert(
                user.as_str().to_owned(),
                (digest, Instant::now() + CACHE_TTL),
            );
        }
        allow(user.as_str())
    }

    /// Reads the password file again if it changed on disk, and then forgets every
    /// remembered verification. Blocking (a `stat`, maybe a read): on a worker.
    pub fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = stamp_of(path);
        let current = self.file.read().map(|f| f.stamp).unwrap_or(None);
        if now == current {
            return;
        }
        match PasswordFile::load(path) {
            Ok(passwords) => {
                if let Ok(mut file) = self.file.write() {
                    *file = Loaded {
                        passwords: Some(passwords),
                        stamp: now,
                    };
                }
                tracing::info!(file = %path.display(), "password file changed: reloaded");
            }
            Err(error) => {
                // The old users stay; the next change is tried again.
                if let Ok(mut file) = self.file.write() {
                    file.stamp = now;
                }
                tracing::error!(%error, "password file changed but cannot be read; keeping the old one");
            }
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.users.clear();
        }
    }

    fn anonymous(&self, user: Option<&str>) -> AuthStep {
        if self.allow_anonymous {
            AuthStep::Success {
                data: None,
                authentication_name: user.map(str::to_owned),
            }
        } else {
            AuthStep::Failure(ReasonCode::NotAuthorized)
        }
    }

    fn digest(&self, user: &str, password: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(user.as_bytes());
        h.write_u8(0xff);
        h.write(password);
        h.finish128().as_u128()
    }
}

/// Puts the calling worker thread in the idle scheduling class (`SCHED_IDLE`),
/// once per thread: where verifications and the broker's thread share a CPU, the
/// broker's thread preempts them whenever it has work, so established clients keep
/// their latency during a login storm (measured on one core: round-trip p99 4.6 ms
/// at nice 10, 1.1 ms idle-class; benches/README.md "Logins"). On a machine whose
/// every core is saturated by routing, logins wait until a core has a moment;
/// they still fail only at the connect timeout. Linux only; elsewhere nothing.
pub fn lower_worker_priority() {
    #[cfg(target_os = "linux")]
    {
        thread_local!(static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        LOWERED.with(|lowered| {
            if !lowered.replace(true) {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: `param` lives through the call; pid 0 names the calling
                // thread. A failure leaves the policy as it was, which is only
                // slower for others.
                let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            }
        });
    }
}

fn allow(user: &str) -> AuthStep {
    AuthStep::Success {
        data: None,
        authentication_name: Some(user.to_owned()),
    }
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
