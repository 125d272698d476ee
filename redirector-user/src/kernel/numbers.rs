//! Numbers of a range handed out one holder at a time (nat edge ports,
//! load slots): in order, freed ones first, each freed once however often
//! it is released.

use std::ops::RangeInclusive;

#[derive(Debug)]
pub struct Numbers {
    range: RangeInclusive<u32>,
    /// Every number below it has been handed out at some point.
    next: u32,
    freed: Vec<u32>,
    /// By number − start, for those below `next`: whether it is in `freed`
    /// (so a release is checked in constant time).
    is_free: Vec<bool>,
}

impl Numbers {
    pub fn new(range: RangeInclusive<u32>) -> Self {
        let next = *range.start();
        Self { range, next, freed: Vec::new(), is_free: Vec::new() }
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
        if let Some(number) = self.freed.pop() {
            let at = self.offset(number);
            self.is_free[at] = false;
            return Some(number);
        }
        if self.range.is_empty() || self.next > *self.range.end() {
            return None;
        }
        let number = self.next;
        self.next += 1;
        self.is_free.push(false);
        Some(number)
    }

    /// Marks `numbers` as held (a previous daemon's, adopted): the next ones
    /// come after the highest, and the free ones below it first.
    pub fn reserve(&mut self, numbers: impl Iterator<Item = u32>) {
        let used: std::collections::HashSet<u32> = numbers.filter(|n| self.range.contains(n)).collect();
        let Some(&highest) = used.iter().max() else { return };
        self.next = self.next.max(highest + 1);
        let below = *self.range.start()..self.next;
        self.freed = below.filter(|n| !used.contains(n)).rev().collect();
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
            self.freed.push(number);
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
        let mut numbers = Numbers::new(0..=2);
        let first = numbers.allocate().unwrap();
        numbers.release(first);
        numbers.release(first);
        assert_eq!(numbers.allocate(), Some(first));
        assert_eq!((numbers.allocate(), numbers.allocate(), numbers.allocate()), (Some(1), Some(2), None));
    }

    #[test]
    fn reserved_numbers_stay_held_until_released() {
        let mut numbers = Numbers::new(10..=13);
        numbers.reserve([12, 10].into_iter());
        assert_eq!((numbers.allocate(), numbers.allocate(), numbers.allocate()), (Some(11), Some(13), None));
        numbers.release(12);
        assert_eq!(numbers.allocate(), Some(12));
    }
}
