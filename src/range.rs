//! Byte ranges: validation of what callers pass, and the set of ranges one owner holds.

use std::collections::BTreeMap;

use crate::{Error, Mode, Result};

/// Offsets at or above 2^62 are reserved for the library; "to the end of the file"
/// means up to here.
pub const RESERVED: u64 = 1 << 62;

/// A half-open byte range `[start, end)` with `end <= RESERVED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// The whole file: `(0, 0)` in the API.
    pub const WHOLE: ByteRange = ByteRange {
        start: 0,
        end: RESERVED,
    };

    /// Validates an API range: `len == 0` means to the end; nothing may reach the
    /// reserved offsets. Fails with `EINVAL`.
    pub fn from_api(start: u64, len: u64) -> Result<Self> {
        let end = if len == 0 {
            Some(RESERVED)
        } else {
            start.checked_add(len)
        };
        match end {
            Some(end) if start < RESERVED && end <= RESERVED => Ok(ByteRange { start, end }),
            _ => Err(Error::new(
                libc::EINVAL,
                format!(
                    "range start {start} length {len} reaches offset 2^62 or beyond, \
                     which is reserved"
                ),
            )),
        }
    }

    /// The API length: 0 when the range runs to the end.
    pub fn api_len(&self) -> u64 {
        if self.end >= RESERVED {
            0
        } else {
            self.end - self.start
        }
    }

    /// True when the two ranges share a byte.
    pub fn overlaps(&self, other: &ByteRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// True for `(0, 0)`.
    pub fn is_whole(&self) -> bool {
        *self == Self::WHOLE
    }
}

/// The ranges one owner holds, each with its mode: disjoint, and adjacent ranges of
/// the same mode merged. The common case, one segment (a whole-file lock, one
/// record), is kept inline; more are kept in a map keyed by start (O(log n) lookups).
/// Invariant: `one` is used exactly when there is one segment, `many` when there are
/// two or more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeMap {
    /// The only segment: (start, end, mode).
    one: Option<(u64, u64, Mode)>,
    /// start -> (end, mode), when there are two or more segments.
    many: BTreeMap<u64, (u64, Mode)>,
}

impl RangeMap {
    /// No ranges.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.one.is_none() && self.many.is_empty()
    }

    /// Number of disjoint segments.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.many.len()
    }

    /// Segments overlapping `r`, whole (not clipped), in order.
    pub fn touching(&self, r: ByteRange) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        let single = self
            .one
            .map(|(s, e, m)| (ByteRange { start: s, end: e }, m));
        let first = self
            .many
            .range(..=r.start)
            .next_back()
            .filter(|(_, (end, _))| *end > r.start)
            .map(|(s, _)| *s)
            .unwrap_or(r.start);
        let tree = self
            .many
            .range(first..r.end.max(first))
            .map(|(&s, &(e, m))| (ByteRange { start: s, end: e }, m));
        single
            .into_iter()
            .chain(tree)
            .filter(move |(seg, _)| seg.overlaps(&r))
    }

    /// Segments overlapping `r`, clipped to `r`, in order.
    pub fn overlapping(&self, r: ByteRange) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        self.touching(r).map(move |(seg, m)| {
            (
                ByteRange {
                    start: seg.start.max(r.start),
                    end: seg.end.min(r.end),
                },
                m,
            )
        })
    }

    /// All segments in order.
    pub fn iter(&self) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        let single = self
            .one
            .map(|(s, e, m)| (ByteRange { start: s, end: e }, m));
        single.into_iter().chain(
            self.many
                .iter()
                .map(|(&s, &(e, m))| (ByteRange { start: s, end: e }, m)),
        )
    }

    /// Sets every byte of `r` to `mode` (replacing whatever was held there).
    pub fn set(&mut self, r: ByteRange, mode: Mode) {
        if self.many.is_empty() {
            match self.one {
                None => {
                    self.one = Some((r.start, r.end, mode));
                    return;
                }
                // Covered, or merged with a touching segment of the same mode.
                Some((s, e, m))
                    if (r.start <= s && r.end >= e)
                        || (m == mode && s <= r.end && r.start <= e) =>
                {
                    self.one = Some((s.min(r.start), e.max(r.end), mode));
                    return;
                }
                Some((s, e, m)) => {
                    self.one = None;
                    self.many.insert(s, (e, m));
                }
            }
        }
        self.clear_tree(r);
        let mut start = r.start;
        let mut end = r.end;
        if let Some((&s, &(e, m))) = self.many.range(..start).next_back() {
            if e == start && m == mode {
                self.many.remove(&s);
                start = s;
            }
        }
        if let Some(&(e, m)) = self.many.get(&end) {
            if m == mode {
                self.many.remove(&end);
                end = e;
            }
        }
        self.many.insert(start, (end, mode));
        self.normalize();
    }

    /// Releases every byte of `r`.
    pub fn clear(&mut self, r: ByteRange) {
        if let Some((s, e, m)) = self.one {
            if r.end <= s || e <= r.start {
                return;
            }
            self.one = None;
            let left = (s < r.start).then_some((s, r.start));
            let right = (e > r.end).then_some((r.end, e));
            match (left, right) {
                (Some((ls, le)), Some((rs, re))) => {
                    self.many.insert(ls, (le, m));
                    self.many.insert(rs, (re, m));
                }
                (Some((a, b)), None) | (None, Some((a, b))) => self.one = Some((a, b, m)),
                (None, None) => {}
            }
            return;
        }
        self.clear_tree(r);
        self.normalize();
    }

    fn clear_tree(&mut self, r: ByteRange) {
        if let Some((&s, &(e, m))) = self.many.range(..r.start).next_back() {
            if e > r.start {
                self.many.insert(s, (r.start, m));
                if e > r.end {
                    self.many.insert(r.end, (e, m));
                    return;
                }
            }
        }
        while let Some((&s, &(e, m))) = self.many.range(r.start..r.end).next() {
            self.many.remove(&s);
            if e > r.end {
                self.many.insert(r.end, (e, m));
            }
        }
    }

    /// Moves a lone segment of the tree inline.
    fn normalize(&mut self) {
        if self.many.len() == 1 {
            if let Some((s, (e, m))) = self.many.pop_first() {
                self.one = Some((s, e, m));
            }
        }
    }

    /// The strongest mode held anywhere in `r`, if any.
    #[cfg(test)]
    pub fn strongest_in(&self, r: ByteRange) -> Option<Mode> {
        self.overlapping(r).map(|(_, m)| m).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn from_api_rejects_reserved_offsets() {
        assert!(ByteRange::from_api(RESERVED, 0).is_err());
        assert!(ByteRange::from_api(RESERVED - 1, 2).is_err());
        assert!(ByteRange::from_api(u64::MAX, 1).is_err());
        assert_eq!(ByteRange::from_api(0, 0).unwrap(), ByteRange::WHOLE);
        assert_eq!(
            ByteRange::from_api(RESERVED - 1, 1).unwrap(),
            r(RESERVED - 1, RESERVED)
        );
    }

    #[test]
    fn set_merges_neighbours_of_the_same_mode() {
        let mut m = RangeMap::new();
        m.set(r(0, 10), Mode::Shared);
        m.set(r(10, 20), Mode::Shared);
        assert_eq!(m.len(), 1);
        m.set(r(5, 15), Mode::Exclusive);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![
                (r(0, 5), Mode::Shared),
                (r(5, 15), Mode::Exclusive),
                (r(15, 20), Mode::Shared)
            ]
        );
        m.clear(r(0, 20));
        assert!(m.is_empty());
    }

    #[test]
    fn clear_splits_a_segment() {
        let mut m = RangeMap::new();
        m.set(r(0, 100), Mode::Exclusive);
        m.clear(r(40, 60));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(r(0, 40), Mode::Exclusive), (r(60, 100), Mode::Exclusive)]
        );
        assert_eq!(m.overlapping(r(30, 70)).count(), 2);
        assert_eq!(m.strongest_in(r(40, 60)), None);
    }

    // RangeMap against a per-byte model.

    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Shared), Just(Mode::Exclusive)]
    }

    const MAP_SPAN: u64 = 128;

    #[derive(Clone, Debug)]
    enum MapOp {
        Set(u64, u64, Mode),
        Clear(u64, u64),
    }

    fn map_range() -> impl Strategy<Value = (u64, u64)> {
        (0..MAP_SPAN).prop_flat_map(|s| (Just(s), s + 1..=MAP_SPAN))
    }

    fn map_op() -> impl Strategy<Value = MapOp> {
        prop_oneof![
            3 => (map_range(), mode()).prop_map(|((s, e), m)| MapOp::Set(s, e, m)),
            2 => map_range().prop_map(|(s, e)| MapOp::Clear(s, e)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// After every set or clear, the segments are disjoint, sorted, merged where
        /// adjacent with equal modes, and say per byte what the model says; the lookups
        /// agree with them.
        #[test]
        fn range_map_matches_a_per_byte_model(
            ops in prop::collection::vec(map_op(), 1..40),
            query in map_range(),
        ) {
            let mut map = RangeMap::new();
            let mut model = [None::<Mode>; MAP_SPAN as usize];
            for op in &ops {
                match *op {
                    MapOp::Set(s, e, m) => {
                        map.set(r(s, e), m);
                        model[s as usize..e as usize].fill(Some(m));
                    }
                    MapOp::Clear(s, e) => {
                        map.clear(r(s, e));
                        model[s as usize..e as usize].fill(None);
                    }
                }
                let segs: Vec<(ByteRange, Mode)> = map.iter().collect();
                prop_assert_eq!(map.len(), segs.len());
                prop_assert_eq!(map.is_empty(), segs.is_empty());
                let mut bytes = [None::<Mode>; MAP_SPAN as usize];
                for (seg, m) in &segs {
                    prop_assert!(seg.start < seg.end, "empty segment {:?} after {:?}", seg, op);
                    prop_assert!(seg.end <= MAP_SPAN, "segment {:?} beyond the bytes set", seg);
                    for b in &mut bytes[seg.start as usize..seg.end as usize] {
                        *b = Some(*m);
                    }
                }
                for w in segs.windows(2) {
                    let ((a, ma), (b, mb)) = (w[0], w[1]);
                    prop_assert!(a.end <= b.start, "overlapping or unsorted {:?} {:?}", a, b);
                    prop_assert!(
                        !(a.end == b.start && ma == mb),
                        "adjacent segments of one mode not merged: {:?} {:?} after {:?}", a, b, op
                    );
                }
                prop_assert_eq!(&bytes[..], &model[..], "after {:?}: {:?}", op, segs);
            }
            // Lookups on a query range, against the verified segments and the model.
            let q = r(query.0, query.1);
            let segs: Vec<(ByteRange, Mode)> = map.iter().collect();
            let touching: Vec<_> = segs.iter().copied().filter(|(s, _)| s.overlaps(&q)).collect();
            prop_assert_eq!(map.touching(q).collect::<Vec<_>>(), touching.clone());
            let clipped: Vec<_> = touching
                .iter()
                .map(|&(s, m)| (r(s.start.max(q.start), s.end.min(q.end)), m))
                .collect();
            prop_assert_eq!(map.overlapping(q).collect::<Vec<_>>(), clipped);
            let strongest = model[q.start as usize..q.end as usize].iter().copied().max().flatten();
            prop_assert_eq!(map.strongest_in(q), strongest);
        }
    }
}
