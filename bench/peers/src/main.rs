//! unilock beside what its users would otherwise use: the raw system calls, Rust std
//! `File::lock`, fd-lock, fs4, util-linux flock(1), Python filelock and portalocker,
//! liblockfile, lockfile-progs and procmail's lockfile, measured in one run on the
//! same lock files. `scripts/bench-peers.sh` builds and runs it (`make bench`).
//!
//! Usage:
//!   peers run --dir DIR --markdown PATH --headline PATH --json PATH
//!             [--quick] [--python PY --py-agent agent.py] [--lockfile-agent EXE]
//!             [--unilock EXE] [--flock EXE]
//!   peers agent KIND PATH            (the driver starts these; see agent.rs)
//!   peers contend KIND PATH START_NS DURATION_NS HOLD_NS

mod agent;
mod driver;
mod json;
mod lockers;
// The clock and the percentile of the library's own benchmark programs.
#[path = "../../../benches/report/mod.rs"]
mod report;
mod stats;

use std::path::{Path, PathBuf};

fn usage() -> ! {
    eprintln!(
        "usage: peers run --dir DIR --markdown PATH --headline PATH --json PATH [--quick] \
         [--python PY --py-agent agent.py] [--lockfile-agent EXE] [--unilock EXE] [--flock EXE]"
    );
    std::process::exit(64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("agent") if args.len() == 3 => agent::agent_main(&args[1], Path::new(&args[2])),
        Some("contend") if args.len() == 6 => {
            let n = |i: usize| -> u64 { args[i].parse().unwrap_or_else(|_| usage()) };
            agent::contend_main(&args[1], Path::new(&args[2]), n(3), n(4), n(5));
        }
        Some("run") => run(&args[1..]),
        _ => usage(),
    }
}

fn run(args: &[String]) {
    let mut quick = false;
    let mut get = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            flag if flag.starts_with("--") => {
                let value = it.next().unwrap_or_else(|| usage());
                get.insert(
                    flag.trim_start_matches("--").to_string(),
                    PathBuf::from(value),
                );
            }
            _ => usage(),
        }
    }
    let need = |k: &str| get.get(k).cloned().unwrap_or_else(|| usage());
    let setup = driver::Setup {
        quick,
        dir: need("dir"),
        exe: std::env::current_exe().expect("current_exe"),
        python: get.get("python").cloned(),
        py_agent: get
            .get("py-agent")
            .cloned()
            .unwrap_or_else(|| PathBuf::from("agent.py")),
        lockfile_agent: get.get("lockfile-agent").cloned(),
        unilock_cmd: get
            .get("unilock")
            .cloned()
            .unwrap_or_else(|| PathBuf::from("target/release/unilock")),
        flock_cmd: get
            .get("flock")
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/usr/bin/flock")),
        markdown: need("markdown"),
        headline: need("headline"),
        json: need("json"),
    };
    driver::run(setup);
}
