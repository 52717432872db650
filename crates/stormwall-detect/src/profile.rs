//! A key's usual requests, tokens and spend per hour of the week.
//!
//! Every key that has closed an hour with traffic learns one, so its size is paid once per
//! tracked key (up to `[detect] max_keys`). Most keys are active in a handful of the week's
//! 168 hours: those keep only the hours they used, sorted, and switch to a full table once
//! they have used enough hours that the table is the smaller of the two. Reads give exactly
//! the values (and, summed in hour order, exactly the sums) a full table would.

/// Hours in a week.
pub const HOURS_OF_WEEK: usize = 168;

/// Hours a sparse profile keeps before it becomes a full table (64 × 16 bytes is half the
/// table's 2,016).
const MAX_SPARSE: usize = 64;

/// What a profile sums per hour of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Requests.
    Requests = 0,
    /// Tokens.
    Tokens = 1,
    /// US dollars.
    Cost = 2,
}

/// One hour's sums: requests, tokens, dollars (indexed by [`Measure`]).
pub type HourSums = [f32; 3];

/// Sums per hour of the week, summed over the weeks seen.
#[derive(Debug, Clone, PartialEq)]
pub enum WeekProfile {
    /// The hours used so far, sorted by hour of the week.
    Sparse(Vec<(u8, HourSums)>),
    /// Every hour of the week.
    Full(Box<[HourSums; HOURS_OF_WEEK]>),
}

impl Default for WeekProfile {
    fn default() -> Self {
        Self::Sparse(Vec::new())
    }
}

impl WeekProfile {
    /// Adds one hour's sums at hour of the week `how` (ignored when out of range).
    pub fn add(&mut self, how: usize, sums: HourSums) {
        let Ok(slot) = u8::try_from(how) else { return };
        if how >= HOURS_OF_WEEK {
            return;
        }
        match self {
            Self::Full(table) => add_into(&mut table[how], sums),
            Self::Sparse(hours) => match hours.binary_search_by_key(&slot, |h| h.0) {
                Ok(i) => add_into(&mut hours[i].1, sums),
                Err(i) if hours.len() < MAX_SPARSE => hours.insert(i, (slot, sums)),
                Err(_) => {
                    let mut table = Box::new([[0.0; 3]; HOURS_OF_WEEK]);
                    for &(h, s) in hours.iter() {
                        table[usize::from(h)] = s;
                    }
                    add_into(&mut table[how], sums);
                    *self = Self::Full(table);
                }
            },
        }
    }

    /// The sum of `measure` at hour of the week `how` (0 for an hour never used).
    pub fn get(&self, how: usize, measure: Measure) -> f32 {
        let m = measure as usize;
        match self {
            Self::Full(table) => table.get(how).map_or(0.0, |s| s[m]),
            Self::Sparse(hours) => u8::try_from(how)
                .ok()
                .and_then(|slot| hours.binary_search_by_key(&slot, |h| h.0).ok())
                .map_or(0.0, |i| hours[i].1[m]),
        }
    }

    /// The sum of `measure` over the whole week, added in hour order.
    pub fn total(&self, measure: Measure) -> f32 {
        let m = measure as usize;
        match self {
            Self::Full(table) => table.iter().map(|s| s[m]).sum(),
            Self::Sparse(hours) => hours.iter().map(|h| h.1[m]).sum(),
        }
    }

    /// Heap bytes held (for memory accounting and tests).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Full(_) => std::mem::size_of::<[HourSums; HOURS_OF_WEEK]>(),
            Self::Sparse(hours) => hours.capacity() * std::mem::size_of::<(u8, HourSums)>(),
        }
    }
}

fn add_into(into: &mut HourSums, sums: HourSums) {
    for (a, b) in into.iter_mut().zip(sums) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sparse form must read exactly like a full table, before and after it turns into
    /// one, or learned baselines would change detection results.
    #[test]
    fn reads_match_a_full_table_before_and_after_the_switch() {
        let mut profile = WeekProfile::default();
        let mut table = [[0.0f32; 3]; HOURS_OF_WEEK];
        // A deterministic walk over hours, revisiting some, long enough to switch.
        for i in 0..400usize {
            let how = (i * 37) % HOURS_OF_WEEK;
            let sums = [1.0 + i as f32, 10.5 * i as f32, 0.001 * i as f32];
            profile.add(how, sums);
            add_into(&mut table[how], sums);
            if i % 7 == 0 {
                for (h, row) in table.iter().enumerate() {
                    assert_eq!(profile.get(h, Measure::Requests), row[0]);
                    assert_eq!(profile.get(h, Measure::Tokens), row[1]);
                    assert_eq!(profile.get(h, Measure::Cost), row[2]);
                }
                let full: f32 = table.iter().map(|r| r[1]).sum();
                assert_eq!(profile.total(Measure::Tokens), full);
            }
        }
        assert!(matches!(profile, WeekProfile::Full(_)));
    }

    #[test]
    fn a_key_active_in_one_hour_holds_a_few_bytes_and_out_of_range_is_ignored() {
        let mut profile = WeekProfile::default();
        profile.add(5, [2.0, 300.0, 0.25]);
        profile.add(HOURS_OF_WEEK, [1.0; 3]);
        profile.add(usize::MAX, [1.0; 3]);
        assert_eq!(profile.get(5, Measure::Requests), 2.0);
        assert_eq!(profile.get(HOURS_OF_WEEK, Measure::Requests), 0.0);
        assert_eq!(profile.total(Measure::Requests), 2.0);
        assert!(profile.heap_bytes() <= 64, "{}", profile.heap_bytes());
        assert_eq!(std::mem::size_of::<WeekProfile>(), 24);
    }
}
