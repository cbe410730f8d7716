//! One connection's life, written once for every runtime: the WebSocket upgrade,
//! then the loop that reads, feeds the core, pulls its output and writes, until the
//! core or the peer ends it.
//!
//! An adapter wraps its socket type in [`Transport`] (poll-based read, write and
//! close, as tokio's and futures-io's traits both are) and its timer in a timeout
//! around [`handshake`] and [`Connection::finish`]. The loop itself needs no
//! timer: the core's timers (connect timeout, keep-alive) end a silent connection.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use broker_state::{ConnId, Now, PeerInfo};
use bytes::{Buf, BytesMut};

use crate::hub::{ConnIo, Framing, Hub, Wake, WebSocketIo};
use crate::park::{Parkable, SharedLot};
use crate::websocket::{self, FrameDecoder, Handshake};

/// A byte stream as the connection loop needs it.
pub trait Transport: Unpin {
    /// Reads into the spare capacity of `buf` (the caller reserved some), appending.
    /// `Ok(0)` is end of stream.
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
    /// Writes some of `data`.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
    /// Flushes and closes the write side.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A single-threaded notification: `wake` sets a flag and wakes the task waiting in
/// [`LocalNotify::notified`]. Wakes before the wait are not lost; several coalesce.
///
/// A connection's notification also carries its idle marks for the parking lot
/// ([`crate::park`]). A connection parks when it has nothing to do and
/// - it did not read or write during a whole sweep tick (the sweep asks it to), or
/// - it is new and has just had its first exchange (CONNECT in, CONNACK out): a
///   fleet connecting at once then never holds a task per device for long.
///
/// Giving a parked connection a task again costs about 10 µs of broker CPU (four
/// epoll changes, a task, a reactor turn); parking only connections that were quiet
/// for a tick keeps that off connections that talk several times a second (1,000
/// pairs at 10 msg/s each: 20 % broker CPU, as without parking; 39 % when every
/// connection parked after each exchange).
#[derive(Default)]
pub struct LocalNotify {
    flag: Cell<bool>,
    /// Rounds of reading or writing since the last sweep.
    busy: Cell<u16>,
    /// A new connection that has not parked or been asked to yet.
    new: Cell<bool>,
    /// The sweep found it idle: park at the next chance.
    park: Cell<bool>,
    /// Its task may park it (plain TCP on a runtime with a parking lot).
    parkable: Cell<bool>,
    /// Its task has just started and has not heard from the reactor yet.
    fresh: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    /// A notification with no wake pending.
    pub fn new() -> Rc<Self> {
        Rc::new(LocalNotify::default())
    }

    /// Consumes a pending wake, or registers the task to be woken.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.replace(false) {
            return Poll::Ready(());
        }
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits for a wake.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| self.poll_notified(cx))
    }

    fn wake_task(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The connection read or wrote: it is not idle.
    fn mark_active(&self) {
        self.busy.set(self.busy.get().saturating_add(1));
        self.park.set(false);
        self.fresh.set(false);
    }

    /// Whether the connection, now without anything to do, should park: the sweep
    /// asked it to, or it is new and has had its first exchange.
    ///
    /// Never at the first chance of a task just (re)started that has not read or
    /// written yet: its socket's readiness may not be known to the reactor until the
    /// reactor's next turn, so the bytes that woke it from the lot would not have
    /// been read yet.
    fn should_park(&self) -> bool {
        if self.fresh.replace(false) || !self.parkable.get() {
            return false;
        }
        if self.busy.get() > 0 && self.new.replace(false) {
            return true;
        }
        self.park.get()
    }

    /// One sweep of the parking lot: a parkable connection that did not read or
    /// write since the previous sweep is asked (once) to park.
    pub(crate) fn sweep(&self) {
        let busy = self.busy.replace(0);
        if self.parkable.get() && busy == 0 && !self.park.replace(true) {
            self.new.set(false);
            self.wake_task();
        }
    }
}

impl Wake for Rc<LocalNotify> {
    fn wake(&self) {
        self.wake_task();
    }
}

/// The hub as connection tasks on one thread share it.
pub type SharedHub = Rc<RefCell<Hub<Rc<LocalNotify>>>>;

/// A hub for one server thread around `broker`, and the notification its timer
/// task waits on (woken when the core's next deadline moves earlier).
pub fn shared_hub(broker: broker_state::Broker) -> (SharedHub, Rc<LocalNotify>) {
    let hub: SharedHub = Rc::new(RefCell::new(Hub::new(broker)));
    let timer = LocalNotify::new();
    hub.borrow_mut().set_timer_waker(timer.clone());
    (hub, timer)
}

/// The timer task of a server thread: sleeps until the core's next deadline (or
/// until an earlier one appears), then fires the due timers. `sleep_until` is the
/// runtime's timer; `clock` reads both clocks.
pub async fn run_timer<S, F>(
    hub: SharedHub,
    notify: Rc<LocalNotify>,
    clock: impl Fn() -> Now,
    sleep_until: S,
) where
    S: Fn(std::time::Instant) -> F,
    F: Future<Output = ()>,
{
    loop {
        let deadline = hub.borrow_mut().arm_timer();
        match deadline {
            Some(at) => {
                let mut sleep = std::pin::pin!(sleep_until(at));
                let fired = poll_fn(|cx| {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    if notify.poll_notified(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    Poll::Pending
                })
                .await;
                if fired {
                    hub.borrow_mut().timeout(clock());
                }
            }
            None => notify.notified().await,
        }
    }
}

/// The store task of a server thread: hands what the durable store made durable
/// (or could not) back to the core, which releases the acknowledgements that
/// waited. Ends when the hub has no store (none was configured, or shutdown took
/// it to flush it).
pub async fn run_store(hub: SharedHub, clock: impl Fn() -> Now) {
    let mut done = Vec::new();
    loop {
        let more = poll_fn(|cx| match hub.borrow().store() {
            Some(store) => store.poll_completions(cx, &mut done).map(|()| true),
            None => Poll::Ready(false),
        })
        .await;
        if !more {
            return;
        }
        hub.borrow_mut().store_completed(clock(), &mut done);
    }
}

/// The cluster task of a server thread: hands what the other nodes send to the
/// core (see [`crate::hub::Hub::cluster_inbound`]). Ends when the node has no
/// cluster link, or its thread has ended.
pub async fn run_cluster(hub: SharedHub, clock: impl Fn() -> Now) {
    let mut inbound = Vec::new();
    loop {
        poll_fn(|cx| match hub.borrow_mut().cluster_mut() {
            Some(cluster) => cluster.poll_inbound(cx, &mut inbound),
            None => Poll::Ready(()),
        })
        .await;
        if inbound.is_empty() {
            return;
        }
        hub.borrow_mut().cluster_inbound(clock(), &mut inbound);
    }
}

/// The authentication task of a server thread: takes the questions the hub could
/// not answer at once, runs at most `max_in_flight` verifications at a time on the
/// worker pool (`blocking`), and hands each answer back to the core. Logins beyond
/// the bound wait in line. Every second, and after each verification, the password
/// file is checked for changes (on a worker too). `spawn` starts a future on this
/// thread's executor; `sleep` is the runtime's timer.
pub async fn run_authentication<C, Sp, S, F>(
    hub: SharedHub,
    notify: Rc<LocalNotify>,
    verifier: std::sync::Arc<crate::authentication::Verifier>,
    max_in_flight: usize,
    clock: C,
    spawn: Sp,
    sleep: S,
) where
    C: Fn() -> Now + Clone + 'static,
    Sp: Fn(std::pin::Pin<Box<dyn Future<Output = ()>>>),
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    // Two lanes: verifications (CPU: at most `max_in_flight`) and webhook calls
    // (I/O: the webhook's own `max_in_flight`), so that a slow webhook never holds
    // up password or token checks.
    let in_flight = Rc::new(Cell::new(0usize));
    let webhook_in_flight = Rc::new(Cell::new(0usize));
    // One tick a second whatever else wakes the task: a stream of logins must not
    // keep postponing it (it applies reloaded authorization policies).
    let mut tick = Box::pin(sleep(std::time::Duration::from_secs(1)));
    loop {
        let webhook_max = verifier.webhook_in_flight().unwrap_or(1);
        for (lane, count, max) in [
            (false, &in_flight, max_in_flight.max(1)),
            (true, &webhook_in_flight, webhook_max.max(1)),
        ] {
            while count.get() < max {
                let Some(question) = hub.borrow_mut().take_question(lane) else {
                    break;
                };
                count.set(count.get() + 1);
                let (hub, notify, verifier, in_flight, clock) = (
                    hub.clone(),
                    notify.clone(),
                    verifier.clone(),
                    count.clone(),
                    clock.clone(),
                );
                spawn(Box::pin(async move {
                    let ticket = question.ticket;
                    let answer = blocking::unblock(move || {
                        crate::authentication::lower_worker_priority();
                        verifier.verify(&question)
                    })
                    .await;
                    hub.borrow_mut().answer(clock(), ticket, answer);
                    in_flight.set(in_flight.get() - 1);
                    notify.wake_task();
                }));
            }
        }
        let ticked = poll_fn(|cx| {
            if notify.poll_notified(cx).is_ready() {
                return Poll::Ready(false);
            }
            tick.as_mut().poll(cx).map(|()| true)
        })
        .await;
        if ticked {
            tick = Box::pin(sleep(std::time::Duration::from_secs(1)));
            if let Some(policy) = verifier.take_authorization() {
                hub.borrow_mut().set_authorization(clock(), policy);
            }
            let verifier = verifier.clone();
            blocking::unblock(move || verifier.refresh()).await;
        }
    }
}

/// Where there is no parking lot (async-std, or no epoll), the report of what the
/// core dropped ([`Hub::report`]) still runs every `tick`: this is its task.
pub async fn run_reports<S, F>(hub: SharedHub, tick: std::time::Duration, sleep: S)
where
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    loop {
        sleep(tick).await;
        hub.borrow_mut().report();
    }
}

/// Graceful shutdown of a server thread's connections: DISCONNECT 0x8B to 5.0
/// clients, then wait (polling with the runtime's `sleep`) until every connection
/// has flushed and closed, or the grace period ends.
pub async fn shutdown<S, F>(hub: &SharedHub, clock: impl Fn() -> Now, sleep: S)
where
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    let start = clock();
    hub.borrow_mut().shutdown(start);
    let deadline = start.instant + crate::server::SHUTDOWN_GRACE;
    while !hub.borrow().is_empty() && clock().instant < deadline {
        sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `Some(output)` of `fut`, or `None` if `sleep` (the runtime's timer) ends first.
pub async fn timeout<F: Future, S: Future<Output = ()>>(sleep: S, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(sleep);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// One accepted connection from start to end: the WebSocket upgrade (bounded by
/// `handshake_timeout`), the connection loop, the last flush (bounded by
/// [`FLUSH_TIMEOUT`](crate::server::FLUSH_TIMEOUT)), and telling the core it is gone.
/// `clock` reads both clocks; `sleep` is the runtime's timer. `read`: bytes of the
/// upgrade request already read from `t` (by the listener telling a WebSocket
/// upgrade from an HTTP request).
///
/// An idle connection is this future, parked in the loop: the upgrade and the
/// flush, with their timers, are boxed for the time they run, so they take no room
/// in it the rest of the time.
#[allow(clippy::too_many_arguments)]
pub async fn serve<T, C, S, F>(
    hub: SharedHub,
    mut t: T,
    peer: PeerInfo,
    websocket: bool,
    path: Option<String>,
    handshake_timeout: std::time::Duration,
    clock: C,
    sleep: S,
    read: BytesMut,
) where
    T: Transport,
    C: Fn() -> Now,
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    let initial = if websocket {
        let upgrade = handshake(&mut t, path.as_deref(), read);
        match Box::pin(timeout(sleep(handshake_timeout), upgrade)).await {
            Some(Some(rest)) => rest,
            _ => return,
        }
    } else {
        BytesMut::new()
    };
    drop(path);
    let conn = Connection::open(&hub, clock(), peer, websocket, initial);
    // Not parkable, so this always ends with the connection closed.
    let _ = serve_until_idle(&hub, t, Start::Opened(conn), false, &clock, &sleep).await;
}

/// Where a connection's task starts.
pub enum Start {
    /// A plain connection just accepted: it is registered with the hub here.
    New(PeerInfo),
    /// A connection already registered with the hub: one that was parked, or one
    /// opened after its WebSocket upgrade.
    Opened(Connection),
}

/// A plain connection (MQTT directly on the transport) from `start` until it ends:
/// when `lot` is given and it goes idle, it parks there
/// ([`ParkingLot::park`](crate::park::ParkingLot::park)) and this returns; the
/// lot's task later serves it again from [`Start::Opened`]. If the transport cannot
/// be parked it goes on being served here.
pub async fn serve_plain<T, C, S, F>(
    hub: SharedHub,
    lot: Option<SharedLot>,
    t: T,
    start: Start,
    clock: C,
    sleep: S,
) where
    T: Parkable,
    C: Fn() -> Now,
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    let (mut t, mut start) = (t, start);
    loop {
        let served = serve_until_idle(&hub, t, start, lot.is_some(), &clock, &sleep);
        let (Some((idle, conn)), Some(lot)) = (served.await, &lot) else {
            return;
        };
        let fd = match idle.into_fd() {
            Ok(fd) => fd,
            Err(error) => {
                tracing::debug!(%error, "cannot take an idle connection off the reactor");
                conn.closed(&hub, clock());
                return;
            }
        };
        let Err((fd, conn)) = lot.borrow_mut().park(&hub, fd, conn) else {
            return;
        };
        match T::from_fd(fd) {
            Ok(again) => (t, start) = (again, Start::Opened(conn)),
            Err(error) => {
                tracing::debug!(%error, "cannot register an unparked connection again");
                conn.closed(&hub, clock());
                return;
            }
        }
    }
}

/// The connection loop, then either the last flush (bounded by
/// [`FLUSH_TIMEOUT`](crate::server::FLUSH_TIMEOUT)) and telling the core it is gone,
/// or, when `parkable` and it goes idle, the transport and connection back.
async fn serve_until_idle<T, C, S, F>(
    hub: &SharedHub,
    mut t: T,
    start: Start,
    parkable: bool,
    clock: &C,
    sleep: &S,
) -> Option<(T, Connection)>
where
    T: Transport,
    C: Fn() -> Now,
    S: Fn(std::time::Duration) -> F,
    F: Future<Output = ()>,
{
    let mut conn = match start {
        Start::New(peer) => {
            let conn = Connection::open(hub, clock(), peer, false, BytesMut::new());
            conn.notify.new.set(true);
            conn
        }
        Start::Opened(conn) => conn,
    };
    match conn.run(hub, &mut t, clock, parkable).await {
        Ended::Idle => return Some((t, conn)),
        Ended::Flush => {
            let flush = conn.finish(hub, &mut t);
            let flushed = Box::pin(timeout(sleep(crate::server::FLUSH_TIMEOUT), flush)).await;
            if flushed == Some(true) {
                let linger = linger(&mut t, crate::server::LINGER_BYTES);
                let _ = Box::pin(timeout(sleep(crate::server::LINGER_TIMEOUT), linger)).await;
            }
        }
        Ended::Gone => {}
    }
    conn.closed(hub, clock());
    None
}

/// How [`Connection::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The core closes the connection: flush its last output, then close.
    Flush,
    /// The peer went away or the transport failed.
    Gone,
    /// Nothing to read or write, and idle for a sweep tick or new after its first
    /// exchange: it may park.
    Idle,
}

/// Bytes pulled from the core per write.
const WRITE_BUDGET: usize = 64 * 1024;

/// Deliveries a connection's input may cause before its task yields. A publisher
/// whose every message goes to 100 subscribers queues 10,000 deliveries per window
/// of 100 QoS 1 messages; without a bound it went on for up to 32 rounds (300,000
/// deliveries) before the subscribers' tasks could write them and read their
/// PUBACKs, so every subscriber's in-flight window grew to thousands of messages
/// (fan-out QoS 1: 74 MiB peak RSS on smol). Too small a bound costs as much the
/// other way: at 4096 a fan-out publisher yielded after every read, so each
/// subscriber's write carried a few dozen messages and the broker spent its time in
/// `sendto` (fan-out QoS 0: 3.0-4.0 M deliveries/s; 6.3-7.4 M at 16384, peak RSS
/// 6-10 MiB either way). At about 150 ns per delivery this bound holds the thread
/// for at most ~2.5 ms. A fan-in publisher (one receiver per message) rarely
/// reaches it.
const FAIR_SHARE_DELIVERIES: u64 = 16384;

/// Reads the WebSocket upgrade request and answers it. Returns the bytes that
/// followed the request (already frames), or `None` if the request was refused or
/// the peer went away. The adapter bounds it with its handshake timeout.
pub async fn handshake<T: Transport>(
    t: &mut T,
    path: Option<&str>,
    read: BytesMut,
) -> Option<BytesMut> {
    let mut buf = read;
    loop {
        match websocket::parse_handshake(&buf, path) {
            Handshake::NeedMore => {
                if buf.len() >= websocket::MAX_HANDSHAKE_LEN {
                    return None;
                }
                buf.reserve(1024);
                match poll_fn(|cx| t.poll_read_buf(cx, &mut buf)).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            Handshake::Error(e) => {
                tracing::debug!(error = %e, "websocket handshake refused");
                let mut out = BytesMut::new();
                e.write_response(&mut out);
                let _ = write_all(t, &mut out).await;
                let _ = poll_fn(|cx| t.poll_close(cx)).await;
                return None;
            }
            Handshake::Request(req) => {
                let mut out = BytesMut::new();
                req.write_response(&mut out);
                write_all(t, &mut out).await.ok()?;
                return Some(buf.split_off(req.header_len));
            }
        }
    }
}

/// A lingering close, as HTTP servers do: with the write side already shut, reads
/// and throws away the peer's input until it closes, up to `max` bytes (the caller
/// bounds the time). Closing a socket with unread input makes the kernel answer
/// the client's next write with a reset (EPIPE or ECONNRESET there): a client that
/// overran the Receive Maximum and writes before it reads would see the reset
/// instead of DISCONNECT 0x93.
pub async fn linger<T: Transport>(t: &mut T, max: usize) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut discarded = 0;
    while discarded < max {
        buf.clear();
        match poll_fn(|cx| t.poll_read_buf(cx, &mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

async fn write_all<T: Transport>(t: &mut T, out: &mut BytesMut) -> io::Result<()> {
    while !out.is_empty() {
        let n = poll_fn(|cx| t.poll_write(cx, out)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        out.advance(n);
    }
    Ok(())
}

/// A connection registered with the hub, between [`Connection::open`] and
/// [`Connection::finish`].
pub struct Connection {
    conn: ConnId,
    io: ConnIo,
    notify: Rc<LocalNotify>,
}

impl Connection {
    /// Registers a transport connection with the core. `initial` holds bytes already
    /// read (after a WebSocket upgrade).
    pub fn open(
        hub: &SharedHub,
        now: Now,
        peer: PeerInfo,
        websocket: bool,
        initial: BytesMut,
    ) -> Self {
        let max_packet = hub.borrow().broker().max_packet_size();
        let framing = if websocket {
            // A WebSocket message may hold several packets: allow some slack over one.
            let max = max_packet as usize;
            Framing::WebSocket(Box::new(WebSocketIo::new(FrameDecoder::new(
                max + 16,
                max.saturating_mul(2),
            ))))
        } else {
            Framing::Raw
        };
        let notify = LocalNotify::new();
        let conn = hub.borrow_mut().accept(now, peer, notify.clone());
        let mut io = ConnIo::new(framing, max_packet);
        io.input = initial;
        if !io.input.is_empty() {
            hub.borrow_mut().feed(now, conn, &mut io);
        }
        Connection { conn, io, notify }
    }

    /// A parked connection, to be served again.
    pub(crate) fn resume(
        conn: ConnId,
        decoder: mqtt_proto::Decoder,
        notify: Rc<LocalNotify>,
    ) -> Self {
        Connection {
            conn,
            io: ConnIo::resumed(decoder),
            notify,
        }
    }

    /// Reads, once and without waiting, the input that woke a parked connection,
    /// and hands it to the core (see [`Parked::resume`](crate::park::Parked::resume)).
    /// What is not read now (more than one read's worth, or a read that would block)
    /// the connection's task reads as usual.
    pub(crate) fn read_waking_input(
        &mut self,
        hub: &SharedHub,
        now: Now,
        socket: &mut impl std::io::Read,
    ) {
        let mut chunk = [0u8; 4096];
        let n = match socket.read(&mut chunk) {
            Ok(n) if n > 0 => n,
            // The end of the stream, an error or nothing after all: the task sees
            // the same when it reads.
            _ => return,
        };
        let mut buf = hub.borrow_mut().take_read_buffer();
        buf.extend_from_slice(&chunk[..n]);
        self.io.input = buf;
        hub.borrow_mut().feed(now, self.conn, &mut self.io);
        self.give_back(hub, true);
        self.io.release_idle_buffers();
        self.notify.mark_active();
    }

    /// What a parked connection keeps: its id and its decoder. Its wake handle
    /// goes, with the task's waker in it (a waker keeps the task's memory alive).
    pub(crate) fn into_parked(self) -> (ConnId, mqtt_proto::Decoder) {
        (self.conn, self.io.into_decoder())
    }

    /// Runs until the core closes the connection, the peer goes away, or (when
    /// `parkable`) the parking lot's sweep found it idle and it has nothing to read
    /// or write.
    pub async fn run<T: Transport>(
        &mut self,
        hub: &SharedHub,
        t: &mut T,
        clock: impl Fn() -> Now,
        parkable: bool,
    ) -> Ended {
        self.notify.parkable.set(parkable);
        self.notify.fresh.set(true);
        poll_fn(|cx| self.poll_run(cx, hub, t, &clock)).await
    }

    fn poll_run<T: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        hub: &SharedHub,
        t: &mut T,
        clock: &impl Fn() -> Now,
    ) -> Poll<Ended> {
        let conn = self.conn;
        // A peer that floods must not starve the other connections on this thread:
        // after 32 rounds of progress, or once its input has caused
        // `FAIR_SHARE_DELIVERIES` deliveries, the task yields.
        let mut rounds = 0;
        let mut routed = 0;
        loop {
            rounds += 1;
            if rounds > 32 || routed >= FAIR_SHARE_DELIVERIES {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Everything the core has for us, up to a write's worth, pulled into the
            // thread's shared write buffer when nothing of ours is pending, so an idle
            // connection holds no write buffer; only what the socket does not take
            // stays with the connection.
            let own = !self.io.output.is_empty();
            let mut out = if own {
                core::mem::take(&mut self.io.output)
            } else {
                hub.borrow_mut().take_write_buffer()
            };
            let closing = {
                let mut hub = hub.borrow_mut();
                while out.len() < WRITE_BUDGET
                    && hub.pull(conn, &mut self.io, &mut out, WRITE_BUDGET) > 0
                {}
                hub.closing(conn).is_some() || self.io.finished
            };
            let mut progressed = false;
            let mut failed = false;
            if !closing && !out.is_empty() {
                match t.poll_write(cx, &out) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => failed = true,
                    Poll::Ready(Ok(n)) => {
                        out.advance(n);
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            if own {
                self.io.output = out;
            } else {
                if !out.is_empty() {
                    self.io.output = BytesMut::from(&out[..]);
                    out.clear();
                }
                hub.borrow_mut().put_write_buffer(out);
            }
            if closing {
                return Poll::Ready(Ended::Flush);
            }
            if failed {
                return Poll::Ready(Ended::Gone);
            }
            // A peer that does not read while it keeps sending would make the core
            // queue ever more acknowledgements for it: while its socket does not drain,
            // its input is not read either (its keep-alive then runs out).
            if self.io.output.len() >= WRITE_BUDGET {
                if progressed {
                    continue;
                }
                return Poll::Pending;
            }
            // A CONNECT waiting for the answer to its authentication: its further
            // input is not read (or fed) until the answer came; then what was held
            // is fed at once.
            if self.io.held {
                if hub.borrow().broker().is_authenticating(conn) {
                    if self.notify.poll_notified(cx).is_ready() || progressed {
                        continue;
                    }
                    return Poll::Pending;
                }
                routed += hub.borrow_mut().feed(clock(), conn, &mut self.io);
                self.io.release_idle_buffers();
                continue;
            }
            // Between packets, read into the thread's shared buffer, so an idle
            // connection holds no read buffer and only a partial packet's bytes are
            // copied into its own; with a packet in progress, read into its own buffer
            // (sized for the rest of that packet) to avoid copying it again.
            let shared = self.io.input.is_empty();
            let mut buf = if shared {
                hub.borrow_mut().take_read_buffer()
            } else {
                self.io.reserve_for_read();
                core::mem::take(&mut self.io.input)
            };
            let read = t.poll_read_buf(cx, &mut buf);
            self.io.input = buf;
            match read {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.give_back(hub, shared);
                    return Poll::Ready(Ended::Gone);
                }
                Poll::Ready(Ok(_)) => {
                    routed += hub.borrow_mut().feed(clock(), conn, &mut self.io);
                    self.give_back(hub, shared);
                    progressed = true;
                }
                Poll::Pending => self.give_back(hub, shared),
            }
            self.io.release_idle_buffers();
            if progressed {
                self.notify.mark_active();
            }
            // A wake from the core (or the sweep) is progress, not activity.
            if self.notify.poll_notified(cx).is_ready() {
                progressed = true;
            }
            if !progressed {
                if self.io.is_idle() && self.notify.should_park() {
                    return Poll::Ready(Ended::Idle);
                }
                return Poll::Pending;
            }
        }
    }

    /// After a read into the shared buffer: a partial packet left in it is copied
    /// into the connection's own buffer (or, the head of a large packet, keeps the
    /// block), and the shared buffer goes back.
    fn give_back(&mut self, hub: &SharedHub, shared: bool) {
        if !shared {
            return;
        }
        let mut rest = core::mem::take(&mut self.io.input);
        if !rest.is_empty() {
            // The head of a large packet: the connection keeps the block (no copy),
            // and the thread's next read takes a fresh one.
            if self.io.keeps_read_block(&rest) {
                self.io.input = rest;
                return;
            }
            self.io.input = BytesMut::from(&rest[..]);
            rest.clear();
        }
        hub.borrow_mut().put_read_buffer(rest);
    }

    /// Writes the last output (a CONNACK refusal, a DISCONNECT, the WebSocket close)
    /// and closes the transport's write side; true if all of it went out. The
    /// adapter bounds it with a timeout, then lingers ([`linger`]).
    pub async fn finish<T: Transport>(&mut self, hub: &SharedHub, t: &mut T) -> bool {
        hub.borrow_mut().pull_final(self.conn, &mut self.io);
        write_all(t, &mut self.io.output).await.is_ok()
            && poll_fn(|cx| t.poll_close(cx)).await.is_ok()
    }

    /// Tells the core the transport is gone. Call last, always.
    pub fn closed(self, hub: &SharedHub, now: Now) {
        hub.borrow_mut().closed(now, self.conn);
    }
}
