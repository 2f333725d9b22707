//! The layering rules of `/work/shared/STYLE.md`, checked on the source itself:
//! no module imports one that imports it back, nothing but the store writes SQL on the log and
//! its side tables, and the domain has no I/O crate under it.
//!
//! Plain std: a small Rust lexer (comments, string and char literals, identifiers, punctuation)
//! is enough to see `crate::`/`super::` paths, `mod` declarations, `#[cfg(test)]` items and the
//! text of string literals.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace this run's `cargo test` was started in (cargo sets the variable for the run too).
fn workspace_root() -> PathBuf {
    let testkit = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&testkit).parent().unwrap().to_path_buf()
}

/// The member directories of the root `Cargo.toml`, without the fuzz targets and the peers of
/// the benchmark (`bench/`), which are tooling with their own rules.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = manifest
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.trim_start().starts_with("members"))
        .map(|(at, _)| at)
        .expect("the root Cargo.toml lists its members");
    let list = &manifest[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    let members: Vec<String> = list
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty() && m != "fuzz" && !m.starts_with("bench/"))
        .collect();
    assert!(
        members.len() > 3,
        "members not read from the root Cargo.toml: {members:?}"
    );
    members
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The lexer.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// The text of a string literal (escapes `\n`, `\t`, `\r` and line continuations read as space).
    Str(String),
    /// Numbers, chars and lifetimes: nothing these checks look at.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn lex(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            let (text, end, lines) = quoted(&chars, i + 1);
            tokens.push(Token {
                tok: Tok::Str(text),
                line: start_line,
            });
            line += lines;
            i = end;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char: past the quote, the backslash and the escaped char, then up to
                // the closing quote.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label.
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
            tokens.push(Token {
                tok: Tok::Other,
                line: start_line,
            });
        } else if c.is_alphabetic() || c == '_' {
            let begin = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[begin..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
            if raw_prefix && at(i + hashes) == '"' {
                // A raw string: up to a quote followed by as many hashes.
                let body = i + hashes + 1;
                let mut end = body;
                while end < chars.len() && !(chars[end] == '"' && (1..=hashes).all(|h| at(end + h) == '#')) {
                    end += 1;
                }
                let text: String = chars[body..end.min(chars.len())].iter().collect();
                line += text.matches('\n').count();
                tokens.push(Token {
                    tok: Tok::Str(text),
                    line: start_line,
                });
                i = end + 1 + hashes;
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                let (text, end, lines) = quoted(&chars, i + 1);
                tokens.push(Token {
                    tok: Tok::Str(text),
                    line: start_line,
                });
                line += lines;
                i = end;
            } else if word == "b" && at(i) == '\'' {
                // A byte char: b'x' or b'\n'.
                i += if at(i + 1) == '\\' { 3 } else { 2 };
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                tokens.push(Token {
                    tok: Tok::Other,
                    line: start_line,
                });
            } else if word == "r" && at(i) == '#' && (at(i + 1).is_alphabetic() || at(i + 1) == '_') {
                // A raw identifier: r#type.
                let begin = i + 1;
                i = begin;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                tokens.push(Token {
                    tok: Tok::Ident(chars[begin..i].iter().collect()),
                    line: start_line,
                });
            } else {
                tokens.push(Token {
                    tok: Tok::Ident(word),
                    line: start_line,
                });
            }
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Other,
                line: start_line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                tok: Tok::PathSep,
                line: start_line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                tok: Tok::Punct(c),
                line: start_line,
            });
            i += 1;
        }
    }
    tokens
}

/// A quoted string's text from `start` (after the opening quote): (text, index after the
/// closing quote, newlines inside).
fn quoted(chars: &[char], start: usize) -> (String, usize, usize) {
    let mut text = String::new();
    let mut lines = 0;
    let mut i = start;
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\n' {
            lines += 1;
        }
        if chars[i] == '\\' && i + 1 < chars.len() {
            let escaped = chars[i + 1];
            match escaped {
                'n' | 't' | 'r' | '\n' => text.push(' '),
                other => text.push(other),
            }
            if escaped == '\n' {
                lines += 1;
            }
            i += 2;
        } else {
            text.push(chars[i]);
            i += 1;
        }
    }
    (text, i + 1, lines)
}

fn is_ident(tokens: &[Token], i: usize, name: &str) -> bool {
    matches!(tokens.get(i), Some(Token { tok: Tok::Ident(n), .. }) if n == name)
}

fn is_punct(tokens: &[Token], i: usize, c: char) -> bool {
    matches!(tokens.get(i), Some(Token { tok: Tok::Punct(p), .. }) if *p == c)
}

fn is_path_sep(tokens: &[Token], i: usize) -> bool {
    matches!(tokens.get(i), Some(Token { tok: Tok::PathSep, .. }))
}

fn ident_at(tokens: &[Token], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some(Token { tok: Tok::Ident(n), .. }) => Some(n),
        _ => None,
    }
}

/// The tokens without the items under `#[cfg(test)]` (test modules, test-only imports).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let cfg_test = |i: usize| {
        is_punct(&tokens, i, '#')
            && is_punct(&tokens, i + 1, '[')
            && is_ident(&tokens, i + 2, "cfg")
            && is_punct(&tokens, i + 3, '(')
            && is_ident(&tokens, i + 4, "test")
            && is_punct(&tokens, i + 5, ')')
            && is_punct(&tokens, i + 6, ']')
    };
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !cfg_test(i) {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        // Skip the attribute, the item's other attributes, then the item: up to a `;` (or the
        // `,` of a field) outside any brackets, the `}` that closes its body, or the end of what
        // encloses it.
        i += 7;
        let mut depth = 0i32;
        let mut opened_body = false;
        while i < tokens.len() {
            match &tokens[i].tok {
                Tok::Punct('(' | '[') => depth += 1,
                Tok::Punct('{') => {
                    depth += 1;
                    opened_body = true;
                }
                Tok::Punct(')' | ']') => depth -= 1,
                Tok::Punct('}') if depth == 0 => break,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 && opened_body {
                        i += 1;
                        break;
                    }
                }
                Tok::Punct(';' | ',') if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    kept
}

// ---------------------------------------------------------------------------------------------
// Modules and the paths between them.

/// Where one module refers to another.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
}

/// One file of a crate: its module path (empty for the crate root) and its tokens.
struct ModuleFile {
    path: Vec<String>,
    file: PathBuf,
    tokens: Vec<Token>,
}

/// The files of the crate whose root is `root`, found by following its `mod` declarations.
fn crate_files(root: &Path) -> Vec<ModuleFile> {
    let mut files = Vec::new();
    let mut queue = VecDeque::from([(
        root.to_path_buf(),
        Vec::<String>::new(),
        root.parent().unwrap().to_path_buf(),
    )]);
    while let Some((file, path, children_dir)) = queue.pop_front() {
        let Ok(source) = std::fs::read_to_string(&file) else {
            continue;
        };
        let tokens = without_test_items(lex(&source));
        for (inline, name) in mod_declarations(&tokens) {
            let dir = inline.iter().fold(children_dir.clone(), |d, m| d.join(m));
            let mut child_path = path.clone();
            child_path.extend(inline.iter().cloned());
            child_path.push(name.clone());
            let flat = dir.join(format!("{name}.rs"));
            let nested = dir.join(&name).join("mod.rs");
            if flat.exists() {
                queue.push_back((flat, child_path, dir.join(&name)));
            } else if nested.exists() {
                queue.push_back((nested, child_path, dir.join(&name)));
            }
        }
        files.push(ModuleFile { path, file, tokens });
    }
    files
}

/// `mod name;` declarations of a file, each with the inline modules it sits in.
fn mod_declarations(tokens: &[Token]) -> Vec<(Vec<String>, String)> {
    let mut found = Vec::new();
    walk_modules(tokens, |i, inline| {
        if is_ident(tokens, i, "mod") && is_punct(tokens, i + 2, ';') {
            if let Some(name) = ident_at(tokens, i + 1) {
                found.push((inline.to_vec(), name.to_string()));
            }
        }
    });
    found
}

/// Calls `visit(i, inline modules around token i)` for every token, tracking `mod name { ... }`.
fn walk_modules(tokens: &[Token], mut visit: impl FnMut(usize, &[String])) {
    let mut depth = 0usize;
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for i in 0..tokens.len() {
        visit(i, &names);
        match tokens[i].tok {
            Tok::Punct('{') => {
                depth += 1;
                if i >= 2 && is_ident(tokens, i - 2, "mod") {
                    if let Some(name) = ident_at(tokens, i - 1) {
                        inline.push((name.to_string(), depth));
                        names.push(name.to_string());
                    }
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                    names.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
}

/// The first segments of the group that starts at `open` (a `{`): `{a, b::c, d as e}` → a, b, d.
fn group_heads(tokens: &[Token], open: usize) -> Vec<(String, usize)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match &token.tok {
            Tok::Punct('{') => {
                depth += 1;
                if depth == 1 {
                    expect_head = true;
                }
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(',') if depth == 1 => expect_head = true,
            Tok::Ident(name) if depth == 1 && expect_head => {
                heads.push((name.clone(), i));
                expect_head = false;
            }
            _ if depth == 1 => expect_head = false,
            _ => {}
        }
    }
    heads
}

/// What a crate's root declares: its top-level modules, and which of them each name it
/// re-exports comes from (`pub use envelope::{decode, ...}` → decode: envelope).
struct CrateRoot {
    modules: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
}

impl CrateRoot {
    fn read(root: &ModuleFile) -> CrateRoot {
        let tokens = &root.tokens;
        let mut modules = BTreeSet::new();
        walk_modules(tokens, |i, inline| {
            if inline.is_empty() && is_ident(tokens, i, "mod") {
                if let Some(name) = ident_at(tokens, i + 1) {
                    if is_punct(tokens, i + 2, ';') || is_punct(tokens, i + 2, '{') {
                        modules.insert(name.to_string());
                    }
                }
            }
        });
        let mut reexports = BTreeMap::new();
        for (i, _) in tokens.iter().enumerate().filter(|(i, _)| is_ident(tokens, *i, "use")) {
            let mut j = i + 1;
            while is_ident(tokens, j, "crate") || is_ident(tokens, j, "self") {
                j += 2;
            }
            let Some(module) = ident_at(tokens, j).filter(|m| modules.contains(*m)) else {
                continue;
            };
            // Every name the statement binds comes from that module.
            let mut k = j + 1;
            while k < tokens.len() && !is_punct(tokens, k, ';') {
                if let Some(name) = ident_at(tokens, k) {
                    if !is_path_sep(tokens, k + 1) && name != "as" && name != "self" {
                        reexports.insert(name.to_string(), module.to_string());
                    }
                }
                k += 1;
            }
        }
        CrateRoot { modules, reexports }
    }

    /// The top-level module a name at the crate root stands for, if it is one of ours.
    fn resolve(&self, name: &str) -> Option<String> {
        if self.modules.contains(name) {
            Some(name.to_string())
        } else {
            self.reexports.get(name).cloned()
        }
    }
}

/// Edges between the top-level modules of one crate: (from, to) → where.
type Edges = BTreeMap<(String, String), Vec<Site>>;

fn module_edges(files: &[ModuleFile]) -> Edges {
    let root = CrateRoot::read(&files[0]);
    let mut edges = Edges::new();
    for module in files {
        let tokens = &module.tokens;
        walk_modules(tokens, |i, inline| {
            let mut here = module.path.clone();
            here.extend(inline.iter().cloned());
            let Some(from) = here.first().cloned() else { return };
            // Targets named at the crate root: after `crate::`, or after enough `super::`.
            let mut at_root = None;
            if is_ident(tokens, i, "crate") && is_path_sep(tokens, i + 1) {
                at_root = Some(i + 2);
            } else if is_ident(tokens, i, "super")
                && is_path_sep(tokens, i + 1)
                && !(i > 0 && is_path_sep(tokens, i - 1))
            {
                let mut supers = 0;
                let mut j = i;
                while is_ident(tokens, j, "super") && is_path_sep(tokens, j + 1) {
                    supers += 1;
                    j += 2;
                }
                if supers == here.len() {
                    at_root = Some(j);
                }
            }
            let Some(next) = at_root else { return };
            let names = if is_punct(tokens, next, '{') {
                group_heads(tokens, next)
            } else {
                ident_at(tokens, next)
                    .map(|n| (n.to_string(), next))
                    .into_iter()
                    .collect()
            };
            for (name, _) in names {
                if let Some(to) = root.resolve(&name) {
                    if to != from {
                        edges.entry((from.clone(), to)).or_default().push(Site {
                            file: relative(&module.file),
                            line: tokens[i].line,
                        });
                    }
                }
            }
        });
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let next = |n: &String| -> Vec<&String> { edges.keys().filter(|(a, _)| a == n).map(|(_, b)| b).collect() };
    struct State<'a> {
        index: BTreeMap<&'a String, usize>,
        low: BTreeMap<&'a String, usize>,
        stack: Vec<&'a String>,
        on_stack: BTreeSet<&'a String>,
        components: Vec<Vec<String>>,
    }
    fn visit<'a>(n: &'a String, s: &mut State<'a>, next: &dyn Fn(&'a String) -> Vec<&'a String>) {
        let i = s.index.len();
        s.index.insert(n, i);
        s.low.insert(n, i);
        s.stack.push(n);
        s.on_stack.insert(n);
        for m in next(n) {
            if !s.index.contains_key(m) {
                visit(m, s, next);
                let low = s.low[n].min(s.low[m]);
                s.low.insert(n, low);
            } else if s.on_stack.contains(m) {
                let low = s.low[n].min(s.index[m]);
                s.low.insert(n, low);
            }
        }
        if s.low[n] == s.index[n] {
            let mut component = Vec::new();
            while let Some(m) = s.stack.pop() {
                s.on_stack.remove(m);
                component.push(m.clone());
                if m == n {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.components.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for n in nodes {
        if !state.index.contains_key(n) {
            visit(n, &mut state, &next);
        }
    }
    state.components
}

/// One shortest cycle through the first module of a component: [a, b, ..., a].
fn a_cycle(component: &[String], edges: &Edges) -> Vec<String> {
    let start = &component[0];
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for (a, b) in edges.keys() {
            if a != n || !component.contains(b) {
                continue;
            }
            if b == start {
                let mut back = vec![n.clone()];
                let mut at = n;
                while at != start {
                    at = came_from[at];
                    back.push(at.clone());
                }
                back.reverse();
                back.push(start.clone());
                return back;
            }
            if !came_from.contains_key(b) {
                came_from.insert(b, n);
                queue.push_back(b);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its modules")
}

/// The crate roots of a member: its library, its binary and `src/bin/*`.
fn crate_roots(member: &Path) -> Vec<PathBuf> {
    let src = member.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| p.exists())
        .collect();
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = bins
            .flatten()
            .map(|e| e.path())
            .map(|p| if p.is_dir() { p.join("main.rs") } else { p })
            .filter(|p| p.extension().is_some_and(|e| e == "rs") && p.exists())
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}

fn describe_cycles(crate_name: &str, edges: &Edges) -> String {
    let mut report = String::new();
    for component in cycles(edges) {
        let cycle = a_cycle(&component, edges);
        let _ = writeln!(report, "{crate_name}: {}", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let sites = &edges[&(pair[0].clone(), pair[1].clone())];
            let places: Vec<String> = sites.iter().map(|s| format!("{}:{}", s.file, s.line)).collect();
            let _ = writeln!(report, "    {} → {}: {}", pair[0], pair[1], places.join(", "));
        }
        if component.len() > 2 {
            let _ = writeln!(
                report,
                "    (modules of that cycle's component: {})",
                component.join(", ")
            );
        }
    }
    report
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = workspace_root();
    let mut report = String::new();
    let mut crates = 0;
    for member in members(&root) {
        for crate_root in crate_roots(&root.join(&member)) {
            let files = crate_files(&crate_root);
            let edges = module_edges(&files);
            crates += 1;
            report.push_str(&describe_cycles(&relative(&crate_root), &edges));
        }
    }
    assert!(crates > 3, "no crate found under the members");
    assert!(
        report.is_empty(),
        "modules that import one that imports them back (cycle, then where each step imports):\n{report}"
    );
}

#[test]
fn the_module_graph_sees_crate_super_and_group_paths() {
    let source = r#"
        use crate::{alpha, beta::Thing};
        use super::gamma;
        fn f() { crate::delta::run(); }
        pub(super) fn g() {}
        #[cfg(test)]
        mod tests { use crate::epsilon; }
    "#;
    let files = vec![
        ModuleFile {
            path: vec![],
            file: PathBuf::from("lib.rs"),
            tokens: lex("mod alpha; mod beta; mod gamma; mod delta; mod epsilon; mod here; pub use delta::Runner;"),
        },
        ModuleFile {
            path: vec!["here".into()],
            file: PathBuf::from("here.rs"),
            tokens: without_test_items(lex(source)),
        },
    ];
    let edges = module_edges(&files);
    let kept = without_test_items(lex("struct S { #[cfg(test)] a: crate::x::A, b: u8 } use crate::y;"));
    assert!(kept.iter().any(|t| t.tok == Tok::Ident("b".into())));
    assert!(kept.iter().any(|t| t.tok == Tok::Ident("y".into())));
    assert!(!kept.iter().any(|t| t.tok == Tok::Ident("x".into())));
    let targets: Vec<&str> = edges.keys().map(|(_, to)| to.as_str()).collect();
    assert_eq!(targets, ["alpha", "beta", "delta", "gamma"]);

    let mut looped = edges.clone();
    looped.insert(("delta".into(), "here".into()), vec![]);
    assert_eq!(cycles(&looped), vec![vec!["delta".to_string(), "here".to_string()]]);
    assert_eq!(a_cycle(&cycles(&looped)[0], &looped), ["delta", "here", "delta"]);
}

// ---------------------------------------------------------------------------------------------
// SQL on the log's tables.

const LOG_TABLES: [&str; 5] = [
    "events",
    "outbox",
    "idempotency_keys",
    "reservation_deadlines",
    "projection_checkpoints",
];

/// Whether `text` names one of the log's tables as a table in SQL: after `FROM`, `INTO`,
/// `UPDATE`, `JOIN`, `TABLE` or `TRUNCATE` (optionally `ONLY`, `IF [NOT] EXISTS`, a `public.`
/// schema, double quotes), case-insensitively.
fn names_a_log_table(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    // Words with what separates each from the previous one.
    let mut words: Vec<(&str, &str)> = Vec::new();
    let mut rest = lower.as_str();
    while !rest.is_empty() {
        let gap = rest
            .find(|c: char| c.is_alphanumeric() || c == '_')
            .unwrap_or(rest.len());
        let (separator, after) = rest.split_at(gap);
        let len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let (word, after) = after.split_at(len);
        if !word.is_empty() {
            words.push((separator, word));
        }
        rest = after;
    }
    let blank = |s: &str| s.chars().all(|c| c.is_whitespace() || c == '"');
    for (i, (_, word)) in words.iter().enumerate() {
        if !matches!(*word, "from" | "into" | "update" | "join" | "table" | "truncate") {
            continue;
        }
        let mut j = i + 1;
        while j < words.len() && blank(words[j].0) && matches!(words[j].1, "only" | "if" | "not" | "exists") {
            j += 1;
        }
        if j + 1 < words.len() && blank(words[j].0) && words[j].1 == "public" && words[j + 1].0.trim_matches('"') == "."
        {
            j += 1;
            if let Some(table) = LOG_TABLES.iter().find(|t| **t == words[j].1) {
                return Some(table);
            }
            continue;
        }
        if j < words.len() && blank(words[j].0) {
            if let Some(table) = LOG_TABLES.iter().find(|t| **t == words[j].1) {
                return Some(table);
            }
        }
    }
    None
}

/// `file:line: table in "literal"` for every string literal of `files` that names a log table.
fn sql_on_the_log(files: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(file).unwrap();
        for token in lex(&source) {
            if let Tok::Str(text) = &token.tok {
                if let Some(table) = names_a_log_table(text) {
                    let shown: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    let shown: String = shown.chars().take(100).collect();
                    found.push(format!("{}:{}: {table} in \"{shown}\"", relative(file), token.line));
                }
            }
        }
    }
    found
}

#[test]
fn no_sql_on_the_log_outside_the_store() {
    let root = workspace_root();
    let mut files = Vec::new();
    for member in members(&root).into_iter().filter(|m| m != "store") {
        rust_files(&root.join(member).join("src"), &mut files);
    }
    files.sort();
    assert!(files.len() > 20, "the crates' sources were not found");
    let found = sql_on_the_log(&files);
    assert!(
        found.is_empty(),
        "SQL on the log and its side tables belongs in surge-store (store/); found:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_sql_detector_reads_sql_not_prose() {
    for sql in [
        "SELECT position FROM events WHERE stream_id = $1",
        "insert into outbox (position) select position from x",
        "DELETE FROM \"idempotency_keys\" WHERE key = $1",
        "UPDATE public.reservation_deadlines SET due = now()",
        "SELECT 1 FROM x JOIN projection_checkpoints c ON true",
        "TRUNCATE TABLE IF EXISTS events",
        "SELECT {ENVELOPE_COLUMNS}\n FROM events e",
    ] {
        assert!(names_a_log_table(sql).is_some(), "{sql}");
    }
    for prose in [
        "events stay in the outbox until the breaker closes",
        "SELECT * FROM events_by_sku",
        "from: events",
        "read from the events of a stream",
        "SELECT * FROM catalog_items",
    ] {
        assert_eq!(names_a_log_table(prose), None, "{prose}");
    }
    let tokens =
        lex("// FROM events\nlet q = r#\"SELECT \"x\" FROM outbox\"#; let c = '\"'; let s = \"a \\\" FROM events\";");
    let strings: Vec<&Tok> = tokens
        .iter()
        .map(|t| &t.tok)
        .filter(|t| matches!(t, Tok::Str(_)))
        .collect();
    assert_eq!(
        strings,
        [
            &Tok::Str("SELECT \"x\" FROM outbox".into()),
            &Tok::Str("a \" FROM events".into())
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The domain's dependencies.

/// Crates that do I/O (or run it): none may be under `surge-domain`.
const IO_CRATES: [&str; 4] = ["sqlx", "axum", "rdkafka", "tokio"];

fn io_crates_in(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            IO_CRATES
                .iter()
                .any(|io| name == io || name.starts_with(&format!("{io}-")))
        })
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_domain_has_no_io_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "-p", "surge-domain", "-e", "normal", "--prefix", "none"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tree.lines().any(|l| l.starts_with("surge-events ")),
        "cargo tree did not list the domain's dependencies:\n{tree}"
    );
    let io = io_crates_in(&tree);
    assert!(
        io.is_empty(),
        "surge-domain depends (directly or not) on I/O crates: {io:?} (see `cargo tree -p surge-domain -e normal -i {}`)",
        io.first().map(String::as_str).unwrap_or_default()
    );
}

#[test]
fn io_crates_are_found_in_a_tree() {
    let tree = "surge-domain v0.1.0 (/w/domain)\nserde v1.0.0\ntokio-util v0.7.0\nsqlx-core v0.8.0\ntokioish v1.0.0\n";
    assert_eq!(io_crates_in(tree), ["sqlx-core", "tokio-util"]);
}
