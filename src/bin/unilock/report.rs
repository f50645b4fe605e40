//! What the command prints about locks: a sentence naming a holder (`--verbose`), the
//! lslocks-like table and the JSON of `--test` and `--list`, and the help text.

use std::fmt::Write as _;

use unilock::Holder;

/// `0-99`, `100-EOF`, or `whole file`, as bytes.
fn span(h: &Holder) -> String {
    match (h.start, h.len) {
        (0, 0) => "the whole file".to_string(),
        (start, 0) => format!("bytes {start} to the end of the file"),
        (start, len) => format!("bytes {start}-{}", start + len - 1),
    }
}

/// "pid 1234 (sleep) holds an exclusive FLOCK lock on the whole file".
pub fn holder_sentence(h: &Holder) -> String {
    let who = match (h.pid, h.command.as_str()) {
        (pid, _) if pid <= 0 => "an unknown process".to_string(),
        (pid, "") => format!("pid {pid}"),
        (pid, command) => format!("pid {pid} ({command})"),
    };
    let article = if h.mode == unilock::Mode::Exclusive {
        "an"
    } else {
        "a"
    };
    format!(
        "{who} holds {article} {} {} lock on {}",
        h.mode.name(),
        h.backend.name(),
        span(h)
    )
}

fn end(h: &Holder) -> Option<u64> {
    (h.len != 0).then(|| h.start + h.len - 1)
}

/// The table of `--test` and `--list`: COMMAND PID TYPE MODE START END PATH, as
/// lslocks prints it (END is the last byte, "EOF" for a lock to the end of the file).
pub fn table(holders: &[Holder], path: &str) -> String {
    let header = ["COMMAND", "PID", "TYPE", "MODE", "START", "END", "PATH"];
    let rows: Vec<[String; 7]> = holders
        .iter()
        .map(|h| {
            [
                if h.command.is_empty() {
                    "-".to_string()
                } else {
                    h.command.clone()
                },
                h.pid.to_string(),
                h.backend.name().to_string(),
                h.mode.name().to_string(),
                h.start.to_string(),
                end(h).map_or_else(|| "EOF".to_string(), |e| e.to_string()),
                path.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers right-aligned, text left-aligned; the last column is not padded.
    let right = [false, true, false, false, true, true, false];
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (k, cell) in cells.iter().enumerate() {
            if k > 0 {
                text.push(' ');
            }
            let pad = widths[k].saturating_sub(cell.chars().count());
            if k == cells.len() - 1 {
                text.push_str(cell);
            } else if right[k] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One holder as a JSON object: `command` ("" when unknown), `pid` (-1 when unknown),
/// `backend` ("FLOCK", "OFD", "POSIX"), `mode` ("shared", "exclusive"), `start`,
/// `len` (0 = to the end of the file), `end` (the last byte, null = to the end) and
/// `path`.
pub fn json_holder(h: &Holder, path: &str) -> String {
    let mut out = String::from("{\"command\":");
    json_string(&mut out, &h.command);
    let _ = write!(
        out,
        ",\"pid\":{},\"backend\":\"{}\",\"mode\":\"{}\",\"start\":{},\"len\":{},\"end\":{},\"path\":",
        h.pid,
        h.backend.name(),
        h.mode.name(),
        h.start,
        h.len,
        end(h).map_or_else(|| "null".to_string(), |e| e.to_string())
    );
    json_string(&mut out, path);
    out.push('}');
    out
}

/// `--list --json`: an array of holders, one per line.
pub fn json_list(holders: &[Holder], path: &str) -> String {
    if holders.is_empty() {
        return "[]\n".to_string();
    }
    let items: Vec<String> = holders
        .iter()
        .map(|h| format!("  {}", json_holder(h, path)))
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// `-h`: short and complete.
pub fn usage(name: &str) -> String {
    format!(
        "
Usage:
 {name} [options] <file>|<directory> <command> [<argument>...]
 {name} [options] <file>|<directory> -c <command>
 {name} [options] <file descriptor number>
 {name} [options] --test|--list <file>

Manage file locks from shell scripts: flock(1) compatible, and says who holds a lock.

Options:
 -s, --shared             get a shared lock
 -x, -e, --exclusive      get an exclusive lock (default)
 -u, --unlock             remove a lock
 -n, --nb, --nonblock     fail rather than wait
 -w, --wait, --timeout <secs>  wait at most <secs> (fractions allowed; 0 is -n)
 -E, --conflict-exit-code <number>  exit code after conflict or timeout (default 1)
 -o, --close              close the lock descriptor before running the command
 -c, --command <command>  run a single command string through the shell
 -F, --no-fork            execute the command without forking
     --verbose            say who holds the lock while waiting, and how long it took

 -b, --backend <list>     flock (default), ofd, posix or dotlock; a,b for a set
     --fcntl              same as --backend ofd (fcntl F_OFD_SETLK)
     --range <start>[:<len>]  lock a byte range (len 0: to the end; implies --fcntl)
     --start <offset>, --length <number>  the range, as newer flock(1) takes it
     --fair               first come, first served among --fair waiters
     --unlink             delete the lock file when the lock is released
     --stale <secs>       dotlock: a lock file not refreshed for <secs> is stale
     --mode <octal>       permissions of a created lock file (default 0600)
     --follow             lock the target of a symbolic link (refused by default)
     --test               exit 0 if the lock could be taken now, else 1 (or -E)
                          and print who holds it
     --list               print every lock on the file (any process, any kind)
     --json               with --test or --list: print JSON

 -h, --help               display this help
 -V, --version            display version

Exit status: the command's (128+N if signal N killed it); 1 or -E on conflict or
timeout; 64 usage, 65 lock failure, 66 cannot open, 69 cannot execute or not
supported, 71 system error, 73 cannot create.

For more details see unilock(1).
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use unilock::{Backend, Mode};

    fn holder(command: &str, pid: i32, start: u64, len: u64) -> Holder {
        Holder {
            backend: Backend::Ofd,
            mode: Mode::Shared,
            start,
            len,
            pid,
            is_self: false,
            command: command.to_string(),
            processes: Vec::new(),
            lock_file: None,
        }
    }

    #[test]
    fn sentences_name_pid_command_mode_backend_and_bytes() {
        assert_eq!(
            holder_sentence(&holder("sleep", 42, 10, 5)),
            "pid 42 (sleep) holds a shared OFD lock on bytes 10-14"
        );
        assert_eq!(
            holder_sentence(&holder("", -1, 0, 0)),
            "an unknown process holds a shared OFD lock on the whole file"
        );
    }

    #[test]
    fn table_aligns_columns_and_shows_eof() {
        let t = table(
            &[holder("sleep", 42, 0, 0), holder("x", 12345, 10, 5)],
            "/tmp/f",
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "COMMAND   PID TYPE MODE   START END PATH");
        assert_eq!(lines[1], "sleep      42 OFD  shared     0 EOF /tmp/f");
        assert_eq!(lines[2], "x       12345 OFD  shared    10  14 /tmp/f");
    }

    #[test]
    fn json_escapes_and_uses_null_for_eof() {
        let j = json_holder(&holder("a\"b\\", 7, 3, 0), "/t\n");
        assert_eq!(
            j,
            r#"{"command":"a\"b\\","pid":7,"backend":"OFD","mode":"shared","start":3,"len":0,"end":null,"path":"/t\n"}"#
        );
        assert_eq!(json_list(&[], "p"), "[]\n");
    }
}
