//! What the command prints about locks: a sentence naming a holder (`--verbose`), the
//! lslocks-like table and the JSON of `--test` and `--list`, and the help text.

use std::fmt::Write as _;

use std::path::PathBuf;

use unilock::{Backend, Holder, Mode};

/// `0-99`, `100-EOF`, or `whole file`, as bytes.
fn span(h: &Holder) -> String {
    match (h.start, h.len) {
        (0, 0) => "the whole file".to_string(),
        (start, 0) => format!("bytes {start} to the end of the file"),
        (start, len) => format!("bytes {start}-{}", start + len - 1),
    }
}

/// "pid 1234 (sleep) holds an exclusive FLOCK lock on the whole file"; for an etcd
/// lock "pid 1234 (sleep) on host web1 holds the etcd lock backup (key
/// backup/694d7f2a1b3c8e01, revision 12)".
pub fn holder_sentence(h: &Holder) -> String {
    if let Some(k) = &h.etcd {
        let who = match (k.pid, k.command.as_deref(), k.host.as_deref()) {
            (Some(pid), Some(command), Some(host)) => {
                format!("pid {pid} ({command}) on host {host}")
            }
            (Some(pid), None, Some(host)) => format!("pid {pid} on host {host}"),
            (Some(pid), _, None) => format!("pid {pid} on an unnamed host"),
            (None, ..) => "a client that left no record (etcdctl lock, or another etcd \
                           client)"
                .to_string(),
        };
        let name = k
            .key
            .rsplit_once('/')
            .map_or(k.key.as_str(), |(name, _)| name);
        let verb = if k.waiting { "waits for" } else { "holds" };
        return format!(
            "{who} {verb} the etcd lock {name} (key {}, revision {})",
            k.key, k.revision
        );
    }
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

/// An output column of `--test` and `--list`: lslocks(8)'s, then unilock's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Command,
    Pid,
    Type,
    Size,
    Inode,
    MajMin,
    Mode,
    M,
    Start,
    End,
    Path,
    Blocker,
    Holders,
    Host,
    StartTime,
    Stale,
    Revision,
    Lease,
    Waiting,
    Key,
    Since,
}

/// Every column: its name (the JSON key is the name in lower case) and whether the
/// table aligns it to the right, as lslocks does.
const COLUMNS: &[(Column, &str, bool)] = &[
    (Column::Command, "COMMAND", false),
    (Column::Pid, "PID", true),
    (Column::Type, "TYPE", true),
    (Column::Size, "SIZE", true),
    (Column::Inode, "INODE", true),
    (Column::MajMin, "MAJ:MIN", false),
    (Column::Mode, "MODE", false),
    (Column::M, "M", false),
    (Column::Start, "START", true),
    (Column::End, "END", true),
    (Column::Path, "PATH", false),
    (Column::Blocker, "BLOCKER", true),
    (Column::Holders, "HOLDERS", false),
    (Column::Host, "HOST", false),
    (Column::StartTime, "STARTTIME", true),
    (Column::Stale, "STALE", false),
    (Column::Revision, "REVISION", true),
    (Column::Lease, "LEASE", false),
    (Column::Waiting, "WAITING", false),
    (Column::Key, "KEY", false),
    (Column::Since, "SINCE", true),
];

/// lslocks' default columns, and HOLDERS.
const DEFAULT: &[Column] = &[
    Column::Command,
    Column::Pid,
    Column::Type,
    Column::Size,
    Column::Mode,
    Column::M,
    Column::Start,
    Column::End,
    Column::Path,
    Column::Holders,
];

/// Added to the default columns when a DOTLOCK lock file is listed: its owner record.
const DOTLOCK_DEFAULT: &[Column] = &[Column::Host, Column::StartTime, Column::Stale];

/// The default columns of an etcd lock's queue (`--etcd`): who, where, and its place;
/// no sizes or bytes, which it has not. PATH is the lock name.
const ETCD_DEFAULT: &[Column] = &[
    Column::Command,
    Column::Pid,
    Column::Type,
    Column::Mode,
    Column::Host,
    Column::Revision,
    Column::Lease,
    Column::Waiting,
    Column::Path,
    Column::Holders,
];

fn info(c: Column) -> (&'static str, bool) {
    let &(_, name, right) = COLUMNS
        .iter()
        .find(|(k, ..)| *k == c)
        .expect("every column is listed");
    (name, right)
}

/// How `--test` and `--list` print: `--output`, `--noheadings`, `--raw`, `--bytes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// `--output LIST`: these columns instead of the default ones.
    columns: Option<Vec<Column>>,
    /// `--output +LIST`: these after the default ones.
    extra: Vec<Column>,
    noheadings: bool,
    raw: bool,
    bytes: bool,
    /// The rows are an etcd lock's queue: [`ETCD_DEFAULT`] columns.
    etcd: bool,
}

impl Style {
    /// The same style for the queue of an etcd lock.
    pub fn for_etcd(mut self) -> Style {
        self.etcd = true;
        self
    }

    /// The style the options ask for; the message of a usage error for an unknown
    /// column name.
    pub fn new(
        output: Option<&str>,
        noheadings: bool,
        raw: bool,
        bytes: bool,
    ) -> Result<Style, String> {
        let mut style = Style {
            noheadings,
            raw,
            bytes,
            ..Style::default()
        };
        if let Some(list) = output {
            let (append, list) = match list.strip_prefix('+') {
                Some(rest) => (true, rest),
                None => (false, list),
            };
            let mut columns = Vec::new();
            for name in list.split(',') {
                let found = COLUMNS
                    .iter()
                    .find(|(_, n, _)| n.eq_ignore_ascii_case(name.trim()));
                match found {
                    Some(&(c, ..)) => columns.push(c),
                    None => {
                        let known: Vec<&str> = COLUMNS.iter().map(|(_, n, _)| *n).collect();
                        return Err(format!(
                            "unknown column: '{name}' (known: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            if append {
                style.extra = columns;
            } else {
                style.columns = Some(columns);
            }
        }
        Ok(style)
    }

    /// The columns for `rows`.
    fn columns(&self, rows: &[Row]) -> Vec<Column> {
        let mut out = match &self.columns {
            Some(c) => c.clone(),
            None if self.etcd => ETCD_DEFAULT.to_vec(),
            None => {
                let mut c = DEFAULT.to_vec();
                if rows.iter().any(|r| r.holder.backend == Backend::Dotlock) {
                    c.extend_from_slice(DOTLOCK_DEFAULT);
                }
                c
            }
        };
        out.extend(self.extra.iter().copied());
        out
    }
}

/// One lock to print: the holder and the absolute path of the locked file (for
/// DOTLOCK, of the lock file).
pub struct Row {
    pub holder: Holder,
    pub path: PathBuf,
}

/// A cell's value, typed as lslocks types its JSON.
#[derive(Debug, PartialEq)]
enum Value {
    Text(String),
    Number(i128),
    Bool(bool),
    Null,
    List(Vec<String>),
}

/// The kernel's name of a lock type as /proc/locks and lslocks print it (OFD locks
/// are `OFDLCK`), `DOTLOCK` for lock files and `ETCD` for etcd keys.
pub fn type_name(b: Backend) -> &'static str {
    match b {
        Backend::Flock => "FLOCK",
        Backend::Ofd => "OFDLCK",
        Backend::Posix => "POSIX",
        Backend::Dotlock => "DOTLOCK",
        Backend::Etcd => "ETCD",
    }
}

/// lslocks' COMMAND for a holder: "(undefined)" without a pid, "(unknown)" when the
/// name cannot be read.
fn command_cell(pid: i32, command: &str) -> String {
    match (pid, command) {
        (pid, _) if pid <= 0 => "(undefined)".to_string(),
        (_, "") => "(unknown)".to_string(),
        (_, c) => c.to_string(),
    }
}

/// A size as util-linux prints it by default: `0B` to `1023B`, then one decimal
/// (dropped when 0) and K, M, G, T, P or E (powers of 1024).
fn human_size(bytes: u64) -> String {
    const UNITS: &[char] = &['B', 'K', 'M', 'G', 'T', 'P', 'E'];
    let mut exp = 0;
    while exp + 1 < UNITS.len() && bytes >= 1u64 << (10 * (exp + 1)) {
        exp += 1;
    }
    if exp == 0 {
        return format!("{bytes}B");
    }
    let unit = 1u64 << (10 * exp);
    let mut whole = bytes / unit;
    let mut tenths = ((bytes % unit) as u128 * 10 + unit as u128 / 2) / unit as u128;
    if tenths == 10 {
        whole += 1;
        tenths = 0;
    }
    if tenths == 0 {
        format!("{whole}{}", UNITS[exp])
    } else {
        format!("{whole}.{tenths}{}", UNITS[exp])
    }
}

fn value(row: &Row, column: Column, style: &Style) -> Value {
    use std::os::unix::fs::MetadataExt;
    let h = &row.holder;
    // An etcd lock's PATH is its name, not a file.
    let meta = || {
        h.etcd
            .is_none()
            .then(|| std::fs::metadata(&row.path).ok())
            .flatten()
    };
    let record = h.lock_file.as_ref();
    let key = h.etcd.as_ref();
    match column {
        Column::Command => Value::Text(command_cell(h.pid, &h.command)),
        Column::Pid => Value::Number(h.pid.into()),
        Column::Type => Value::Text(type_name(h.backend).into()),
        Column::Size => match meta().map(|m| m.len()).filter(|&n| n > 0) {
            None => Value::Null,
            Some(n) if style.bytes => Value::Number(n.into()),
            Some(n) => Value::Text(human_size(n)),
        },
        Column::Inode => meta().map_or(Value::Null, |m| Value::Number(m.ino().into())),
        Column::MajMin => meta().map_or(Value::Null, |m| {
            Value::Text(format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())))
        }),
        Column::Mode => Value::Text(
            match h.mode {
                Mode::Shared => "READ",
                Mode::Exclusive => "WRITE",
            }
            .into(),
        ),
        Column::M => Value::Bool(false),
        // An etcd lock has no bytes (its holder's `start` is its revision).
        Column::Start if key.is_some() => Value::Number(0),
        Column::Start => Value::Number(h.start.into()),
        Column::End => Value::Number(if h.len == 0 {
            0
        } else {
            (h.start + h.len - 1).into()
        }),
        Column::Path => Value::Text(row.path.to_string_lossy().into_owned()),
        Column::Blocker => Value::Null,
        Column::Holders => Value::List(
            h.processes
                .iter()
                .flat_map(|p| {
                    let fds = if p.fds.is_empty() {
                        vec![-1]
                    } else {
                        p.fds.clone()
                    };
                    fds.into_iter().map(move |fd| {
                        format!("{},{},{fd}", p.pid, command_cell(p.pid, &p.command))
                    })
                })
                .collect(),
        ),
        Column::Host => record
            .and_then(|r| r.host.clone())
            .or_else(|| key.and_then(|k| k.host.clone()))
            .map_or(Value::Null, Value::Text),
        Column::StartTime => record
            .and_then(|r| r.start)
            .map_or(Value::Null, |t| Value::Number(t.into())),
        Column::Stale => record
            .and_then(|r| r.stale.clone())
            .map_or(Value::Null, Value::Text),
        Column::Revision => key.map_or(Value::Null, |k| Value::Number(k.revision.into())),
        // Hexadecimal, as etcdctl takes it (`etcdctl lease revoke ID`) and the key ends.
        Column::Lease => key.map_or(Value::Null, |k| Value::Text(format!("{:x}", k.lease))),
        Column::Waiting => key.map_or(Value::Null, |k| Value::Bool(k.waiting)),
        Column::Key => key.map_or(Value::Null, |k| Value::Text(k.key.clone())),
        Column::Since => key
            .and_then(|k| k.since)
            .map_or(Value::Null, |t| Value::Number(t.into())),
    }
}

/// The lines of a table cell (more than one for HOLDERS with several holders).
fn cell_lines(v: &Value) -> Vec<String> {
    match v {
        Value::Text(t) => vec![t.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![if *b { "1" } else { "0" }.to_string()],
        Value::Null => vec![String::new()],
        Value::List(items) if items.is_empty() => vec![String::new()],
        Value::List(items) => items.clone(),
    }
}

/// `--raw`: a cell with blanks, backslashes and control characters as `\xHH`, so that
/// cells are separated by single spaces (holders joined by an escaped newline).
fn raw_cell(v: &Value) -> String {
    let text = match v {
        Value::List(items) => items.join("\n"),
        other => cell_lines(other).concat(),
    };
    let mut out = String::new();
    for c in text.chars() {
        if c == '\\' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
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

fn json_value(out: &mut String, v: &Value) {
    match v {
        Value::Text(t) => json_string(out, t),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json_string(out, item);
            }
            out.push(']');
        }
    }
}

/// `--json`: `{"locks": [...]}`, one object per lock, keys the column names in lower
/// case, laid out as lslocks lays it out.
fn json(rows: &[Row], style: &Style) -> String {
    let columns = style.columns(rows);
    let mut out = String::from("{\n   \"locks\": [");
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n      {" } else { ",{" });
        for (k, &c) in columns.iter().enumerate() {
            out.push_str(if k == 0 {
                "\n         "
            } else {
                ",\n         "
            });
            json_string(&mut out, &info(c).0.to_ascii_lowercase());
            out.push_str(": ");
            json_value(&mut out, &value(row, c, style));
        }
        out.push_str("\n      }");
    }
    out.push_str(if rows.is_empty() {
        "]\n}\n"
    } else {
        "\n   ]\n}\n"
    });
    out
}

/// The table: a header (unless `--noheadings`), then a line per lock and one more per
/// further holder; numbers to the right, text to the left, the last column unpadded.
/// `--raw`: cells separated by one space, escaped, nothing aligned.
fn table(rows: &[Row], style: &Style) -> String {
    let columns = style.columns(rows);
    let values: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| columns.iter().map(|&c| value(r, c, style)).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|&c| info(c).0.to_string()).collect();
    let mut out = String::new();
    if style.raw {
        if !style.noheadings {
            out.push_str(&header.join(" "));
            out.push('\n');
        }
        for row in &values {
            let cells: Vec<String> = row.iter().map(raw_cell).collect();
            out.push_str(&cells.join(" "));
            out.push('\n');
        }
        return out;
    }
    // Each row as physical lines of cells.
    let mut lines: Vec<Vec<String>> = Vec::new();
    if !style.noheadings {
        lines.push(header);
    }
    for row in &values {
        let cells: Vec<Vec<String>> = row.iter().map(cell_lines).collect();
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            lines.push(
                cells
                    .iter()
                    .map(|c| c.get(k).cloned().unwrap_or_default())
                    .collect(),
            );
        }
    }
    let mut widths = vec![0; columns.len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in &lines {
        let mut text = String::new();
        for (k, cell) in line.iter().enumerate() {
            if k > 0 {
                text.push(' ');
            }
            let pad = widths[k].saturating_sub(cell.chars().count());
            if k == line.len() - 1 {
                text.push_str(cell);
            } else if info(columns[k]).1 {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// What `--test` and `--list` print for `rows`: the table, raw lines or JSON.
pub fn render(rows: &[Row], style: &Style, as_json: bool) -> String {
    if as_json {
        json(rows, style)
    } else {
        table(rows, style)
    }
}

/// `--verbose`, after a lock call removed a stale DOTLOCK lock file: "removed the
/// stale lock file /var/mail/u.lock of pid 123 (host h): its owner, process 123, is
/// gone".
pub fn broken_sentence(h: &Holder) -> String {
    let record = h.lock_file.clone().unwrap_or_default();
    let mut whose = match (h.pid, record.pid) {
        (pid, _) if pid > 0 => format!(" of pid {pid}"),
        (_, Some(pid)) => format!(" of pid {pid}"),
        _ => String::new(),
    };
    if let Some(host) = &record.host {
        let _ = write!(whose, " (host {host})");
    }
    format!(
        "removed the stale lock file {}{whose}: {}",
        record.path.display(),
        record.stale.as_deref().unwrap_or("it was stale")
    )
}

/// `-h`: short and complete.
pub fn usage(name: &str) -> String {
    format!(
        "
Usage:
 {name} [options] <file>|<directory> <command> [<argument>...]
 {name} [options] <file>|<directory> -c <command>
 {name} [options] <file descriptor number>
 {name} [options] --fd <number> <command> [<argument>...]
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
     --fd <number>        lock this descriptor and run the command
     --verbose            say who holds the lock while waiting, and how long it took

 -b, --backend <list>     flock (default), ofd, posix, dotlock or etcd; a,b: a set
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
     --json               with --test or --list: print JSON (lslocks' shape)
     --output <list>      with --test or --list: the columns (+<list> adds)
     --noheadings         with --test or --list: no header line
     --raw                with --test or --list: unaligned, escaped cells
     --bytes              with --test or --list: SIZE in bytes

     --etcd[=<endpoints>] lock the name <file> in etcd (-b etcd); endpoints
                          comma-separated, else $UNILOCK_ETCD_ENDPOINTS,
                          $ETCDCTL_ENDPOINTS or http://127.0.0.1:2379
     --etcd-cacert <file> etcd: CA certificates of the servers (PEM)
     --etcd-cert <file>   etcd: client certificate (PEM), with --etcd-key <file>
     --etcd-user <name>[:<password>]  etcd: user (or $UNILOCK_ETCD_PASSWORD)
     --lease-ttl <secs>   etcd: lease TTL (default 10)
     --kill-on-loss[=<secs>]  etcd: if the lock is lost, SIGTERM the command,
                          SIGKILL after <secs> (default 5)

 -h, --help               display this help
 -V, --version            display version

Exit status: the command's (128+N if signal N killed it); 1 or -E on conflict or
timeout; 64 usage (options that cannot go together), 65 lock failure, 66 cannot
open, 69 cannot execute, 71 system error, 73 cannot create, 75 etcd lock lost
while the command ran.

Backends: FLOCK, OFD, POSIX, DOTLOCK, ETCD (any case with -b); the TYPE column
prints OFD locks as OFDLCK, as lslocks(8) does. The command of an etcd lock gets
its fencing token in UNILOCK_FENCE.

For more details see unilock(1).
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(command: &str, pid: i32, start: u64, len: u64) -> Holder {
        Holder {
            backend: Backend::Ofd,
            mode: Mode::Shared,
            start,
            len,
            pid,
            is_self: false,
            command: command.to_string(),
            processes: if pid > 0 {
                vec![unilock::Process {
                    pid,
                    command: command.to_string(),
                    fds: vec![3],
                }]
            } else {
                Vec::new()
            },
            lock_file: None,
            etcd: None,
        }
    }

    fn row(h: Holder) -> Row {
        Row {
            holder: h,
            path: PathBuf::from("/nonexistent/f"),
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
    fn table_aligns_columns_as_lslocks_with_end_0_for_eof() {
        let mut two = holder("x", 12345, 10, 5);
        two.processes.push(unilock::Process {
            pid: 12346,
            command: "y".into(),
            fds: vec![4, 9],
        });
        let t = render(
            &[row(holder("sleep", 42, 0, 0)), row(two)],
            &Style::default(),
            false,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "COMMAND   PID   TYPE SIZE MODE M START END PATH           HOLDERS",
                "sleep      42 OFDLCK      READ 0     0   0 /nonexistent/f 42,sleep,3",
                "x       12345 OFDLCK      READ 0    10  14 /nonexistent/f 12345,x,3",
                "                                                          12346,y,4",
                "                                                          12346,y,9",
            ]
        );
    }

    #[test]
    fn output_noheadings_and_raw() {
        let style = Style::new(Some("pid,type,holders"), true, true, false).unwrap();
        let mut h = holder("a b", 7, 0, 0);
        h.command = "a b".into();
        let t = render(&[row(h), row(holder("", -1, 0, 0))], &style, false);
        assert_eq!(t, "7 OFDLCK 7,a\\x20b,3\n-1 OFDLCK \n");
        let style = Style::new(Some("+INODE,maj:min"), false, false, false).unwrap();
        assert_eq!(
            style.columns(&[]).last().copied(),
            Some(Column::MajMin),
            "+ appends to the default columns"
        );
        assert!(
            Style::new(Some("PID,NOPE"), false, false, false)
                .unwrap_err()
                .starts_with("unknown column: 'NOPE'")
        );
    }

    #[test]
    fn json_has_lslocks_keys_and_types() {
        let j = render(&[row(holder("a\"b\\", 7, 3, 0))], &Style::default(), true);
        assert_eq!(
            j,
            "{\n   \"locks\": [\n      {\n         \"command\": \"a\\\"b\\\\\",\n         \
             \"pid\": 7,\n         \"type\": \"OFDLCK\",\n         \"size\": null,\n         \
             \"mode\": \"READ\",\n         \"m\": false,\n         \"start\": 3,\n         \
             \"end\": 0,\n         \"path\": \"/nonexistent/f\",\n         \
             \"holders\": [\"7,a\\\"b\\\\,3\"]\n      }\n   ]\n}\n"
        );
        assert_eq!(
            render(&[], &Style::default(), true),
            "{\n   \"locks\": []\n}\n"
        );
    }

    fn etcd_holder(pid: Option<i32>, host: Option<&str>, waiting: bool) -> Holder {
        Holder {
            backend: Backend::Etcd,
            mode: Mode::Exclusive,
            start: 12,
            len: 0,
            pid: pid.unwrap_or(-1),
            is_self: false,
            command: if pid.is_some() { "unilock" } else { "" }.to_string(),
            processes: Vec::new(),
            lock_file: None,
            etcd: Some(unilock::EtcdKey {
                key: "a/b/694d7f2a1b3c8e01".into(),
                lease: 0x694d7f2a1b3c8e01,
                revision: 12,
                host: host.map(str::to_string),
                pid,
                command: pid.map(|_| "unilock".to_string()),
                since: Some(1_700_000_000),
                waiting,
                endpoints: vec!["http://127.0.0.1:2379".into()],
            }),
        }
    }

    #[test]
    fn etcd_rows_name_the_host_revision_lease_and_place_in_the_queue() {
        assert_eq!(
            holder_sentence(&etcd_holder(Some(42), Some("web1"), false)),
            "pid 42 (unilock) on host web1 holds the etcd lock a/b (key \
             a/b/694d7f2a1b3c8e01, revision 12)"
        );
        assert!(
            holder_sentence(&etcd_holder(None, None, false))
                .starts_with("a client that left no record")
        );
        let rows = [
            Row {
                holder: etcd_holder(Some(42), Some("web1"), false),
                path: PathBuf::from("a/b"),
            },
            Row {
                holder: etcd_holder(None, None, true),
                path: PathBuf::from("a/b"),
            },
        ];
        let style = Style::default().for_etcd();
        let t = render(&rows, &style, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "COMMAND     PID TYPE MODE  HOST REVISION LEASE            WAITING PATH HOLDERS",
                "unilock      42 ETCD WRITE web1       12 694d7f2a1b3c8e01 0       a/b",
                "(undefined)  -1 ETCD WRITE            12 694d7f2a1b3c8e01 1       a/b",
            ]
        );
        let j: serde_json::Value = serde_json::from_str(&render(&rows, &style, true)).unwrap();
        assert_eq!(j["locks"][0]["lease"], "694d7f2a1b3c8e01");
        assert_eq!(j["locks"][1]["waiting"], true);
        assert_eq!(j["locks"][1]["host"], serde_json::Value::Null);
        // An etcd row's name is not a file to look at; file rows have no etcd keys.
        let all = Style::new(Some("SIZE,START,KEY,SINCE,REVISION"), true, true, false).unwrap();
        assert_eq!(
            render(&rows[..1], &all, false),
            " 0 a/b/694d7f2a1b3c8e01 1700000000 12\n"
        );
        let file = render(&[row(holder("x", 1, 0, 0))], &all, false);
        assert_eq!(file, " 0   \n");
    }

    #[test]
    fn sizes_read_as_util_linux_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(10 * 1024 * 1024 + 1), "10M");
    }
}
