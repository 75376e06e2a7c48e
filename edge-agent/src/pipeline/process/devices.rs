//! A bounded table of per-device state with least-recently-seen eviction in O(1).
//!
//! Devices live in a slab of slots linked in recency order (most recent at the head);
//! a hash map finds a device's slot by name without allocating. When a new device
//! arrives and the table is full, the slot of the least recently seen device is handed
//! to it: the caller gets the evicted device's name and still finds its old state in the
//! slot, so it can flush it (an open aggregate window) before resetting it.

use std::collections::HashMap;

const NIL: usize = usize::MAX;

struct Slot<T> {
    name: String,
    prev: usize,
    next: usize,
    state: T,
}

/// What [`DeviceTable::touch`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// The device was known; its slot is now the most recent.
    Known(usize),
    /// A new device got a fresh slot with the initial state.
    Added(usize),
    /// A new device took the slot of the evicted device named here; the slot still
    /// holds the evicted device's state, which the caller must reset.
    Evicted(usize, String),
}

/// Per-device state for at most `capacity` devices.
pub(crate) struct DeviceTable<T> {
    index: HashMap<String, usize>,
    slots: Vec<Slot<T>>,
    head: usize,
    tail: usize,
    capacity: usize,
}

impl<T> DeviceTable<T> {
    /// An empty table for at most `capacity` (at least 1) devices.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    /// Number of devices tracked.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Marks `device` as the most recently seen, adding it (and evicting the least
    /// recently seen device if the table is full).
    pub(crate) fn touch(&mut self, device: &str, init: impl FnOnce() -> T) -> Touch {
        if let Some(&slot) = self.index.get(device) {
            if slot != self.head {
                self.unlink(slot);
                self.push_front(slot);
            }
            return Touch::Known(slot);
        }
        if self.slots.len() < self.capacity {
            let slot = self.slots.len();
            self.slots.push(Slot {
                name: device.to_string(),
                prev: NIL,
                next: NIL,
                state: init(),
            });
            self.index.insert(device.to_string(), slot);
            self.push_front(slot);
            return Touch::Added(slot);
        }
        let slot = self.tail;
        self.unlink(slot);
        self.push_front(slot);
        let old = std::mem::replace(&mut self.slots[slot].name, device.to_string());
        self.index.remove(&old);
        self.index.insert(device.to_string(), slot);
        Touch::Evicted(slot, old)
    }

    /// The slot of `device`, if it is tracked, without marking it as seen.
    pub(crate) fn find(&self, device: &str) -> Option<usize> {
        self.index.get(device).copied()
    }

    /// The name and state in `slot` (a slot returned by [`DeviceTable::touch`]).
    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<(&str, &mut T)> {
        self.slots
            .get_mut(slot)
            .map(|s| (s.name.as_str(), &mut s.state))
    }

    /// Device names from the most to the least recently seen.
    #[cfg(test)]
    pub(crate) fn names_by_recency(&self) -> Vec<&str> {
        let mut names = Vec::with_capacity(self.len());
        let mut at = self.head;
        while at != NIL {
            names.push(self.slots[at].name.as_str());
            at = self.slots[at].next;
        }
        names
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.slots[slot].prev, self.slots[slot].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.slots[slot].prev = NIL;
        self.slots[slot].next = self.head;
        match self.head {
            NIL => self.tail = slot,
            h => self.slots[h].prev = slot,
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn least_recently_seen_device_is_evicted() {
        let mut t = DeviceTable::new(2);
        assert_eq!(t.touch("a", || 1), Touch::Added(0));
        assert_eq!(t.touch("b", || 2), Touch::Added(1));
        assert_eq!(t.touch("a", || 0), Touch::Known(0));
        assert_eq!(t.touch("c", || 3), Touch::Evicted(1, "b".into()));
        assert_eq!(
            t.get_mut(1),
            Some(("c", &mut 2)),
            "old state left for the caller"
        );
        assert_eq!(t.names_by_recency(), ["c", "a"]);
        assert_eq!(t.len(), 2);
    }

    proptest! {
        /// The table agrees with a plain list kept in recency order.
        #[test]
        fn matches_a_naive_lru(capacity in 1usize..6, seq in prop::collection::vec(0u8..10, 0..200)) {
            let mut table = DeviceTable::new(capacity);
            let mut model: Vec<String> = Vec::new(); // most recent first
            for d in seq {
                let name = format!("d{d}");
                let touch = table.touch(&name, || ());
                let expected_evicted = if let Some(pos) = model.iter().position(|n| *n == name) {
                    model.remove(pos);
                    None
                } else if model.len() == capacity {
                    model.pop()
                } else {
                    None
                };
                model.insert(0, name);
                match touch {
                    Touch::Evicted(_, old) => prop_assert_eq!(Some(old), expected_evicted),
                    _ => prop_assert_eq!(None, expected_evicted),
                }
                prop_assert_eq!(table.names_by_recency(), model.iter().map(String::as_str).collect::<Vec<_>>());
                prop_assert_eq!(table.len(), model.len());
            }
        }
    }
}
