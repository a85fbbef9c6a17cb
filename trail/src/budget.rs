//! A byte budget shared by threads: what keeps the scan's memory bounded whatever the files hold.
//!
//! A thread takes a lease for the bytes it is about to hold and waits while the budget is spent;
//! the lease gives them back when dropped. A request larger than the whole budget is granted when
//! nothing else is held, so that one big (but allowed) file still goes through, alone.
//!
//! No thread may wait on a budget while holding a lease of the same budget: two such threads could
//! wait for each other forever. The scan keeps to that by giving each kind of buffer its own budget
//! (fetched files, large decompression buffers, copied matches), each taken in one piece.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub(crate) struct Budget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held against a budget until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    amount: u64,
}

impl Budget {
    pub(crate) fn new(total: u64) -> Arc<Budget> {
        Arc::new(Budget { total, used: Mutex::new(0), freed: Condvar::new() })
    }

    // A panic elsewhere while the lock was held leaves a plain number behind: still usable.
    fn lock(&self) -> MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait until `amount` more bytes fit (or nothing else is held), then hold them.
    pub(crate) fn take(self: &Arc<Self>, amount: u64) -> Lease {
        let mut used = self.lock();
        while *used > 0 && used.saturating_add(amount) > self.total {
            used = self.freed.wait(used).unwrap_or_else(PoisonError::into_inner);
        }
        *used = used.saturating_add(amount);
        Lease { budget: self.clone(), amount }
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        *self.lock()
    }
}

impl Lease {
    /// Hold `amount` bytes from now on, without waiting: for a download whose real size differs
    /// from the listed one. Waiting here could deadlock (this thread already holds a lease).
    pub(crate) fn set(&mut self, amount: u64) {
        let mut used = self.budget.lock();
        *used = used.saturating_sub(self.amount).saturating_add(amount);
        if amount < self.amount {
            self.budget.freed.notify_all();
        }
        self.amount = amount;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut used = self.budget.lock();
        *used = used.saturating_sub(self.amount);
        drop(used);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lease_waits_until_the_bytes_fit_and_gives_them_back() {
        let budget = Budget::new(100);
        let a = budget.take(60);
        let took = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _b = budget.take(50);
                took.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!took.load(Ordering::SeqCst), "60 + 50 is over 100: the second lease must wait");
            drop(a);
        });
        assert!(took.load(Ordering::SeqCst));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_request_over_the_whole_budget_goes_through_alone() {
        let budget = Budget::new(10);
        let big = budget.take(25);
        assert_eq!(budget.used(), 25);
        let took = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _small = budget.take(1);
                took.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!took.load(Ordering::SeqCst), "nothing else while the big one is held");
            drop(big);
        });
        assert!(took.load(Ordering::SeqCst));
    }

    #[test]
    fn a_lease_can_be_resized_without_waiting() {
        let budget = Budget::new(10);
        let mut a = budget.take(4);
        a.set(30);
        assert_eq!(budget.used(), 30);
        a.set(2);
        assert_eq!(budget.used(), 2);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
