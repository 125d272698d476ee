//! Numbers of a range handed out one holder at a time (nat edge ports,
//! load slots): in order, freed ones first or last (`Reuse`), each freed
//! once however often it is released.

use std::{collections::VecDeque, ops::RangeInclusive};

/// When a freed number is handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Before any number never handed out, the last freed first (load
    /// slots: the range stays dense).
    Soonest,
    /// Only once every number was handed out, the first freed first (nat
    /// edge ports: a home may still hold a binding of a freed port, which
    /// must reach its next holder as late as the range allows).
    Latest,
}

#[derive(Debug)]
pub struct Numbers {
    range: RangeInclusive<u32>,
    reuse: Reuse,
    /// Every number below it has been handed out at some point.
    next: u32,
    freed: VecDeque<u32>,
    /// By number − start, for those below `next`: whether it is in `freed`
    /// (so a release is checked in constant time).
    is_free: Vec<bool>,
}

impl Numbers {
    pub fn new(range: RangeInclusive<u32>, reuse: Reuse) -> Self {
        let next = *range.start();
        Self { range, reuse, next, freed: VecDeque::new(), is_free: Vec::new() }
    }

    /// How many the range holds.
    pub fn size(&self) -> usize {
        (*self.range.end() as usize + 1).saturating_sub(*self.range.start() as usize)
    }

    pub fn start(&self) -> u32 {
        *self.range.start()
    }

    pub fn end(&self) -> u32 {
        *self.range.end()
    }

    /// A number nobody holds, or `None` when all are held.
    pub fn allocate(&mut self) -> Option<u32> {
        match self.reuse {
            Reuse::Soonest => self.reuse_freed().or_else(|| self.fresh()),
            Reuse::Latest => self.fresh().or_else(|| self.reuse_freed()),
        }
    }

    fn reuse_freed(&mut self) -> Option<u32> {
        let number = match self.reuse {
            Reuse::Soonest => self.freed.pop_back(),
            Reuse::Latest => self.freed.pop_front(),
        }?;
        let at = self.offset(number);
        self.is_free[at] = false;
        Some(number)
    }

    /// A number never handed out.
    fn fresh(&mut self) -> Option<u32> {
        if self.range.is_empty() || self.next > *self.range.end() {
            return None;
        }
        let number = self.next;
        self.next += 1;
        self.is_free.push(false);
        Some(number)
    }

    /// Marks `numbers` as held (a previous daemon's, adopted), besides
    /// those held already: the free ones below the highest count as freed,
    /// lowest first.
    pub fn reserve(&mut self, numbers: impl Iterator<Item = u32>) {
        let mut used: std::collections::HashSet<u32> = numbers.filter(|n| self.range.contains(n)).collect();
        let Some(&highest) = used.iter().max() else { return };
        used.extend((*self.range.start()..self.next).filter(|&n| !self.is_free[self.offset(n)]));
        self.next = self.next.max(highest + 1);
        let below = *self.range.start()..self.next;
        let gaps = below.filter(|n| !used.contains(n));
        self.freed = match self.reuse {
            Reuse::Soonest => gaps.rev().collect(),
            Reuse::Latest => gaps.collect(),
        };
        self.is_free = vec![false; self.offset(self.next)];
        for &number in &self.freed {
            let at = self.offset(number);
            self.is_free[at] = true;
        }
    }

    pub fn release(&mut self, number: u32) {
        if !self.range.contains(&number) || number >= self.next {
            return;
        }
        let at = self.offset(number);
        if !self.is_free[at] {
            self.is_free[at] = true;
            self.freed.push_back(number);
        }
    }

    fn offset(&self, number: u32) -> usize {
        (number - *self.range.start()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_released_twice_is_handed_out_once() {
        let mut numbers = Numbers::new(0..=2, Reuse::Soonest);
        let first = numbers.allocate().unwrap();
        numbers.release(first);
        numbers.release(first);
        assert_eq!(numbers.allocate(), Some(first));
        assert_eq!((numbers.allocate(), numbers.allocate(), numbers.allocate()), (Some(1), Some(2), None));
    }

    #[test]
    fn reserved_numbers_stay_held_until_released() {
        let mut numbers = Numbers::new(10..=13, Reuse::Soonest);
        numbers.reserve([12, 10].into_iter());
        assert_eq!((numbers.allocate(), numbers.allocate(), numbers.allocate()), (Some(11), Some(13), None));
        numbers.release(12);
        assert_eq!(numbers.allocate(), Some(12));
    }

    #[test]
    fn numbers_reserved_in_two_calls_all_stay_held() {
        let mut numbers = Numbers::new(0..=5, Reuse::Latest);
        numbers.reserve([1, 3].into_iter());
        numbers.reserve([4].into_iter());
        let handed: Vec<Option<u32>> = (0..4).map(|_| numbers.allocate()).collect();
        assert_eq!(handed, [Some(5), Some(0), Some(2), None], "1, 3 and 4 held");
    }

    #[test]
    fn reused_latest_hands_out_every_number_before_the_first_freed() {
        let mut numbers = Numbers::new(0..=3, Reuse::Latest);
        let (a, b) = (numbers.allocate().unwrap(), numbers.allocate().unwrap());
        numbers.release(b);
        numbers.release(a);
        assert_eq!((numbers.allocate(), numbers.allocate()), (Some(2), Some(3)), "never handed out, first");
        assert_eq!((numbers.allocate(), numbers.allocate(), numbers.allocate()), (Some(b), Some(a), None));
        let mut adopted = Numbers::new(10..=13, Reuse::Latest);
        adopted.reserve([12].into_iter());
        assert_eq!(adopted.allocate(), Some(13), "past the highest held, first");
        assert_eq!((adopted.allocate(), adopted.allocate(), adopted.allocate()), (Some(10), Some(11), None));
    }
}
