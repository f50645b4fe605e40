//! Seeds of the fuzz tests, shared by the crate's (`src/fuzz_tests.rs`) and the C API's
//! (`tests/fuzz_api.rs`): `UNILOCK_FUZZ_SEED` replays one, `UNILOCK_FUZZ_SECONDS` asks
//! for new ones until that time has passed.
#![allow(dead_code)]

pub fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

pub fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed a test starts from: `UNILOCK_FUZZ_SEED`, else a fixed one per test (a
/// fresh one in long mode).
pub fn first_seed(name: &str, long: bool) -> u64 {
    if let Some(seed) = env_number("UNILOCK_FUZZ_SEED") {
        return seed;
    }
    if long {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return splitmix(now.as_nanos() as u64 ^ u64::from(std::process::id()));
    }
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `test` on `cases` values of `strategy` drawn from one seed, or from one seed
/// after another until `UNILOCK_FUZZ_SECONDS` have passed (`on_seed` hears of each);
/// panics naming the seed of the first failure (with proptest's smallest failing
/// value).
pub fn fuzz<S: proptest::strategy::Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    mut on_seed: impl FnMut(u64),
    mut test: impl FnMut(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    use std::time::{Duration, Instant};
    let until = env_number("UNILOCK_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let mut seed = first_seed(name, until.is_some());
    let mut seeds = 0u64;
    loop {
        on_seed(seed);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            ..Config::default()
        });
        let cell = std::cell::RefCell::new(&mut test);
        if let Err(e) = runner.run(&strategy, |v| {
            let mut test = cell.borrow_mut();
            (*test)(v)
        }) {
            panic!("{name} failed; UNILOCK_FUZZ_SEED={seed} reproduces it: {e}");
        }
        seeds += 1;
        match until {
            Some(t) if Instant::now() < t => seed = splitmix(seed),
            _ => break,
        }
    }
    if until.is_some() {
        eprintln!("{name}: {seeds} seeds of {cases} cases passed");
    }
}
