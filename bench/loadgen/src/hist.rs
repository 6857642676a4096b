//! A log-linear latency histogram (HdrHistogram-like): 64 linear sub-buckets per power of two,
//! so every recorded value is known to within 1/64 (< 1.6 %), in constant memory.

const SUB_BITS: u32 = 7; // values below 2^7 are exact
const HALF: u64 = 1 << (SUB_BITS - 1); // 64 sub-buckets per power of two above that
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * HALF as usize + HALF as usize;

pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < (1 << SUB_BITS) {
        return v as usize;
    }
    let log2 = 63 - v.leading_zeros();
    let shift = log2 + 1 - SUB_BITS; // (v >> shift) is in [64, 128)
    (shift as u64 * HALF + (v >> shift)) as usize
}

/// The midpoint of bucket `idx`.
fn value_at(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < (1 << SUB_BITS) {
        return idx;
    }
    let shift = (idx - HALF) / HALF;
    let m = idx - shift * HALF;
    (m << shift) + ((1u64 << shift) - 1) / 2
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1); 0 when empty. Clamped to the exact min/max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_at(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_accurate() {
        let mut prev = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            123_456,
            9_876_543_210,
            u64::MAX,
        ] {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(i >= prev);
            prev = i;
            let back = value_at(i);
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 1.0 / 64.0, "v={v} back={back}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert!(h.quantile(0.0).abs_diff(1000) <= 16);
    }
}
