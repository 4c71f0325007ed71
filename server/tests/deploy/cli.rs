//! What the `tollgate` binary itself says it accepts: its subcommands and `serve` flags (from
//! `--help`), its version, and whether it accepts a config file (`tollgate validate`). The
//! deployment files are checked against these rather than against the config structs, so
//! the checks follow the binary wherever its code moves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// `tollgate ARGS...`: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text of `tollgate ARGS... --help`.
pub fn help(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let (code, stdout, stderr) = run(&all);
    assert_eq!(code, 0, "tollgate {all:?} failed: {stderr}");
    stdout
}

/// The subcommands `tollgate --help` lists.
pub fn subcommands() -> BTreeSet<String> {
    let text = help(&[]);
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every option `tollgate SUBCOMMAND --help` documents (`--flag` and its `-f` short form),
/// and whether it takes a value (`--flag <VALUE>`).
pub fn flags(subcommand: &str) -> BTreeMap<String, bool> {
    let mut flags = BTreeMap::new();
    for raw in help(&[subcommand]).lines() {
        let line = raw.trim_start();
        // clap indents a flag by 2 (short form) or 6 spaces; a wrapped description line is
        // indented to the description column and may start with a flag it mentions.
        if !line.starts_with('-') || raw.len() - line.len() > 6 {
            continue;
        }
        // clap: "-c, --config <CONFIG>  Description", the spec ends at the first double space.
        let spec = line.split("  ").next().unwrap_or(line);
        let takes_value = spec.contains('<');
        for name in spec.split_whitespace().filter(|w| w.starts_with('-')) {
            flags.insert(name.trim_end_matches(',').to_string(), takes_value);
        }
    }
    flags
}

/// The version `tollgate --version` reports.
pub fn version() -> String {
    let (code, stdout, stderr) = run(&["--version"]);
    assert_eq!(code, 0, "tollgate --version failed: {stderr}");
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {stdout:?}"))
        .to_string()
}

/// Asserts `tollgate validate FILE` accepts the file.
pub fn assert_valid(file: &Path) {
    let (code, stdout, stderr) = run(&["validate", &file.display().to_string()]);
    assert_eq!(
        code,
        0,
        "tollgate validate {} rejected it:\n{stdout}{stderr}",
        file.display()
    );
}

/// Checks one command line (`[subcommand, args...]`) against the binary: the subcommand
/// exists and every flag it passes is one that subcommand documents. Returns the arguments
/// as (flag, value) pairs: `("--config", "FILE")`, `("--json", "")` for a flag without a
/// value, `("", "FILE")` for a positional argument.
pub fn check_command_line(args: &[String], origin: &str) -> Vec<(String, String)> {
    let subcommand = args
        .first()
        .unwrap_or_else(|| panic!("{origin}: no subcommand"));
    assert!(
        subcommands().contains(subcommand),
        "{origin}: `{subcommand}` is not a subcommand of `tollgate --help`"
    );
    let known = flags(subcommand);
    let mut pairs = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if !arg.starts_with('-') {
            pairs.push((String::new(), arg.clone()));
            continue;
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let takes_value = *known.get(flag).unwrap_or_else(|| {
            panic!("{origin}: `{flag}` is not in `tollgate {subcommand} --help`")
        });
        let value = match (takes_value, inline_value) {
            (true, Some(value)) => value,
            (true, None) => rest
                .next()
                .unwrap_or_else(|| panic!("{origin}: `{flag}` needs a value"))
                .clone(),
            (false, None) => String::new(),
            (false, Some(_)) => panic!("{origin}: `{flag}` takes no value"),
        };
        pairs.push((flag.to_string(), value));
    }
    pairs
}
