//! Connection ids with generations, and the slab that hands them out.

use core::fmt;
use core::marker::PhantomData;

/// A connection, as the adapter knows it. The generation makes a reused slot
/// distinct from the connection that held it before.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// A number unique among live connections, for logs and adapter tables.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A key into a [`Slab`] of `T`s: index plus generation. The type parameter keeps
/// a connection's key from being used for a session and the other way round.
pub(crate) struct Key<T> {
    pub(crate) index: u32,
    pub(crate) generation: u32,
    kind: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        Key {
            index,
            generation,
            kind: PhantomData,
        }
    }
}

// By hand: derived impls would ask the same of `T`, which a key does not hold.
impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Key<T> {}
impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.index, self.generation) == (other.index, other.generation)
    }
}
impl<T> Eq for Key<T> {}
impl<T> core::hash::Hash for Key<T> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        (self.index, self.generation).hash(state);
    }
}
impl<T> PartialOrd for Key<T> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Key<T> {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.index, self.generation).cmp(&(other.index, other.generation))
    }
}
impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// A connection's key in the broker's slab of connections.
pub(crate) type ConnKey = Key<crate::session::Conn>;
/// A session's key in the broker's slab of sessions.
pub(crate) type SessionKey = Key<crate::session::Session>;

enum Slot<T> {
    Full { generation: u32, value: T },
    Free { generation: u32, next: u32 },
}

/// A slab with generations: O(1) insert, remove and lookup; stale keys miss.
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: u32,
    len: usize,
}

const NONE: u32 = u32::MAX;

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: NONE,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, value: T) -> Key<T> {
        self.len += 1;
        if self.free != NONE {
            let index = self.free;
            let slot = &mut self.slots[index as usize];
            let Slot::Free { generation, next } = *slot else {
                unreachable!("the free list only links free slots")
            };
            self.free = next;
            let generation = generation.wrapping_add(1);
            *slot = Slot::Full { generation, value };
            return Key::new(index, generation);
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot::Full {
            generation: 0,
            value,
        });
        Key::new(index, 0)
    }

    pub(crate) fn get(&self, key: Key<T>) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some(Slot::Full { generation, value }) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: Key<T>) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some(Slot::Full { generation, value }) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: Key<T>) -> Option<T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        match slot {
            Slot::Full { generation, .. } if *generation == key.generation => {
                let generation = *generation;
                let old = core::mem::replace(
                    slot,
                    Slot::Free {
                        generation,
                        next: self.free,
                    },
                );
                self.free = key.index;
                self.len -= 1;
                match old {
                    Slot::Full { value, .. } => Some(value),
                    Slot::Free { .. } => None,
                }
            }
            _ => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key<T>, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Full { generation, value } => Some((Key::new(i as u32, *generation), value)),
            Slot::Free { .. } => None,
        })
    }
}
