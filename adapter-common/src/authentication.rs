//! The answers to the core's authentication questions, off the broker's thread.
//!
//! The core asks ([`broker_state::Event::Authenticate`]); the hub answers what
//! needs no real work at once ([`Verifier::quick`]: anonymous clients, unknown
//! methods, refusals by rule of the identity policy, a password verified a short
//! while ago), and hands the rest to the authentication task
//! ([`crate::connection::run_authentication`]), which runs at most
//! `max_in_flight` decisions at a time on a worker pool (the `blocking` crate's
//! threads, the same under every runtime) and feeds each answer back. What a
//! decision is (certificates, passwords, tokens, the webhook) is the identity
//! policy's ([`crate::identity`]). When the pool is busy, further logins wait in
//! line; they do not fail, and connections that are already established never
//! wait for them.
//!
//! Argon2 costs ~13 ms of CPU and 19 MiB per verification on purpose. A fleet that
//! reconnects within minutes does not pay it again: a successful verification is
//! remembered for [`CACHE_TTL`] by user name with a keyed digest of the password
//! (SipHash-1-3 with a 128-bit key drawn at start, so the cache holds nothing an
//! attacker could use offline). The cache is forgotten whenever the password file
//! changes on disk (checked by every verification and every second) and whenever
//! the policy is reloaded.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_state::{AuthKind, AuthQuestion, AuthStep};
use mqtt_proto::ReasonCode;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::identity::{Policy, Quick};
use crate::passwd::PasswordFile;

/// How long a successful password verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Users remembered at most; beyond it the cache starts over.
const CACHE_MAX: usize = 100_000;

/// Decides who a client is: the identity policy ([`crate::identity`]) with the
/// password file. Shared by the broker's thread (quick answers), the workers
/// (verifications) and the TLS handshakes (which certificates get in).
pub struct Verifier {
    /// The identity policy, replaced whole by a reload.
    policy: RwLock<Arc<Policy>>,
    /// The password file as last read, replaced whole when it changes: a
    /// verification takes its own reference and holds no lock while Argon2 runs,
    /// so the broker's thread never waits behind one.
    file: RwLock<Arc<Loaded>>,
    /// Bumped by every reload; a remembered verification of an older one no
    /// longer counts (also one that finished while the file was being replaced).
    generation: AtomicU64,
    cache: Mutex<Cache>,
    key: (u64, u64),
    /// A reloaded authorization policy the server thread has not taken yet
    /// (`Some(None)`: none, everything allowed).
    pending_authorization: Mutex<Option<Option<Arc<broker_state::authz::Policy>>>>,
}

struct Loaded {
    /// Where the password file is; `None`: there is none.
    path: Option<PathBuf>,
    passwords: Option<PasswordFile>,
    /// The file's modification time and length when it was read.
    stamp: Option<(SystemTime, u64)>,
}

#[derive(Default)]
struct Cache {
    /// User name -> digest of the password that was verified, until when, against
    /// which generation of the file and policy, and the answer it got.
    users: HashMap<String, (u128, Instant, u64, AuthStep)>,
}

impl Verifier {
    /// From the identity policy and the password file (where it came from, watched
    /// for changes, and as loaded). `key` is secret randomness for the cache's
    /// digests.
    pub fn new(policy: Policy, file: Option<(PathBuf, PasswordFile)>, key: (u64, u64)) -> Self {
        Verifier {
            policy: RwLock::new(Arc::new(policy)),
            file: RwLock::new(Arc::new(loaded(file))),
            generation: AtomicU64::new(0),
            cache: Mutex::new(Cache::default()),
            key,
            pending_authorization: Mutex::new(None),
        }
    }

    /// Hands a reloaded authorization policy to the server thread, which takes it
    /// ([`Verifier::take_authorization`]) within a second.
    pub fn offer_authorization(&self, policy: Option<Arc<broker_state::authz::Policy>>) {
        if let Ok(mut slot) = self.pending_authorization.lock() {
            *slot = Some(policy);
        }
    }

    /// The authorization policy a reload offered, once.
    pub fn take_authorization(&self) -> Option<Option<Arc<broker_state::authz::Policy>>> {
        self.pending_authorization.lock().ok()?.take()
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the policy and the password file at once (a reload): connections
    /// decided from now on see only the new ones; remembered verifications are
    /// forgotten. Established connections are not touched.
    pub fn reload(&self, policy: Policy, file: Option<(PathBuf, PasswordFile)>) {
        let loaded = Arc::new(loaded(file));
        match (self.policy.write(), self.file.write()) {
            (Ok(mut p), Ok(mut f)) => {
                *p = Arc::new(policy);
                *f = loaded;
            }
            _ => tracing::error!("identity reload failed: a lock is poisoned"),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.lock() {
            cache.users.clear();
        }
    }

    /// The answer, if it needs no verification: anonymous clients, methods this
    /// server does not support, refusals by rule, a password verified within
    /// [`CACHE_TTL`]. Cheap enough for the broker's thread.
    pub fn quick(&self, q: &AuthQuestion, now: Instant) -> Option<AuthStep> {
        let has_file = self.file.read().is_ok_and(|f| f.path.is_some());
        match self.policy().quick(q, has_file)? {
            Quick::Answer(step) => Some(step),
            Quick::Password => self.remembered(q, now),
        }
    }

    /// The user name of a password question and the keyed digest of its
    /// credentials, the cache's key.
    fn password_key<'q>(&self, q: &'q AuthQuestion) -> Option<(&'q str, u128)> {
        let AuthKind::Password {
            username: Some(user),
            password,
        } = &q.kind
        else {
            return None;
        };
        let digest = self.digest(user.as_str(), password.as_deref().unwrap_or_default());
        Some((user.as_str(), digest))
    }

    /// The answer a password check got within [`CACHE_TTL`], against the file and
    /// policy in force.
    fn remembered(&self, q: &AuthQuestion, now: Instant) -> Option<AuthStep> {
        let (user, digest) = self.password_key(q)?;
        let generation = self.generation.load(Ordering::Acquire);
        let cache = self.cache.lock().ok()?;
        match cache.users.get(user) {
            Some((d, until, g, step)) if *d == digest && now < *until && *g == generation => {
                Some(step.clone())
            }
            _ => None,
        }
    }

    /// The maximum of webhook calls at once, when a webhook is configured.
    pub fn webhook_in_flight(&self) -> Option<usize> {
        self.policy().webhook_in_flight()
    }

    /// Whether deciding `q` will ask the webhook ([`Policy::asks_webhook`]).
    pub fn asks_webhook(&self, q: &AuthQuestion) -> bool {
        self.policy().asks_webhook(q)
    }

    /// Decides (tens of milliseconds for a password, a network round trip for the
    /// webhook: call it on a worker, never on the broker's thread).
    pub fn verify(&self, q: &AuthQuestion) -> AuthStep {
        self.refresh();
        // The generation first: a reload that lands during the verification makes
        // the result one the cache no longer counts.
        let generation = self.generation.load(Ordering::Acquire);
        let policy = self.policy();
        let Some(file) = self.file.read().ok().map(|f| Arc::clone(&f)) else {
            return AuthStep::Failure(ReasonCode::ServerUnavailable);
        };
        let password_check = match policy.quick(q, file.path.is_some()) {
            Some(Quick::Answer(step)) => return step,
            Some(Quick::Password) => {
                if let Some(step) = self.remembered(q, Instant::now()) {
                    return step;
                }
                true
            }
            None => false,
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let step = policy.decide(q, file.passwords.as_ref(), now_unix);
        let remember = password_check && matches!(step, AuthStep::Success { .. });
        if let (true, Some((user, digest))) = (remember, self.password_key(q)) {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.users.len() >= CACHE_MAX {
                    let now = Instant::now();
                    cache.users.retain(|_, (_, until, _, _)| *until > now);
                    if cache.users.len() >= CACHE_MAX {
                        cache.users.clear();
                    }
                }
                cache.users.insert(
                    user.to_owned(),
                    (digest, Instant::now() + CACHE_TTL, generation, step.clone()),
                );
            }
        }
        step
    }

    /// Reads the password file again if it changed on disk, and then forgets every
    /// remembered verification. Blocking (a `stat`, maybe a read): on a worker.
    pub fn refresh(&self) {
        let Some(current) = self.file.read().ok().map(|f| Arc::clone(&f)) else {
            return;
        };
        let Some(path) = &current.path else { return };
        let now = stamp_of(path);
        if now == current.stamp {
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
            // Unless a reload replaced it meanwhile.
            if file.path.as_ref() == Some(path) {
                let passwords = passwords.or_else(|| file.passwords.clone());
                *file = Arc::new(Loaded {
                    path: Some(path.clone()),
                    passwords,
                    stamp: now,
                });
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.lock() {
            cache.users.clear();
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

fn loaded(file: Option<(PathBuf, PasswordFile)>) -> Loaded {
    let (path, passwords) = file.unzip();
    let stamp = path.as_deref().and_then(stamp_of);
    Loaded {
        path,
        passwords,
        stamp,
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

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
