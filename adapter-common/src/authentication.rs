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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// Where the password file is; `None`: there is none.
    path: Option<PathBuf>,
    /// The password file as last read, replaced whole when it changes: a
    /// verification takes its own reference and holds no lock while Argon2 runs,
    /// so the broker's thread never waits behind one.
    file: RwLock<Arc<Loaded>>,
    /// Bumped by every reload; a remembered verification of an older one no
    /// longer counts (also one that finished while the file was being replaced).
    generation: AtomicU64,
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
    /// User name -> digest of the password that was verified, until when, and
    /// against which generation of the file.
    users: HashMap<String, (u128, Instant, u64)>,
}

impl Verifier {
    /// From the password file (where it came from, watched for changes, and as
    /// loaded) and the anonymous policy. `key` is secret randomness for the
    /// cache's digests.
    pub fn new(
        file: Option<(PathBuf, PasswordFile)>,
        allow_anonymous: bool,
        key: (u64, u64),
    ) -> Self {
        let (path, passwords) = file.unzip();
        let stamp = path.as_deref().and_then(stamp_of);
        Verifier {
            path,
            file: RwLock::new(Arc::new(Loaded { passwords, stamp })),
            generation: AtomicU64::new(0),
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
        let Some(user) = username else {
            return Some(self.anonymous(None));
        };
        if self.path.is_none() {
            // No password file: the user name names the session's owner.
            return Some(self.anonymous(Some(user.as_str())));
        }
        let digest = self.digest(user.as_str(), password.as_deref().unwrap_or_default());
        let generation = self.generation.load(Ordering::Acquire);
        let cache = self.cache.lock().ok()?;
        match cache.users.get(user.as_str()) {
            Some(&(d, until, g)) if d == digest && now < until && g == generation => {
                Some(allow(user.as_str()))
            }
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
        // The generation first: a reload that lands during the verification makes
        // the result one the cache no longer counts.
        let generation = self.generation.load(Ordering::Acquire);
        let Some(file) = self.file.read().ok().map(|f| Arc::clone(&f)) else {
            return AuthStep::Failure(ReasonCode::ServerUnavailable);
        };
        // `verify` spends the same time on unknown users as on known ones.
        let verified = file
            .passwords
            .as_ref()
            .is_some_and(|f| f.verify(user.as_str(), password));
        if !verified {
            return AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
        }
        let digest = self.digest(user.as_str(), password);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.users.len() >= CACHE_MAX {
                let now = Instant::now();
                cache.users.retain(|_, (_, until, _)| *until > now);
                if cache.users.len() >= CACHE_MAX {
                    cache.users.clear();
                }
            }
            cache.users.insert(
                user.as_str().to_owned(),
                (digest, Instant::now() + CACHE_TTL, generation),
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
        let passwords = match PasswordFile::load(path) {
            Ok(passwords) => {
                tracing::info!(file = %path.display(), "password file changed: reloaded");
                Some(passwords)
            }
            Err(error) => {
                // The old users stay; the next change is tried again.
                tracing::error!(%error, "password file changed but cannot be read; keeping the old one");
                None
            }
        };
        if let Ok(mut file) = self.file.write() {
            let passwords = passwords.or_else(|| file.passwords.clone());
            *file = Arc::new(Loaded {
                passwords,
                stamp: now,
            });
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.lock() {
            cache.users.clear();
        }
    }

    fn anonymous(&self, user: Option<&str>) -> AuthStep {
        if self.allow_anonymous {
            AuthStep::allow(user.map(str::to_owned))
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
    AuthStep::allow(Some(user.to_owned()))
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
