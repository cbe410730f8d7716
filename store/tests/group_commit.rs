//! Test 2: a burst of single-op submits is committed in few groups, tickets in order.

mod common;

use broker_state::StoreOp;
use brokk_store::FsyncPolicy;

#[test]
fn ten_thousand_single_op_submits_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    let store = opened.store;
    const N: u64 = 10_000;
    for i in 0..N {
        let op = if i == 0 {
            common::session_with_messages("burst", 0, b"").remove(0)
        } else {
            StoreOp::MessageEnqueue {
                client_id: common::cid("burst"),
                seq: i,
                message: common::message("t", &i.to_be_bytes(), mqtt_proto::QoS::AtLeastOnce),
            }
        };
        store.submit(vec![op], i);
    }
    let done = common::wait_for(&store, N as usize);
    let tickets: Vec<u64> = done.iter().map(|c| c.ticket).collect();
    assert_eq!(tickets, (0..N).collect::<Vec<_>>(), "tickets out of order");
    assert!(done.iter().all(|c| c.result.is_ok()));
    let stats = store.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.batches, N);
    assert_eq!(stats.ops_applied, N);
    assert_eq!(stats.failed_batches, 0);
    assert!(
        stats.commits <= N / 20,
        "{} commits for {N} single-op batches: no group commit",
        stats.commits
    );
    assert_eq!(
        stats.fsyncs, stats.commits,
        "Always: every commit is durable"
    );
    store.flush_and_close().unwrap();
    let reopened = common::open(dir.path(), FsyncPolicy::Always);
    assert_eq!(reopened.replay.len(), N as usize);
}

/// Completions reach a waker on a thread that is not the writer's, without a
/// runtime: poll, park, get woken.
#[test]
fn poll_completions_wakes_the_poller() {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::EveryMs(5));
    let store = opened.store;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    assert!(store.poll_completions(&mut cx, &mut out).is_pending());
    for t in 0..100 {
        store.submit(common::session_with_messages(&format!("c{t}"), 2, b"x"), t);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while out.len() < 100 {
        assert!(std::time::Instant::now() < deadline);
        match store.poll_completions(&mut cx, &mut out) {
            Poll::Ready(()) => {}
            Poll::Pending => std::thread::park_timeout(std::time::Duration::from_secs(5)),
        }
    }
    assert_eq!(
        out.iter().map(|c| c.ticket).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    store.flush_and_close().unwrap();
    let reopened = common::open(dir.path(), FsyncPolicy::Never);
    assert_eq!(reopened.replay.len(), 300);
}

#[test]
fn a_message_queued_and_removed_in_one_group_is_never_written_and_one_sent_in_it_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path(), FsyncPolicy::Always).store;
    let id = || common::cid("quick");
    let enqueue = |seq: u64| StoreOp::MessageEnqueue {
        client_id: id(),
        seq,
        message: common::message("t", &seq.to_be_bytes(), mqtt_proto::QoS::AtLeastOnce),
    };
    let mut ops = common::session_with_messages("quick", 0, b"");
    // 1: queued, sent, acknowledged in the same batch: nothing to write.
    ops.push(enqueue(1));
    ops.push(StoreOp::MessageSent {
        client_id: id(),
        seq: 1,
        packet_id: 1,
    });
    ops.push(StoreOp::MessageRemove {
        client_id: id(),
        seq: 1,
    });
    // 2: queued and still there.
    ops.push(enqueue(2));
    // 3: queued, then the session removed and made again (its seqs start over),
    // then a remove of "3" that belongs to the new session's message only.
    ops.push(enqueue(3));
    ops.push(StoreOp::SessionRemove { client_id: id() });
    ops.extend(common::session_with_messages("quick", 0, b""));
    ops.push(enqueue(3));
    ops.push(enqueue(4));
    ops.push(StoreOp::MessageRemove {
        client_id: id(),
        seq: 3,
    });
    // 4 and 5: queued, then sent (5 also released), and still in flight: their
    // flow state goes into the entry as it is inserted.
    ops.push(StoreOp::MessageSent {
        client_id: id(),
        seq: 4,
        packet_id: 7,
    });
    ops.push(enqueue(5));
    ops.push(StoreOp::MessageSent {
        client_id: id(),
        seq: 5,
        packet_id: 9,
    });
    ops.push(StoreOp::MessageReleased {
        client_id: id(),
        seq: 5,
    });
    let mut memory = broker_state::MemoryStore::new();
    for op in &ops {
        memory.apply(op).unwrap();
    }
    store.submit(ops, 1);
    assert!(common::wait_for(&store, 1)[0].result.is_ok());
    let (elided, folded) = (store.stats().ops_elided, store.stats().ops_folded);
    store.flush_and_close().unwrap();
    let replay = common::open(dir.path(), FsyncPolicy::Always).replay;
    assert_eq!(
        replay,
        memory.replay(),
        "the same state as applying every op"
    );
    // 1's enqueue and sent, and the new session's enqueue of 3, were not written
    // (the removes are kept: a lookup that finds nothing).
    assert_eq!(elided, 3);
    assert_eq!(folded, 3, "4's and 5's sent, 5's released");
}
