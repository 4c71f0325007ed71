#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report
//! Every code block in README.md and docs/*.md runs as written.
//!
//! A block's fence info string says what it is (README.md, "Tests", tells doc writers):
//!
//! | fence | what this test does with it |
//! |---|---|
//! | `console` | a transcript: each `$ ` line runs in one bash session; the lines after it are its expected output (stdout and stderr), where `...` matches any text and a line of just `...` any lines |
//! | `sh` | runs in bash (`-euo pipefail`) and must exit 0 |
//! | `python` | runs with the installed aperture-py (`.sdk/py`, see scripts/setup-sdk.sh) and must exit 0 |
//! | `yaml` | a config file: `tollgate validate` must accept it |
//! | `rust`, `rust no_run` | compiled (and without `no_run`, run) by `cargo test --doc`: the file must be included by a `#[cfg(doctest)]` item in server/src/lib.rs, which this test checks |
//! | `text` | output, a diagram, a formula: not code |
//! | `LANG not-tested` | commands a test cannot run (a release build, podman, kubectl, the whole suite); the prose around it says what they need |
//!
//! Anything else, a bare fence included, fails the test: a block is either run or explicitly
//! not code.
//!
//! `console`, `sh` and `python` blocks each get a fresh `tollgate serve` with the embedded
//! default policy on its default ports (binary 127.0.0.1:7070 and up, gRPC 127.0.0.1:8089), as
//! the README's quick start runs it, and run in a directory where `target/release/tollgate`
//! and `tollgate` (on PATH) are the binary under test. So that those fixed ports are free and
//! nothing else on the machine is reached, they run in a private network namespace
//! (`unshare -n`, or `-rn` without root): this test re-runs itself there as
//! [`server_blocks_run_in_private_network`]. Where no namespace can be made, they run in the
//! host's, and the default ports must be free.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{temp_dir, tollgate_bin, READY_TIMEOUT};

/// Longest a runnable block may take (they take a second or two; this bounds a hang).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a block's output may stay open after its process exited (a process it left
/// running keeps the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// The name [`code_blocks_in_readme_and_docs_run_as_written`] re-runs itself under.
const INNER_TEST: &str = "server_blocks_run_in_private_network";

/// What a fence says its block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Console,
    Sh,
    Python,
    Yaml,
    Rust,
    Text,
    NotTested,
}

impl Kind {
    /// Whether the block runs against a default server (in the network namespace).
    fn needs_server(self) -> bool {
        matches!(self, Kind::Console | Kind::Sh | Kind::Python)
    }
}

/// One fenced code block.
#[derive(Debug)]
struct Block {
    /// Path relative to the workspace root.
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    body: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{} (```{})", self.file, self.line, self.info)
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// README.md, then docs/*.md by name.
fn markdown_files() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    let mut files = vec!["README.md".to_string()];
    files.extend(docs);
    files
}

/// A fence opened and not yet closed.
struct OpenFence<'a> {
    /// '`' or '~'.
    ch: char,
    /// How many: the closing fence needs at least as many.
    len: usize,
    /// Its indentation: removed (at most this much) from the body's lines.
    indent: usize,
    /// 1-based line number.
    line: usize,
    info: String,
    body: Vec<&'a str>,
}

impl OpenFence<'_> {
    fn close(self, file: &str) -> Block {
        Block {
            file: file.to_string(),
            line: self.line,
            info: self.info,
            body: self.body.join("\n"),
        }
    }
}

/// The fenced code blocks of a CommonMark document (``` or ~~~ fences, indented at most 3
/// spaces; the closing fence uses the same character, at least as many times).
fn fenced_blocks(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<OpenFence<'_>> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        let run = |c: char| rest.chars().take_while(|&x| x == c).count();
        match open.take() {
            None => {
                if indent <= 3 {
                    open = ['`', '~'].into_iter().find_map(|ch| {
                        let len = run(ch);
                        (len >= 3).then(|| OpenFence {
                            ch,
                            len,
                            indent,
                            line: i + 1,
                            info: rest[len..].trim().to_string(),
                            body: Vec::new(),
                        })
                    });
                }
            }
            Some(mut fence) => {
                let closing = run(fence.ch);
                if indent <= 3 && closing >= fence.len && rest[closing..].trim().is_empty() {
                    blocks.push(fence.close(file));
                } else {
                    fence.body.push(&line[indent.min(fence.indent)..]);
                    open = Some(fence);
                }
            }
        }
    }
    // CommonMark: an unclosed fence runs to the end of the document.
    blocks.extend(open.map(|fence| fence.close(file)));
    blocks
}

/// Reads a fence's info string (words split at spaces and commas, as rustdoc does).
fn classify(info: &str) -> Result<Kind, String> {
    let words: Vec<&str> = info
        .split([' ', ',', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [] => Err("no annotation: say what the block is (see README.md, Tests)".into()),
        [_, "not-tested"] => Ok(Kind::NotTested),
        ["text"] => Ok(Kind::Text),
        ["console"] => Ok(Kind::Console),
        ["sh"] | ["bash"] => Ok(Kind::Sh),
        ["python"] => Ok(Kind::Python),
        ["yaml"] => Ok(Kind::Yaml),
        ["rust"] | ["rust", "no_run"] => Ok(Kind::Rust),
        _ => Err(format!(
            "unknown annotation {info:?}: this test cannot run it; use console, sh, python, \
             yaml, rust [no_run], text, or LANG not-tested"
        )),
    }
}

/// Every block of every file, classified; problems as `file:line: reason`.
fn collect() -> (Vec<(Kind, Block)>, Vec<String>) {
    let mut classified = Vec::new();
    let mut problems = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for block in fenced_blocks(&file, &text) {
            match classify(&block.info) {
                Ok(kind) => classified.push((kind, block)),
                Err(reason) => problems.push(format!("{}: {reason}", block.at())),
            }
        }
    }
    (classified, problems)
}

#[test]
fn code_blocks_in_readme_and_docs_run_as_written() {
    let (blocks, mut problems) = collect();

    let doctests = std::fs::read_to_string(root().join("server/src/lib.rs")).unwrap();
    for (kind, block) in &blocks {
        match kind {
            Kind::Rust => {
                let include = format!("include_str!(\"../../{}\")", block.file);
                if !doctests.contains(&include) {
                    problems.push(format!(
                        "{}: a rust block in a file no doc test compiles: add a #[cfg(doctest)] \
                         #[doc = {include}] item to server/src/lib.rs",
                        block.at()
                    ));
                }
            }
            Kind::Yaml => {
                if let Err(e) = validate_yaml(block) {
                    problems.push(format!("{}: {e}", block.at()));
                }
            }
            _ => {}
        }
    }

    let counts = |k: Kind| blocks.iter().filter(|(kind, _)| *kind == k).count();
    println!(
        "blocks: {} console, {} sh, {} python, {} yaml, {} rust (doc tests), {} text, {} not-tested",
        counts(Kind::Console),
        counts(Kind::Sh),
        counts(Kind::Python),
        counts(Kind::Yaml),
        counts(Kind::Rust),
        counts(Kind::Text),
        counts(Kind::NotTested),
    );
    assert!(
        counts(Kind::Console) + counts(Kind::Python) > 0,
        "the README's examples are runnable blocks; none found"
    );

    match private_network() {
        Some(unshare) => {
            let exe = std::env::current_exe().unwrap();
            let out = Command::new(unshare[0])
                .args(&unshare[1..])
                .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
                .arg(exe)
                .args(["--exact", INNER_TEST, "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            println!("{stdout}");
            if !out.status.success() || !stdout.contains("1 passed") {
                problems.push(format!(
                    "blocks run in a private network namespace ({}) failed:\n{stdout}\n{stderr}",
                    unshare.join(" ")
                ));
            }
        }
        None => {
            println!("no private network namespace (unshare): running in the host's");
            problems.extend(run_server_blocks(&blocks));
        }
    }
    assert!(
        problems.is_empty(),
        "code blocks that do not run as written:\n{}",
        problems.join("\n")
    );
}

/// The blocks that need a server, run in this process's network; run by
/// [`code_blocks_in_readme_and_docs_run_as_written`] inside a private network namespace.
#[test]
#[ignore = "run by code_blocks_in_readme_and_docs_run_as_written, in a private network namespace"]
fn server_blocks_run_in_private_network() {
    let (blocks, _) = collect();
    let problems = run_server_blocks(&blocks);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// How to enter a private network namespace here, if one can be made (and its loopback
/// brought up).
fn private_network() -> Option<&'static [&'static str]> {
    const WAYS: [&[&str]; 2] = [&["unshare", "-n"], &["unshare", "-rn"]];
    WAYS.into_iter().find(|way| {
        Command::new(way[0])
            .args(&way[1..])
            .args(["ip", "link", "set", "lo", "up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn validate_yaml(block: &Block) -> Result<(), String> {
    let dir = temp_dir("docs-yaml");
    let file = dir.join("block.yaml");
    std::fs::write(&file, &block.body).unwrap();
    let out = Command::new(tollgate_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`tollgate validate` refuses it: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs every console, sh and python block, each against a fresh default server; returns the
/// problems.
fn run_server_blocks(blocks: &[(Kind, Block)]) -> Vec<String> {
    let work = Workdir::new();
    let python = sdk_python();
    let mut problems = Vec::new();
    for (kind, block) in blocks.iter().filter(|(k, _)| k.needs_server()) {
        if *kind == Kind::Python && python.is_none() {
            println!(
                "skipped (run scripts/setup-sdk.sh for the Python blocks): {}",
                block.at()
            );
            continue;
        }
        let started = Instant::now();
        let server = match DefaultServer::start(&work) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{}: {e}", block.at()));
                continue;
            }
        };
        let result = match kind {
            Kind::Console => run_console(&work, block),
            Kind::Sh => run_script(
                &work,
                Command::new("bash").args(["-euo", "pipefail"]),
                block,
            ),
            Kind::Python => run_script(&work, &mut Command::new(python.as_ref().unwrap()), block),
            _ => unreachable!("filtered by needs_server"),
        };
        let logs = server.stop();
        match result {
            Ok(()) => println!("ok ({:.1?}): {}", started.elapsed(), block.at()),
            Err(e) => problems.push(format!(
                "{}: {e}\nserver log:\n{}",
                block.at(),
                logs.join("\n")
            )),
        }
    }
    problems
}

/// The Python with aperture-py, or None (SDK tests off: not installed and not asked for).
fn sdk_python() -> Option<PathBuf> {
    let sdk = root().join(".sdk");
    let wanted = std::env::var("TOLLGATE_SDK_TESTS").is_ok_and(|v| v == "1");
    if !wanted && !sdk.exists() {
        return None;
    }
    assert!(
        sdk.join(".installed").exists(),
        "SDK tests requested but .sdk/ is not set up: run scripts/setup-sdk.sh"
    );
    Some(sdk.join("py/bin/python"))
}

/// A directory to run blocks in: `target/release/tollgate` and `bin/tollgate` are the binary
/// under test, and `bin` leads PATH.
struct Workdir {
    dir: PathBuf,
    path: String,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = temp_dir("docs-run");
        std::fs::create_dir_all(dir.join("target/release")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(tollgate_bin(), dir.join("target/release/tollgate")).unwrap();
        std::os::unix::fs::symlink(tollgate_bin(), dir.join("bin/tollgate")).unwrap();
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Workdir { dir, path }
    }

    fn command(&self, program: &mut Command) -> Command {
        let mut c = Command::new(program.get_program());
        c.args(program.get_args())
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tollgate serve` with no arguments: the embedded default policy on its default ports.
struct DefaultServer {
    child: Child,
    logs: mpsc::Receiver<String>,
}

impl DefaultServer {
    fn start(work: &Workdir) -> Result<DefaultServer, String> {
        let mut child = work
            .command(Command::new("tollgate").arg("serve"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting `tollgate serve`: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut early = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match logs.recv_timeout(left) {
                Ok(line) if line.contains("tollgate ready") => {
                    return Ok(DefaultServer { child, logs });
                }
                Ok(line) => early.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`tollgate serve` (default policy and ports) did not become ready; are \
                         ports 7070.. and 8089 free?\n{}",
                        early.join("\n")
                    ));
                }
            }
        }
    }

    /// SIGTERM, wait; the log lines it wrote after the ready line.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.logs.try_iter().collect()
    }
}

/// Runs `program FILE` with the block's body in FILE; exit 0 or the output.
fn run_script(work: &Workdir, program: &mut Command, block: &Block) -> Result<(), String> {
    let script = work.dir.join("block");
    std::fs::write(&script, &block.body).unwrap();
    let mut cmd = work.command(program);
    cmd.arg(&script);
    let (ok, output) = run_bounded(cmd)?;
    if ok {
        Ok(())
    } else {
        Err(format!("failed:\n{output}"))
    }
}

/// Runs `cmd` within [`BLOCK_TIMEOUT`]: (success, stdout and stderr as written).
fn run_bounded(mut cmd: Command) -> Result<(bool, String), String> {
    let (read, write) = std::io::pipe().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdout(write.try_clone().map_err(|e| e.to_string())?)
        .stderr(write)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    // `cmd` holds our copies of the pipe's write ends: drop them, so that the reader sees EOF
    // when the child (and anything it left running) closes its copies.
    drop(cmd);
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(read), &mut s);
        let _ = done.send(s);
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {BLOCK_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match output.recv_timeout(OUTPUT_GRACE) {
        Ok(text) => Ok((status.success(), text)),
        Err(_) => Err(format!(
            "exited ({status}), but something it started still holds its output open after \
             {OUTPUT_GRACE:?}: a block must stop what it starts"
        )),
    }
}

/// Marks the start of command `n`'s output in a transcript run (ASCII record separator:
/// never in the output of the documented commands).
const MARK: char = '\u{1e}';

/// Runs a `console` transcript in one bash session and compares each command's output.
fn run_console(work: &Workdir, block: &Block) -> Result<(), String> {
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.body.lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => commands.push((cmd.to_string(), Vec::new())),
            None => match commands.last_mut() {
                Some((_, expected)) => expected.push(line.to_string()),
                None => return Err(format!("a transcript starts with `$ `, not {line:?}")),
            },
        }
    }
    // Each command is preceded by a marker; `$?` is carried over the marker so that a
    // documented `echo $?` sees the previous command's status.
    let mut script = String::from("exec 2>&1\n");
    for (n, (cmd, _)) in commands.iter().enumerate() {
        script.push_str(&format!(
            "__status=$?; printf '{MARK}{n}\\n'; (exit $__status)\n{cmd}\n"
        ));
    }
    let path = work.dir.join("transcript.sh");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(script.as_bytes()).unwrap();
    drop(f);
    let (_, output) = run_bounded(work.command(Command::new("bash").arg(&path)))?;
    let mut outputs = output.split(MARK);
    let before = outputs.next().unwrap_or_default();
    if !before.is_empty() {
        return Err(format!("output before the first command: {before:?}"));
    }
    for (n, (cmd, expected)) in commands.iter().enumerate() {
        let actual = outputs.next().unwrap_or_default();
        let actual = actual
            .strip_prefix(&format!("{n}\n"))
            .ok_or_else(|| format!("transcript output out of step at `$ {cmd}`: {actual:?}"))?;
        let actual: Vec<&str> = trimmed_lines(actual);
        let expected = expected.join("\n");
        let expected: Vec<&str> = trimmed_lines(&expected);
        if !lines_match(&expected, &actual) {
            return Err(format!(
                "`$ {cmd}` printed\n{}\nbut the transcript says\n{}",
                actual.join("\n"),
                expected.join("\n")
            ));
        }
    }
    Ok(())
}

/// Lines without trailing blanks, trailing empty lines dropped.
fn trimmed_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Whether `actual` matches `expected`, where a line of just `...` matches any number of
/// lines and `...` inside a line matches any text.
fn lines_match(expected: &[&str], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((&"...", rest)) => (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..])),
        Some((line, rest)) => {
            !actual.is_empty() && line_matches(line, actual[0]) && lines_match(rest, &actual[1..])
        }
    }
}

/// Whether `actual` matches `pattern`, where each `...` matches any text.
fn line_matches(pattern: &str, actual: &str) -> bool {
    let mut pieces = pattern.split("...");
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[test]
fn the_harness_reads_fences_and_patterns_as_documented() {
    let md = "text\n```console\n$ a\nb\n```\n  ~~~~ sh not-tested\n  x\n  ~~~\n  ~~~~\n```\nbare\n";
    let blocks = fenced_blocks("f.md", md);
    let seen: Vec<(usize, &str, &str)> = blocks
        .iter()
        .map(|b| (b.line, b.info.as_str(), b.body.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (2, "console", "$ a\nb"),
            (6, "sh not-tested", "x\n~~~"),
            (10, "", "bare")
        ]
    );
    assert_eq!(classify("rust,no_run"), Ok(Kind::Rust));
    assert_eq!(classify("yaml not-tested"), Ok(Kind::NotTested));
    assert!(classify("").is_err());
    assert!(classify("json").is_err());
    assert!(classify("rust ignore").is_err());

    assert!(line_matches("{\"a\":1,...}", "{\"a\":1,\"b\":2}"));
    assert!(line_matches("x...y...z", "x1y2z"));
    assert!(!line_matches("x...y...z", "x1z"));
    assert!(!line_matches("ab...ba", "aba"), "pieces may not overlap");
    assert!(line_matches("exact", "exact"));
    assert!(!line_matches("exact", "exactly"));
    assert!(lines_match(&["a", "...", "z"], &["a", "b", "c", "z"]));
    assert!(lines_match(&["a", "...", "z"], &["a", "z"]));
    assert!(!lines_match(&["a", "z"], &["a", "b", "z"]));
}
