//! Helpers of the command's tests (tests/cli.rs, tests/cli_etcd.rs): a finished run,
//! the JSON documents of `--list --json` and `--test --json` against
//! docs/locks.schema.json, waiting, signals.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How a run of a command ended.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// The outcome of a finished process (a signal `N` is exit code 128 + N).
pub fn outcome(out: Output, elapsed: Duration) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    Outcome {
        code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap()),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// The `locks` array of a `--list --json` or `--test --json` document.
pub fn locks(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    v["locks"]
        .as_array()
        .unwrap_or_else(|| panic!("no locks array: {json}"))
        .clone()
}

/// The properties of a lock in docs/locks.schema.json, and every column's name for
/// `--output` (all of them, comma-separated).
pub fn lock_schema() -> (Map<String, Value>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/locks.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let props = schema["$defs"]["lock"]["properties"]
        .as_object()
        .unwrap()
        .clone();
    let all: Vec<String> = props.keys().map(|k| k.to_ascii_uppercase()).collect();
    (props, all.join(","))
}

/// Asserts that every key of `lock` is documented in `props` and its value follows
/// the documented rule; `doc` is the whole document, for the message.
pub fn assert_documented(lock: &Value, props: &Map<String, Value>, doc: &str) {
    for (key, value) in lock.as_object().unwrap() {
        let rule = props
            .get(key)
            .unwrap_or_else(|| panic!("undocumented key {key}: {doc}"));
        assert!(
            conforms(value, rule),
            "{key}: {value} against {rule}: {doc}"
        );
    }
}

/// A JSON value against the subset of JSON Schema that docs/locks.schema.json uses:
/// `type` (one or a list), `enum`, `minimum`, `items` and `pattern` (a prefix check
/// of the holders' "PID,COMMAND,FD" shape).
pub fn conforms(value: &Value, rule: &Value) -> bool {
    if let Some(options) = rule["enum"].as_array() {
        return options.contains(value);
    }
    let types: Vec<&str> = match &rule["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    let typed = types.iter().any(|t| match *t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "array" => value.is_array(),
        _ => false,
    });
    if !typed {
        return false;
    }
    if let (Some(min), Some(n)) = (rule["minimum"].as_i64(), value.as_i64()) {
        if n < min {
            return false;
        }
    }
    if let (Some(items), Some(rule)) = (value.as_array(), rule.get("items")) {
        return items.iter().all(|item| {
            conforms(item, rule)
                && item.as_str().is_none_or(|s| {
                    let parts: Vec<&str> = s.split(',').collect();
                    parts.len() >= 3
                        && parts[0].parse::<i64>().is_ok()
                        && parts[parts.len() - 1].parse::<i64>().is_ok()
                })
        });
    }
    true
}

/// Polls `ready` every millisecond; fails, naming `what`, after 10 seconds.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` (a name: "TERM") to `pid` alone.
pub fn send_signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok || std::thread::panicking(), "kill -s {signal} {pid}");
}
