//! Timing for the workspace's benchmarks (`*/benches`): the median of a
//! series of timings, the one summary every benchmark prints.

use std::time::{Duration, Instant};

/// The median of `samples` (the upper one of an even count); zero for no
/// samples.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .copied()
        .unwrap_or(Duration::ZERO)
}

/// The median time of one call of `f`, over `samples` samples of `batch`
/// calls each (each sample is its batch's mean), after a warm-up of
/// `batch` calls (at least three).
pub fn median_of(samples: usize, batch: u32, mut f: impl FnMut()) -> Duration {
    let batch = batch.max(1);
    for _ in 0..batch.max(3) {
        f();
    }
    median(
        (0..samples)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..batch {
                    f();
                }
                start.elapsed() / batch
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_sample() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(vec![ms(4), ms(1), ms(3), ms(2)]), ms(3));
        assert_eq!(median(Vec::new()), Duration::ZERO);
    }

    #[test]
    fn median_of_calls_warm_up_then_samples_times_batch() {
        let mut calls = 0;
        median_of(5, 2, || calls += 1);
        assert_eq!(calls, 3 + 5 * 2);
        let mut calls = 0;
        median_of(4, 10, || calls += 1);
        assert_eq!(calls, 10 + 4 * 10);
    }
}
