//! The open binary connections of one shard, by the socket each reads from: so shutdown can
//! end their reads, and the idle sweep can close the idle ones ([`super::idle`]).
//!
//! Both end a connection the same way: `shutdown(SHUT_RD)` on its socket, so its reader sees
//! end of stream, finishes what is pending, flushes and closes. A connection leaves the
//! registry as soon as it is served (`remove`, on its shard thread, before anything else
//! runs there), so a descriptor number reused by a later socket is never shut by mistake.

use super::idle::Activity;
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;

/// Open connections of one shard.
#[derive(Default)]
pub struct Connections {
    open: RefCell<hashbrown::HashMap<u64, Open>>,
    next_id: Cell<u64>,
}

struct Open {
    fd: RawFd,
    activity: Rc<Activity>,
}

impl Connections {
    /// Registers a connection accepted at `now_ns` on socket `fd`: its id (for
    /// [`Connections::remove`]) and the activity its tasks keep.
    pub fn add(&self, fd: RawFd, now_ns: u64) -> (u64, Rc<Activity>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let activity = Rc::new(Activity::new(now_ns));
        self.open.borrow_mut().insert(
            id,
            Open {
                fd,
                activity: activity.clone(),
            },
        );
        (id, activity)
    }

    /// The connection is served and its socket closed.
    pub fn remove(&self, id: u64) {
        self.open.borrow_mut().remove(&id);
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the read side of every connection: readers see EOF, finish what is in flight,
    /// flush and close.
    pub fn shutdown_reads(&self) {
        for open in self.open.borrow().values() {
            shutdown_read(open.fd);
        }
    }

    /// Ends the reads of every connection idle for `idle_ns` at `now_ns`
    /// ([`Activity::idle_at`]); how many.
    pub fn close_idle(&self, now_ns: u64, idle_ns: u64) -> usize {
        let mut closed = 0;
        for open in self.open.borrow().values() {
            if open.activity.idle_at(now_ns, idle_ns) {
                shutdown_read(open.fd);
                closed += 1;
            }
        }
        closed
    }
}

fn shutdown_read(fd: RawFd) {
    // SAFETY: fd belongs to a live connection (removed from the registry when it closes).
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}
