//! The architecture, checked: `src/` is read as text and every `crate::`
//! path a file names must point down the layers (or sideways within one),
//! `worker` and `coordinator` never import each other, and no function is
//! longer than 80 lines.
//!
//! ```text
//! binary   main.rs, cli/, up.rs            (not in the library)
//! top      client, sidecar
//! roles    worker/, coordinator/, pool/    (never each other)
//! handler  handler
//! store    store/, config
//! wire     wire/ (ids, subjects, protocol)
//! base     error, shutdown, connect
//! ```

use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;

/// Functions longer than `MAX_FN_LINES` that are still to be split. The
/// list may only shrink: an entry that is short now fails the test too.
const TOO_LONG_FOR_NOW: &[&str] = &[];

/// The layer of a module by its first path segment under `crate::`.
fn layer_of_module(first: &str) -> Option<(u8, &'static str)> {
    Some(match first {
        "error" | "shutdown" | "connect" => (0, "base"),
        "wire" | "protocol" | "subjects" => (1, "wire"),
        "store" | "config" | "checkpoint" | "discovery" => (2, "store"),
        "handler" => (3, "handler"),
        "worker" => (4, "worker"),
        "coordinator" => (4, "coordinator"),
        "pool" => (4, "pool"),
        "client" | "sidecar" => (5, "top"),
        "cli" | "up" => (6, "binary"),
        _ => return None,
    })
}

/// The layer of a source file, from its path under `src/`.
fn layer_of_file(rel: &Path) -> Option<(u8, &'static str)> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let stem = first.strip_suffix(".rs").unwrap_or(first);
    match stem {
        "lib" => None,
        "main" => Some((6, "binary")),
        s => layer_of_module(s),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments, string and char literals blanked out (so
/// braces and `crate::` inside them do not count), lines kept.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: u8| if c == b'\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                out.push(blank(b[i]));
                i += 1;
            }
            out.push_str("  ");
            i += 2;
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            j += 1;
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            j += close.len();
            for &x in &b[i..j.min(b.len())] {
                out.push(blank(x));
            }
            i = j;
        } else if c == b'"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '{'), not a lifetime ('a).
            let lit = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|&x| x == b'\'').map(|p| p + 3)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(3)
            } else {
                None
            };
            match lit {
                Some(n) => {
                    out.push_str(&" ".repeat(n));
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// `crate::a::b` paths named in the code, with their line numbers.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let tail = &rest[i + 7..];
            rest = tail;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `jetweave_crate::`
            }
            let name: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `use crate::{a, b}`: every first segment in the braces.
                if let Some(group) = tail.strip_prefix('{') {
                    for part in group.split(',') {
                        let seg: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !seg.is_empty() {
                            out.push((n + 1, seg));
                        }
                    }
                }
                continue;
            }
            out.push((n + 1, name));
        }
    }
    out
}

/// (name, first line, line count) of every `fn` with a body.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(pos) = t.find("fn ") else { continue };
        let head = &t[..pos];
        let is_fn = head.split_whitespace().all(|w| {
            matches!(w, "pub" | "async" | "const" | "unsafe" | "extern") || w.starts_with("pub(")
        });
        if !is_fn {
            continue;
        }
        let name: String = t[pos + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // Find the body's opening brace (or a `;` for a declaration).
        let mut depth = 0i32;
        let mut opened = false;
        let mut end = None;
        'scan: for (k, l) in lines.iter().enumerate().skip(start) {
            for ch in l.chars() {
                match ch {
                    ';' if !opened && depth == 0 => break 'scan,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = Some(k);
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = end {
            out.push((name, start + 1, e - start + 1));
        }
    }
    out
}

fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(&src).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn imports_point_down_the_layers() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        let Some((layer, role)) = layer_of_file(&rel) else {
            continue;
        };
        if layer == 6 {
            continue; // the binary may use anything
        }
        for (line, first) in crate_paths(&code_only(&text)) {
            let Some((to, to_role)) = layer_of_module(&first) else {
                if first.chars().next().is_some_and(char::is_uppercase) {
                    bad.push(format!(
                        "{}:{line}: crate::{first}: name the module path, not lib.rs's re-export",
                        rel.display()
                    ));
                }
                continue;
            };
            if to > layer {
                bad.push(format!(
                    "{}:{line}: {role} imports crate::{first} ({to_role}, a layer up)",
                    rel.display()
                ));
            } else if to == layer && to == 4 && role != to_role {
                bad.push(format!(
                    "{}:{line}: {role} imports crate::{first}: worker and coordinator talk over subjects",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let mut long = Vec::new();
    let mut seen_allowed = Vec::new();
    for (rel, text) in sources() {
        for (name, line, len) in functions(&code_only(&text)) {
            let id = format!("{}::{name}", rel.display());
            if len > MAX_FN_LINES {
                if TOO_LONG_FOR_NOW.contains(&id.as_str()) {
                    seen_allowed.push(id);
                } else {
                    long.push(format!(
                        "{}:{line}: fn {name} is {len} lines",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
    for id in TOO_LONG_FOR_NOW {
        assert!(
            seen_allowed.iter().any(|s| s == id),
            "{id} is short now (or gone): take it off TOO_LONG_FOR_NOW"
        );
    }
}

/// The checker itself: it sees through comments and strings, finds
/// grouped imports, and measures a function.
#[test]
fn the_checker_reads_rust() {
    let src = "use crate::{wire, store::x};\n// crate::worker\nlet s = \"crate::sidecar {\";\nlet c = '{';\nfn f<'a>(x: &'a str) {\n    if x.is_empty() {\n    }\n}\n";
    let code = code_only(src);
    let paths: Vec<String> = crate_paths(&code).into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths, ["wire", "store"]);
    assert_eq!(functions(&code), [("f".to_string(), 5, 4)]);
}
