//! Start-time fair queueing of the pool's waiting requests over tier
//! classes: tiers share the workers in proportion to their weights,
//! counted in audio seconds, FIFO within a tier, and no tier starves.

use std::collections::{BTreeMap, VecDeque};

/// One tier's waiting requests (with their costs) and its place in virtual
/// time.
struct Class<T> {
    /// Waiting requests with their costs (audio seconds), oldest first.
    queue: VecDeque<(f64, T)>,
    /// The tier's share (at least 1).
    weight: f64,
    /// Virtual start of the head request (meaningful while non-empty).
    start: f64,
    /// Virtual time at which the class's last served request "finished".
    finish: f64,
}

/// Start-time fair queueing over tier classes (Goyal et al., 1996): each
/// class's head request carries a virtual start tag; the smallest tag is
/// served first (ties: the higher tier), and serving a request of `cost`
/// audio seconds moves its class's next tag on by `cost / weight`. A class
/// that was idle starts at the current virtual time, so it gets its share
/// from now on but no burst for the time it did not ask. Within a class,
/// requests keep their order.
pub(crate) struct FairQueue<T> {
    /// The classes by tier rank.
    classes: BTreeMap<u32, Class<T>>,
    /// The start tag of the request served last.
    vtime: f64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            classes: BTreeMap::new(),
            vtime: 0.0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` of `cost` (audio seconds) in the class `priority`.
    pub(super) fn push(&mut self, priority: u32, weight: u32, cost: f64, item: T) {
        let vtime = self.vtime;
        let class = self.classes.entry(priority).or_insert(Class {
            queue: VecDeque::new(),
            weight: 1.0,
            start: vtime,
            finish: vtime,
        });
        // The latest weight of the tier applies (a changed tier table).
        class.weight = f64::from(weight.max(1));
        if class.queue.is_empty() {
            class.start = vtime.max(class.finish);
        }
        class.queue.push_back((cost.max(0.0), item));
    }

    /// The next request in fair order.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.pop_where(|_| true)
    }

    /// Takes the next request `fits` accepts: the class with the smallest
    /// start tag among those holding one (ties: the higher tier), and in
    /// it the oldest such request. With every request fitting, that is
    /// the class's head: plain start-time fair queueing. (So a request that
    /// only some workers could run would wait for one of those without
    /// holding up the others.)
    pub(super) fn pop_where(&mut self, mut fits: impl FnMut(&T) -> bool) -> Option<T> {
        let (_, class, at) = self
            .classes
            .iter_mut()
            .rev()
            .filter_map(|(rank, c)| {
                let at = c.queue.iter().position(|(_, w)| fits(w))?;
                Some((rank, c, at))
            })
            // `rev` puts the higher tier first, so `min_by` keeps it on ties.
            .min_by(|(_, a, _), (_, b, _)| a.start.total_cmp(&b.start))?;
        let (cost, item) = class.queue.remove(at)?;
        self.vtime = class.start;
        class.finish = class.start + cost / class.weight;
        class.start = class.finish;
        Some(item)
    }

    /// Takes out the requests `drop` says yes to, and answers them.
    pub(super) fn remove_if(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for class in self.classes.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = class.queue.drain(..).partition(|(_, w)| drop(w));
            class.queue = kept.into();
            removed.extend(gone.into_iter().map(|(_, w)| w));
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.classes.values().map(|c| c.queue.len()).sum()
    }

    /// Requests waiting in the class `priority`.
    pub(super) fn waiting(&self, priority: u32) -> usize {
        self.classes.get(&priority).map_or(0, |c| c.queue.len())
    }
}

#[cfg(test)]
mod tests {
    use super::FairQueue;

    /// Serves `n` requests from a queue where every class always has work
    /// waiting (each served request is replaced by another of the same
    /// class), and counts what each class got.
    fn served(classes: &[(u32, u32, f64)], n: usize) -> Vec<usize> {
        let mut q = FairQueue::default();
        for &(priority, weight, cost) in classes {
            for _ in 0..3 {
                q.push(priority, weight, cost, priority);
            }
        }
        let mut got = vec![0; classes.len()];
        for _ in 0..n {
            let p = q.pop().unwrap();
            let i = classes.iter().position(|c| c.0 == p).unwrap();
            got[i] += 1;
            q.push(p, classes[i].1, classes[i].2, p);
        }
        got
    }

    #[test]
    fn tiers_share_in_proportion_to_their_weights_and_none_starves() {
        // basic 1, premium 2, enterprise 4, equal job lengths.
        let got = served(&[(0, 1, 60.0), (1, 2, 60.0), (2, 4, 60.0)], 700);
        assert_eq!(got, vec![100, 200, 400]);
        // A steady stream of enterprise work still lets basic through, one
        // request in five with the default weights 1 and 4.
        let got = served(&[(0, 1, 60.0), (2, 4, 60.0)], 500);
        assert_eq!(got, vec![100, 400]);
    }

    #[test]
    fn shares_are_counted_in_audio_seconds() {
        // Basic sends 10-minute files, enterprise 1-minute ones: by audio,
        // enterprise gets 4 times basic's, so 40 of its jobs per basic job.
        let got = served(&[(0, 1, 600.0), (2, 4, 60.0)], 410);
        assert_eq!(got, vec![10, 400]);
    }

    #[test]
    fn order_is_kept_within_a_tier_and_ties_go_to_the_higher_tier() {
        let mut q = FairQueue::default();
        for i in 0..3 {
            q.push(0, 1, 10.0, ("basic", i));
        }
        q.push(1, 1, 10.0, ("premium", 0));
        // Both classes start at virtual time 0: the higher tier first.
        assert_eq!(q.pop(), Some(("premium", 0)));
        assert_eq!(q.pop(), Some(("basic", 0)));
        assert_eq!(q.pop(), Some(("basic", 1)));
        assert_eq!(q.pop(), Some(("basic", 2)));
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_tier_that_was_idle_gets_its_share_not_a_burst() {
        let mut q = FairQueue::default();
        // Basic alone for 100 requests.
        for _ in 0..100 {
            q.push(0, 1, 60.0, "basic");
            assert_eq!(q.pop(), Some("basic"));
        }
        // Enterprise arrives with 40 requests while basic keeps 10 waiting:
        // enterprise is served from now on at 4 to 1, without making up
        // for the 100 it did not ask for (which would hold basic back for
        // all 40 of its requests).
        for _ in 0..40 {
            q.push(2, 4, 60.0, "enterprise");
        }
        for _ in 0..10 {
            q.push(0, 1, 60.0, "basic");
        }
        let order: Vec<_> = (0..25).map(|_| q.pop().unwrap()).collect();
        let basic = order.iter().filter(|w| **w == "basic").count();
        assert!((4..=6).contains(&basic), "{order:?}");
        let first_basic = order.iter().position(|w| *w == "basic").unwrap();
        assert!(first_basic <= 5, "{order:?}");
    }

    #[test]
    fn a_request_no_idle_worker_can_run_lets_the_next_one_through() {
        let mut q = FairQueue::default();
        q.push(2, 4, 10.0, ("enterprise", "local only"));
        q.push(2, 4, 10.0, ("enterprise", "anywhere"));
        q.push(0, 1, 10.0, ("basic", "anywhere"));
        let remote = |w: &(&str, &str)| w.1 == "anywhere";
        assert_eq!(q.pop_where(remote), Some(("enterprise", "anywhere")));
        assert_eq!(q.pop_where(remote), Some(("basic", "anywhere")));
        assert_eq!(q.pop_where(remote), None);
        assert_eq!(q.pop(), Some(("enterprise", "local only")));
    }

    #[test]
    fn cancelled_requests_leave_the_queue() {
        let mut q = FairQueue::default();
        for i in 0..4 {
            q.push(i % 2, 1, 1.0, i);
        }
        let removed = q.remove_if(|i| *i == 1 || *i == 2);
        assert_eq!(removed.len(), 2);
        assert_eq!(q.len(), 2);
        let mut rest = vec![q.pop().unwrap(), q.pop().unwrap()];
        rest.sort();
        assert_eq!(rest, vec![0, 3]);
        assert_eq!(q.pop(), None);
    }
}
