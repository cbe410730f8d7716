//! Idle plain-TCP connections without a task: the parking lot.
//!
//! A connection that is a runtime task costs the runtime's task cell (512 bytes for
//! the connection loop in tokio) and its socket's registration with the reactor
//! (tokio's `ScheduledIo`, 256 bytes, cache-line aligned) for as long as it is
//! open, although most of a device fleet's connections do nothing for seconds or
//! minutes at a time. Mosquitto keeps an idle connection in 0.7 KiB because it has
//! no task per connection at all.
//!
//! So a plain-TCP connection that stayed idle (nothing read or written) for a
//! whole [`PARK_TICK`], or a new one right after its CONNACK, leaves its task: its
//! socket moves to this lot's own epoll instance (the kernel's memory, not the
//! process's), its task ends, and what is left of it in the process is a
//! [`Parked`] slot of 24 bytes beside the core's connection and session state. The
//! lot's epoll descriptor is itself registered with the runtime, so one task
//! ([`run_lot`](crate::runtime::run_lot)) waits for every parked socket. A parked
//! connection gets its task back ([`Parked::resume`], then that task spawns
//! [`serve_plain`](crate::connection::serve_plain) again) as soon as
//! - its socket becomes readable or the peer hangs up (epoll, level-triggered, so
//!   bytes that arrived while it was being parked are seen at once), or
//! - the core has output for it or closes it (the hub's `Transmit` and `Close`
//!   events for a parked connection are turned into unpark requests).
//!
//! The core's timers (keep-alive, session expiry) do not involve the task, so they
//! run as before. Linux only: elsewhere [`ParkingLot::new`] fails and connections
//! keep their tasks.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use broker_state::{ConnId, Now};
use mqtt_proto::Decoder;

use crate::connection::{Connection, LocalNotify, SharedHub, Transport};
use crate::epoll::Epoll;

/// How long a connection must stay idle, at least, before it is parked (a new
/// connection parks right after its CONNACK); it is parked within two ticks of its
/// last activity.
pub const PARK_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// A transport whose socket can leave the runtime's reactor while it is parked.
pub trait Parkable: Transport + Sized {
    /// Takes the socket off the runtime's reactor.
    fn into_fd(self) -> io::Result<OwnedFd>;
    /// A parked socket back on the runtime's reactor.
    fn from_fd(fd: OwnedFd) -> io::Result<Self>;
}

/// The parking lot as a server thread's tasks share it.
pub type SharedLot = Rc<RefCell<ParkingLot>>;

/// What is left of a parked connection in the process: its socket, its id and its
/// decoder (which knows the protocol version).
pub struct Parked {
    fd: OwnedFd,
    conn: ConnId,
    decoder: Decoder,
    /// Its socket was ready when the lot looked: its waking input is read at once.
    readable: bool,
}

/// How many connections are parked right now, readable from any thread (tests,
/// and later the metrics).
#[derive(Clone, Default, Debug)]
pub struct ParkedGauge(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ParkedGauge {
    /// Parked connections now.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Parked {
    /// The connection, registered with the hub again, and its socket back on the
    /// runtime's reactor, for a new task to serve from
    /// [`Start::Opened`](crate::connection::Start::Opened). If the socket cannot be
    /// registered the connection is closed and this is `None`.
    ///
    /// A connection whose socket woke it has its waking input read and handed to
    /// the core here, before its task exists: the lot takes ready sockets in the
    /// order they became ready, so input is handled in the order it arrived across
    /// connections (a SUBSCRIBE on a parked connection is not overtaken by a
    /// PUBLISH that arrived after it on a busy one).
    pub fn resume<T: Parkable>(self, hub: &SharedHub, now: Now) -> Option<(T, Connection)> {
        let notify = LocalNotify::new();
        hub.borrow_mut().unpark(self.conn, notify.clone());
        let mut conn = Connection::resume(self.conn, self.decoder, notify);
        let mut fd = self.fd;
        if self.readable {
            let mut socket = std::net::TcpStream::from(fd);
            conn.read_waking_input(hub, now, &mut socket);
            fd = OwnedFd::from(socket);
        }
        match T::from_fd(fd) {
            Ok(t) => Some((t, conn)),
            Err(error) => {
                tracing::debug!(%error, "cannot register a parked connection again");
                conn.closed(hub, now);
                None
            }
        }
    }
}

/// Parked connections of one server thread, in one epoll instance.
pub struct ParkingLot {
    epoll: Epoll,
    slots: Vec<Option<Parked>>,
    free: Vec<u32>,
    /// Unpark requests from the hub, kept for their allocation.
    requests: Vec<(u32, ConnId)>,
    /// Tokens (slots) of ready sockets, kept for their allocation.
    ready: Vec<u64>,
    parked: ParkedGauge,
}

impl ParkingLot {
    /// An empty lot with an epoll instance of its own (Linux; elsewhere an error,
    /// and connections keep their tasks).
    pub fn new(parked: ParkedGauge) -> io::Result<Self> {
        Ok(ParkingLot {
            epoll: Epoll::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            requests: Vec::new(),
            ready: Vec::new(),
            parked,
        })
    }

    /// The epoll descriptor, readable while a parked socket is ready. The server
    /// registers it with its runtime's reactor and the lot's task
    /// ([`run_lot`](crate::runtime::run_lot)) calls [`ParkingLot::take_ready`] when
    /// it is.
    pub fn epoll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.epoll.as_fd()
    }

    /// Parks `conn` (whose task is ending) with its socket `fd`, already taken
    /// off the runtime's reactor. If the socket cannot be added to the lot's epoll
    /// set, both come back and the connection goes on with a task.
    pub fn park(
        &mut self,
        hub: &SharedHub,
        fd: OwnedFd,
        conn: Connection,
    ) -> Result<(), (OwnedFd, Connection)> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let Ok(slot) = u32::try_from(self.slots.len()) else {
                    return Err((fd, conn));
                };
                self.slots.push(None);
                slot
            }
        };
        if let Err(error) = self.watch(&fd, slot) {
            tracing::debug!(%error, "cannot park a connection");
            self.free.push(slot);
            return Err((fd, conn));
        }
        let (id, decoder) = conn.into_parked();
        hub.borrow_mut().park(id, slot);
        self.slots[slot as usize] = Some(Parked {
            fd,
            conn: id,
            decoder,
            readable: false,
        });
        self.parked.add();
        Ok(())
    }

    fn watch(&self, fd: &OwnedFd, slot: u32) -> io::Result<()> {
        use std::os::fd::AsFd;
        self.epoll.add(fd.as_fd(), u64::from(slot))
    }

    fn unwatch(&self, fd: &OwnedFd) {
        use std::os::fd::AsFd;
        self.epoll.delete(fd.as_fd());
    }

    /// Moves every parked connection that must run again into `out`: those whose
    /// socket is ready, and those the core has output for or closes. Returns true
    /// when the epoll set had no more ready sockets (the runtime may then clear the
    /// descriptor's readiness).
    pub fn take_ready(&mut self, hub: &SharedHub, out: &mut Vec<Parked>) -> bool {
        let drained = self.take_ready_sockets(out);
        let mut requests = std::mem::take(&mut self.requests);
        hub.borrow_mut().take_unpark_requests(&mut requests);
        for (slot, conn) in requests.drain(..) {
            let here = self.slots.get(slot as usize).and_then(Option::as_ref);
            if here.is_some_and(|p| p.conn == conn) {
                self.unpark(slot, false, out);
            }
        }
        self.requests = requests;
        drained
    }

    fn take_ready_sockets(&mut self, out: &mut Vec<Parked>) -> bool {
        let mut ready = std::mem::take(&mut self.ready);
        // One batch at a time: a socket stays ready (level-triggered) until it is
        // taken off the set, so each batch is unparked before the next is asked for.
        let drained = loop {
            let batch = self.epoll.ready(&mut ready);
            let before = out.len();
            // In the order the sockets became ready.
            for token in ready.drain(..) {
                if let Ok(slot) = u32::try_from(token) {
                    self.unpark(slot, true, out);
                }
            }
            let progressed = out.len() > before;
            match batch {
                Ok(true) => break true,
                // More may be ready: ask again, as long as each batch takes some
                // (a batch of nothing but tokens no slot holds would repeat).
                Ok(false) if progressed && !self.is_empty() => continue,
                // Interrupted, or nothing more to take: the adapter waits for the
                // lot's readiness again.
                Ok(false) => break false,
                Err(error) => {
                    // The set cannot be read: no parked connection may be stranded
                    // in it, so every one gets its task back.
                    tracing::error!(%error, "epoll_wait on the parking lot failed; unparking every connection");
                    for slot in 0..self.slots.len() {
                        if let Ok(slot) = u32::try_from(slot) {
                            self.unpark(slot, false, out);
                        }
                    }
                    break true;
                }
            }
        };
        self.ready = ready;
        drained
    }

    fn unpark(&mut self, slot: u32, readable: bool, out: &mut Vec<Parked>) {
        let Some(mut parked) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.unwatch(&parked.fd);
        self.free.push(slot);
        self.parked.sub();
        parked.readable = readable;
        out.push(parked);
    }

    /// Connections parked here now.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no connection is parked here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Asks every plain-TCP connection that stayed idle since the previous sweep to
/// park, and starts the next idle period for the others. The lot's task
/// ([`run_lot`](crate::runtime::run_lot)) calls it every park tick
/// (`limits.park_idle_ms`, default [`PARK_TICK`]).
pub fn sweep_idle(hub: &SharedHub) {
    let mut hub = hub.borrow_mut();
    for notify in hub.task_wakers() {
        notify.sweep();
    }
    // The same tick reports what the core dropped since the previous one.
    hub.report();
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use broker_state::{Broker, Config, PeerInfo};
    use std::os::unix::net::UnixStream;

    /// A lot holding `n` parked sockets (the other ends are returned to keep them
    /// open), without a hub: slots filled as `park` fills them.
    fn lot_with(n: usize) -> (ParkingLot, Vec<UnixStream>) {
        let gauge = ParkedGauge::default();
        let mut lot = ParkingLot::new(gauge).expect("epoll");
        let mut broker = Broker::new(Config::default(), [3; 32]);
        let now = Now::new(std::time::Instant::now(), 0);
        let mut peers = Vec::new();
        for i in 0..n {
            let (ours, theirs) = UnixStream::pair().expect("socket pair");
            let fd = OwnedFd::from(ours);
            let slot = u32::try_from(i).expect("small");
            lot.watch(&fd, slot).expect("watch");
            lot.slots.push(Some(Parked {
                fd,
                conn: broker.handle_accept(now, PeerInfo::memory("p")),
                decoder: Decoder::new(1024),
                readable: false,
            }));
            lot.parked.add();
            peers.push(theirs);
        }
        (lot, peers)
    }

    #[test]
    fn ready_sockets_come_out_in_the_order_they_became_ready_and_readable() {
        use std::io::Write;
        let (mut lot, mut peers) = lot_with(3);
        let peers_conns: Vec<ConnId> = lot
            .slots
            .iter()
            .map(|p| p.as_ref().expect("parked").conn)
            .collect();
        for i in [2, 0] {
            peers[i].write_all(b"x").expect("write");
        }
        let mut out = Vec::new();
        assert!(lot.take_ready_sockets(&mut out));
        let conns: Vec<ConnId> = out.iter().map(|p| p.conn).collect();
        let expected: Vec<ConnId> = [2, 0].iter().map(|&i| peers_conns[i]).collect();
        assert_eq!(conns, expected, "readiness order");
        assert!(out.iter().all(|p| p.readable));
        assert_eq!(lot.len(), 1);
        assert_eq!(lot.parked.get(), 1);
    }

    #[test]
    fn more_ready_sockets_than_one_batch_are_all_taken_once() {
        use std::io::Write;
        // More than epoll's batch of 256: each batch must be taken off the set
        // before the next is asked for (level-triggered, it would come back).
        let (mut lot, mut peers) = lot_with(300);
        for p in &mut peers {
            p.write_all(b"x").expect("write");
        }
        let mut out = Vec::new();
        assert!(lot.take_ready_sockets(&mut out));
        assert_eq!(out.len(), 300);
        assert!(lot.is_empty());
        assert_eq!(lot.parked.get(), 0);
    }

    #[test]
    fn an_epoll_wait_error_gives_every_parked_connection_its_task_back() {
        let (mut lot, _peers) = lot_with(3);
        // A descriptor that is not an epoll instance: epoll_wait fails with EINVAL.
        lot.epoll = Epoll::from_fd(OwnedFd::from(
            std::fs::File::open("/dev/null").expect("/dev/null"),
        ));
        let mut out = Vec::new();
        assert!(lot.take_ready_sockets(&mut out));
        assert_eq!(out.len(), 3, "no connection stranded");
        assert!(lot.is_empty());
        assert_eq!(lot.parked.get(), 0);
    }
}
