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
