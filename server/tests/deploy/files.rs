//! Reading the deployment files: YAML (every document of a file), the Dockerfile's stages,
//! a systemd unit's `Key=value` lines, and fenced blocks of Markdown. Plain parsers of just
//! what the checks need; each failure names the file.

use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

/// The repository root (the workspace above `server/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// A file under the repository root, as text.
pub fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` (relative to the root), recursively, as paths relative to the root.
pub fn files_under(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("under the root");
                out.push(relative.display().to_string());
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root.join(dir), &root, &mut out);
    out.sort();
    out
}

/// Every document of a YAML file (a `---`-separated stream), empty documents left out.
pub fn yaml_documents(relative: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(relative);
    let mut documents = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{relative}: document {}: {e}", i + 1));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

/// The value at a dotted path (`spec.template.spec`), if every step exists.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The string at a dotted path; panics naming the path when absent or not a string.
pub fn get_str<'v>(value: &'v Value, path: &str, origin: &str) -> &'v str {
    get(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{origin}: `{path}` is missing or not a string"))
}

/// The sequence at a dotted path (empty when absent).
pub fn get_seq<'v>(value: &'v Value, path: &str) -> &'v [Value] {
    get(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// One instruction of a Dockerfile: `RUN`, `COPY`, ... and its arguments, continuation
/// lines joined.
#[derive(Debug)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

/// One stage: its `FROM` image, its `AS` name and its instructions after `FROM`.
#[derive(Debug)]
pub struct Stage {
    pub image: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The arguments of every instruction with this keyword.
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    }

    /// The arguments of the one instruction with this keyword.
    pub fn one(&self, keyword: &str) -> &str {
        match self.all(keyword).as_slice() {
            [one] => one,
            other => panic!(
                "Dockerfile stage {}: expected one {keyword}, found {}",
                self.image,
                other.len()
            ),
        }
    }
}

/// The stages of a Dockerfile, in order.
pub fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().map_or(String::new(), |w| w.to_string()),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("Dockerfile: {keyword} before the first FROM"))
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    stages
}

/// A JSON-form (exec-form) instruction argument: `["a", "b"]`.
pub fn exec_form(args: &str, origin: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{origin}: `{args}` is not exec form (a JSON array): {e}"))
}

/// The `Key=value` lines of one `[Section]` of a systemd unit, in order.
pub fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let header = format!("[{section}]");
    text.lines()
        .map(str::trim)
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The one value of `key` in a unit section; panics naming the key when absent or repeated.
pub fn unit_value<'a>(entries: &'a [(String, String)], key: &str) -> &'a str {
    let values: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    match values.as_slice() {
        [one] => one,
        other => panic!("systemd unit: expected one {key}=, found {}", other.len()),
    }
}

/// A fenced code block of a Markdown file: its info string (`yaml`, `sh`, ...) and body.
#[derive(Debug)]
pub struct Fence {
    pub info: String,
    pub body: String,
}

/// Every fenced (```) code block of a Markdown text.
pub fn fences(markdown: &str) -> Vec<Fence> {
    let mut fences = Vec::new();
    let mut open: Option<Fence> = None;
    for line in markdown.lines() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Fence {
                    info: info.trim().to_string(),
                    body: String::new(),
                })
            }
            (Some(_), Some(_)) => fences.extend(open.take()),
            (Some(fence), None) => {
                fence.body.push_str(line);
                fence.body.push('\n');
            }
            (None, None) => {}
        }
    }
    fences
}
