//! A connection's output queue: what `poll_transmit` encodes next, in wire order.
//!
//! Control packets and QoS 0 PUBLISHes wait here as [`Packet`]s. A QoS 1/2 PUBLISH
//! does not: its message already sits in the session's in-flight window, so the queue
//! holds only a tag naming its packet id, and `poll_transmit` encodes it from there.
//! That keeps a fan-out delivery from copying the message a second time (a `Packet`
//! slot is a few hundred bytes), which, with a deep window per subscriber, was the
//! largest cost on the QoS 1 path.
//!
//! A QoS 0 PUBLISH routed to many connections is not copied per receiver either: the
//! message is held once in [`SharedMsgs`], and each receiver's queue holds a tag
//! naming it with what differs per receiver (RETAIN as published, one
//! Subscription Identifier).

use core::num::NonZeroU32;
use std::collections::VecDeque;
use std::time::Instant;

use mqtt_proto::{Packet, PacketId, Publish};

/// What goes out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// This many packets from the front of `packets`.
    Packets(u32),
    /// The in-flight PUBLISH with this packet id; `size` as counted in `bytes`.
    Flight { id: PacketId, size: u32 },
    /// The shared QoS 0 message `msg`, with this receiver's RETAIN flag and
    /// Subscription Identifier.
    Shared(SharedTag),
}

/// A receiver's reference to a shared QoS 0 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedTag {
    pub(crate) msg: MsgRef,
    pub(crate) sub_id: Option<NonZeroU32>,
    pub(crate) retain: bool,
}

impl SharedTag {
    /// This receiver's delivery of the shared message `p`.
    pub(crate) fn delivery<'a>(&'a self, p: &'a Publish) -> mqtt_proto::Delivery<'a> {
        mqtt_proto::Delivery {
            retain: self.retain,
            subscription_identifiers: self.sub_id.as_slice(),
            ..p.as_delivery()
        }
    }
}

/// The front of the queue.
pub(crate) enum Front<'a> {
    Packet(&'a mut Packet),
    Flight(PacketId),
    Shared(SharedTag),
}

/// A message held in [`SharedMsgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MsgRef(u32);

/// Messages on their way to receivers, each held once and counted: a fan-out to N
/// receivers costs one copy of the `Publish` and N small references (output-queue
/// tags for QoS 0, session-queue and in-flight entries for QoS 1/2) instead of N
/// copies (each a few hundred bytes moved, and its shared buffers' reference counts
/// raised and dropped atomically). The stored `Publish` has QoS 0, no packet id,
/// no Subscription Identifiers and no Topic Alias; each delivery sets its own.
///
/// A message lives while a reference (or a route in progress) holds it. The
/// counts are the broker's to keep: every reference made takes one, every one
/// dropped gives it back (`check_invariants` recounts them).
#[derive(Default)]
pub(crate) struct SharedMsgs {
    slots: Vec<Slot>,
    /// The slots without a message.
    free: Vec<u32>,
}

struct Slot {
    refs: u32,
    /// `approx_size` of the message.
    size: u32,
    /// When the message expires (its Message Expiry Interval from when it came in).
    expires_at: Option<Instant>,
    publish: Option<Publish>,
}

/// Slots kept once every message is gone; past this the table is freed, so that a
/// burst does not hold its peak for good.
const SHARED_SLOTS_KEPT: usize = 4096;

impl SharedMsgs {
    /// Holds `publish`, which expires at `expires_at`, with one reference (the
    /// caller's).
    pub(crate) fn insert(&mut self, publish: Publish, expires_at: Option<Instant>) -> MsgRef {
        let size = u32::try_from(crate::session::approx_size(&publish)).unwrap_or(u32::MAX);
        let slot = Slot {
            refs: 1,
            size,
            expires_at,
            publish: Some(publish),
        };
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = slot;
            return MsgRef(i);
        }
        let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(slot);
        MsgRef(i)
    }

    /// One more reference to `r`.
    #[inline]
    pub(crate) fn retain(&mut self, r: MsgRef) {
        if let Some(s) = self.slots.get_mut(r.0 as usize) {
            s.refs += 1;
        }
    }

    /// Gives one reference back; the last one frees the message.
    #[inline]
    pub(crate) fn release(&mut self, r: MsgRef) {
        let Some(s) = self.slots.get_mut(r.0 as usize) else {
            return;
        };
        debug_assert!(s.refs > 0, "shared message released more often than held");
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 && s.publish.is_some() {
            s.publish = None;
            let none_left = self.free.len() + 1 == self.slots.len();
            if none_left && self.slots.len() > SHARED_SLOTS_KEPT {
                self.slots = Vec::new();
                self.free = Vec::new();
            } else {
                self.free.push(r.0);
            }
        }
    }

    /// The message and its `approx_size`.
    #[inline]
    pub(crate) fn get(&self, r: MsgRef) -> Option<(&Publish, usize)> {
        let s = self.slots.get(r.0 as usize)?;
        s.publish.as_ref().map(|p| (p, s.size as usize))
    }

    /// When the message `r` expires.
    pub(crate) fn expires_at(&self, r: MsgRef) -> Option<Instant> {
        self.slots.get(r.0 as usize).and_then(|s| s.expires_at)
    }

    /// `approx_size` of the message `r` (0 if it is gone).
    pub(crate) fn size(&self, r: MsgRef) -> usize {
        self.slots
            .get(r.0 as usize)
            .filter(|s| s.publish.is_some())
            .map_or(0, |s| s.size as usize)
    }

    /// Messages held, with their reference counts, for the invariant checks.
    pub(crate) fn held(&self) -> impl Iterator<Item = (MsgRef, u32)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.publish.is_some())
            .map(|(i, s)| (MsgRef(i as u32), s.refs))
    }
}

/// Bytes counted for a flight or shared tag besides its message's size.
const TAG_SLOT: usize = core::mem::size_of::<Tag>();

/// Drained queue buffers kept for reuse, so that a busy connection does not allocate
/// new ones each time its queue drains and fills, while an idle one holds none.
///
/// Small buffers (a few packets) are kept by count. Larger ones, left by a burst,
/// are kept too, up to a byte budget: in a fan-out every subscriber's queue fills to
/// hundreds of packets and drains again many times a second, and freeing and
/// regrowing those buffers (a `Packet` slot is 248 bytes, so a queue of 800 is
/// beyond malloc's mmap threshold) cost a realloc copy per doubling and fresh page
/// faults each time: 15 % of the broker's CPU in a 1:100 QoS 0 fan-out. A queue that
/// needs a buffer takes a large one first, so the same few buffers cycle among the
/// busy connections.
#[derive(Default)]
pub(crate) struct OutPool {
    packets: Pool<Packet>,
    tags: Pool<Tag>,
}

/// Buffers kept: enough for every connection of a 256-way fan-out to take one
/// without allocating, at most 256 x 16 packet slots (~1 MiB).
const POOL_BUFFERS: usize = 256;
/// Packet slots of a small buffer; larger drained buffers count against
/// `POOL_LARGE_BYTES` instead.
const POOL_SLOTS: usize = 16;
/// Bytes of larger drained buffers kept, per kind of queue.
const POOL_LARGE_BYTES: usize = 4 * 1024 * 1024;

struct Pool<T> {
    small: Vec<VecDeque<T>>,
    large: Vec<VecDeque<T>>,
    large_bytes: usize,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool {
            small: Vec::new(),
            large: Vec::new(),
            large_bytes: 0,
        }
    }
}

impl<T> Pool<T> {
    /// Gives `q`, if it has no buffer, a pooled one: a large one first.
    #[inline]
    fn take(&mut self, q: &mut VecDeque<T>) {
        if q.capacity() != 0 {
            return;
        }
        if let Some(pooled) = self.large.pop() {
            self.large_bytes -= pooled.capacity() * core::mem::size_of::<T>();
            *q = pooled;
        } else if let Some(pooled) = self.small.pop() {
            *q = pooled;
        }
    }

    /// Takes the buffer of the drained `q` back (or frees it, past the limits).
    #[inline]
    fn give(&mut self, q: &mut VecDeque<T>, slots: usize) {
        debug_assert!(q.is_empty());
        if q.capacity() == 0 {
            return;
        }
        let mut drained = core::mem::take(q);
        // An empty `VecDeque` keeps its head where the last element left: `clear`
        // moves it back to the start, so the next queue to use this buffer writes
        // the same few cache lines again instead of marching through all of it.
        drained.clear();
        let bytes = drained.capacity() * core::mem::size_of::<T>();
        if drained.capacity() <= slots {
            if self.small.len() < POOL_BUFFERS {
                self.small.push(drained);
            }
        } else if self.large_bytes + bytes <= POOL_LARGE_BYTES {
            self.large_bytes += bytes;
            self.large.push(drained);
        }
    }
}

/// One connection's output, in wire order: first `lead` packets, then what `order`
/// says. Without in-flight PUBLISHes waiting, `order` stays empty (and unallocated).
#[derive(Default)]
pub(crate) struct OutQueue {
    packets: VecDeque<Packet>,
    /// Packets at the front of `packets` that go out before anything in `order`.
    lead: u32,
    order: VecDeque<Tag>,
    /// Flight tags waiting (at most the peer's Receive Maximum, 65,535).
    flights: u32,
    /// Approximate memory held (see `out_size`), bounded by `outbound_buffer_bytes`
    /// for QoS 0.
    bytes: usize,
}

impl OutQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.lead == 0 && self.order.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Flight tags waiting: the newest this many in-flight entries are unsent.
    pub(crate) fn flights(&self) -> usize {
        self.flights as usize
    }

    /// Once drained: gives the buffers back to the pool (or frees them), so an idle
    /// connection holds no queue memory.
    #[inline]
    pub(crate) fn release(&mut self, pool: &mut OutPool) {
        pool.packets.give(&mut self.packets, POOL_SLOTS);
        pool.tags.give(&mut self.order, POOL_SLOTS * 4);
    }

    #[inline]
    pub(crate) fn push_packet(&mut self, packet: Packet, size: usize, pool: &mut OutPool) {
        pool.packets.take(&mut self.packets);
        self.bytes += size;
        self.packets.push_back(packet);
        if self.order.is_empty() {
            self.lead += 1;
            return;
        }
        match self.order.back_mut() {
            Some(Tag::Packets(n)) => *n += 1,
            _ => self.order.push_back(Tag::Packets(1)),
        }
    }

    #[inline]
    pub(crate) fn push_flight(&mut self, id: PacketId, size: usize, pool: &mut OutPool) {
        pool.tags.take(&mut self.order);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        self.bytes += TAG_SLOT + size as usize;
        self.flights += 1;
        self.order.push_back(Tag::Flight { id, size });
    }

    /// Queues a reference to a shared message (the caller has taken the reference)
    /// of `msg_size` bytes.
    #[inline]
    pub(crate) fn push_shared(&mut self, tag: SharedTag, msg_size: usize, pool: &mut OutPool) {
        pool.tags.take(&mut self.order);
        self.bytes += TAG_SLOT + msg_size;
        self.order.push_back(Tag::Shared(tag));
    }

    /// The shared messages this queue refers to, once per tag.
    pub(crate) fn shared_refs(&self) -> impl Iterator<Item = MsgRef> + '_ {
        self.order.iter().filter_map(|t| match t {
            Tag::Shared(s) => Some(s.msg),
            _ => None,
        })
    }

    #[inline]
    pub(crate) fn front(&mut self) -> Option<Front<'_>> {
        if self.lead > 0 {
            return self.packets.front_mut().map(Front::Packet);
        }
        match self.order.front()? {
            Tag::Packets(_) => self.packets.front_mut().map(Front::Packet),
            Tag::Flight { id, .. } => Some(Front::Flight(*id)),
            Tag::Shared(s) => Some(Front::Shared(*s)),
        }
    }

    /// Removes the front; `packet_size` is what the packet counted when pushed, or
    /// the shared message's size (ignored for a flight, which remembers its own).
    #[inline(always)]
    pub(crate) fn pop_front(&mut self, packet_size: usize) {
        if self.lead > 0 {
            self.lead -= 1;
            self.packets.pop_front();
            self.bytes = self.bytes.saturating_sub(packet_size);
            return;
        }
        match self.order.pop_front() {
            Some(Tag::Packets(n)) => {
                self.packets.pop_front();
                self.bytes = self.bytes.saturating_sub(packet_size);
                self.lead = n - 1;
            }
            Some(Tag::Flight { size, .. }) => {
                self.bytes = self.bytes.saturating_sub(TAG_SLOT + size as usize);
                self.flights -= 1;
            }
            Some(Tag::Shared(_)) => {
                self.bytes = self.bytes.saturating_sub(TAG_SLOT + packet_size);
            }
            None => {}
        }
    }

    /// Recomputes `bytes` from the contents, for the invariant checks.
    pub(crate) fn recount(
        &self,
        packet_size: impl Fn(&Packet) -> usize,
        shared_size: impl Fn(MsgRef) -> usize,
    ) -> usize {
        let flights: usize = self
            .order
            .iter()
            .map(|t| match t {
                Tag::Flight { size, .. } => TAG_SLOT + *size as usize,
                Tag::Shared(s) => TAG_SLOT + shared_size(s.msg),
                Tag::Packets(_) => 0,
            })
            .sum();
        flights + self.packets.iter().map(packet_size).sum::<usize>()
    }

    /// Checks that the tags and the packets agree.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let mut packets = self.lead as usize;
        let mut flights = 0usize;
        for t in &self.order {
            match t {
                Tag::Packets(0) => return Err("an empty run of packets"),
                Tag::Packets(n) => packets += *n as usize,
                Tag::Flight { .. } => flights += 1,
                Tag::Shared(_) => {}
            }
        }
        if packets != self.packets.len() {
            return Err("packet tags do not match the packets waiting");
        }
        if flights != self.flights as usize {
            return Err("flight count does not match the flight tags");
        }
        Ok(())
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    fn drained(capacity: usize) -> VecDeque<u64> {
        VecDeque::with_capacity(capacity)
    }

    #[test]
    fn large_drained_buffers_are_kept_within_the_byte_budget_and_handed_out_first() {
        let mut pool: Pool<u64> = Pool::default();
        let big = 64 * 1024; // 512 KiB of u64 slots each
        for _ in 0..20 {
            let mut q = drained(big);
            pool.give(&mut q, POOL_SLOTS);
            assert_eq!(q.capacity(), 0, "the drained queue gives its buffer up");
            assert!(pool.large_bytes <= POOL_LARGE_BYTES);
        }
        assert_eq!(pool.large.len(), POOL_LARGE_BYTES / (big * 8));
        let mut small = drained(4);
        pool.give(&mut small, POOL_SLOTS);
        assert_eq!(pool.small.len(), 1);

        let mut q = VecDeque::new();
        pool.take(&mut q);
        assert!(q.capacity() >= big, "a large buffer comes first");
        assert_eq!(pool.large_bytes, (pool.large.len()) * big * 8);
        let mut again = VecDeque::with_capacity(1);
        pool.take(&mut again);
        assert_eq!(again.capacity(), 1, "a queue with a buffer keeps its own");
    }
}
