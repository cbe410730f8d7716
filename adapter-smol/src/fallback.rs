//! async-io's fallback thread, kept off the server thread's CPU time.
//!
//! async-io (the reactor under smol and async-std) runs a helper thread, named
//! `async-io`, that takes the reactor over whenever the thread blocked in
//! `block_on` has not polled it for 50 µs or more. A busy broker thread often goes
//! that long between polls (one read of 64 KiB is some 800 PUBLISHes), so under load
//! the helper grabbed the reactor thousands of times a second: every time, the broker
//! thread found the reactor taken when it went idle and had to be woken by the
//! helper, two context switches per hand-over (about 7,500 a second each way and
//! 9 % of the CPU in fan-in QoS 1, against 20 a second for the tokio adapter).
//!
//! With `SCHED_IDLE` the helper runs only when the CPU has nothing else to do, that
//! is when the broker thread is itself waiting on the reactor, and then it finds
//! the reactor held and goes back to sleep. When the CPU is not shared, nothing
//! changes: the helper still serves threads that block without polling.

/// Lowers the scheduling class of this process's `async-io` thread to
/// `SCHED_IDLE`; a no-op where that does not exist. `brokk-smol` calls it once its
/// server runs.
///
/// Only for a process in which the server's thread is the one thread that blocks
/// on async-io: where several threads block on it (several servers in one test
/// process, say), the helper is what moves I/O along for a thread that gave the
/// reactor up, and on a busy machine an idle-class helper could wait long for the
/// CPU. The thread names itself once it runs, so this looks again a few times
/// (for at most a second). Best effort: a failure is logged and changes nothing
/// else.
pub fn yield_async_io_thread() {
    for _ in 0..20 {
        if set_idle() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::debug!("no async-io fallback thread found");
}

/// The thread id of this process's `async-io` thread, once it has named itself.
#[cfg(target_os = "linux")]
fn async_io_thread() -> std::io::Result<Option<libc::pid_t>> {
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "async-io" {
            if let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) {
                return Ok(Some(tid));
            }
        }
    }
    Ok(None)
}

/// True once there is nothing more to try: the thread was found, or this
/// process's threads cannot be listed.
#[cfg(target_os = "linux")]
fn set_idle() -> bool {
    let tid = match async_io_thread() {
        Ok(Some(tid)) => tid,
        Ok(None) => return false,
        Err(_) => return true,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `tid` names a thread of this process and `param` is a valid
    // `sched_param` for the call's duration; `SCHED_IDLE` needs no privilege.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        tracing::debug!(tid, "async-io fallback thread set to SCHED_IDLE");
    } else {
        tracing::debug!(
            tid,
            error = %std::io::Error::last_os_error(),
            "could not lower the async-io fallback thread's priority"
        );
    }
    true
}

/// Elsewhere the helper keeps its default scheduling.
#[cfg(not(target_os = "linux"))]
fn set_idle() -> bool {
    true
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use adapter_common::config::{Config, Listener, ListenerKind, Origin};

    /// The scheduling class of the thread named `async-io`, if there is one.
    fn async_io_policy() -> Option<i32> {
        let tid = super::async_io_thread().expect("list /proc/self/task")?;
        // SAFETY: a read-only query about a thread of this process.
        Some(unsafe { libc::sched_getscheduler(tid) })
    }

    #[test]
    fn yield_async_io_thread_leaves_the_helper_only_idle_cpu_time() {
        let config = Config {
            listeners: vec![Listener::new(
                ListenerKind::Mqtt,
                "127.0.0.1:0".parse().expect("address"),
                Origin::Default,
            )],
            ..Config::default()
        };
        let server = crate::Server::start(config).expect("server starts");
        crate::yield_async_io_thread();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut policy = async_io_policy();
        while policy != Some(libc::SCHED_IDLE) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            policy = async_io_policy();
        }
        server.shutdown();
        assert_eq!(policy, Some(libc::SCHED_IDLE), "async-io thread's policy");
    }
}
