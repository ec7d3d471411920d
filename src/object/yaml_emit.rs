//! A YAML writer for `serde_json::Value` that produces exactly the bytes
//! `serde_norway::to_string` does, several times faster.
//!
//! `render` writes every object through here, and profiling showed
//! serde_norway's emitter (libyaml's, ported, plus a scalar-style guess per
//! string) taking a third of `tenantsync render`. Kubernetes objects use a
//! small part of YAML: block maps and sequences of plain, single-quoted and
//! literal strings, integers, booleans and nulls. That part is written by hand
//! here, following libyaml's emitter (indent 2, unlimited width, unicode) and
//! serde_norway's style choice rule for rule. Anything else (floats, strings
//! that need double quotes, keys that need `? `, a root that is not a map) is
//! handed to serde_norway for the whole document, so the output never
//! depends on which path wrote it; the golden files and a property test
//! against serde_norway hold the two together.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Appends the YAML document of `value` (without a leading `---`), byte for
/// byte what `serde_norway::to_string(value)` returns.
pub fn write(out: &mut String, value: &Value) {
    let start = out.len();
    let mut emitter = Emitter {
        out,
        line_start: true,
    };
    if emitter.document(value).is_ok() {
        return;
    }
    out.truncate(start);
    match serde_norway::to_string(value) {
        Ok(yaml) => out.push_str(&yaml),
        // Serialising a `Value` into memory has no failure case serde_norway
        // can reach (no bytes, no I/O, valid UTF-8 in and out); were one
        // added, JSON text is still a YAML document of the same value, which
        // beats a panic or an error every caller would have to carry.
        Err(_) => {
            out.push_str(&value.to_string());
            out.push('\n');
        }
    }
}

/// The YAML document of `value`; see [`write`].
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

/// The fast path met something it leaves to serde_norway.
#[derive(Debug)]
struct Unsupported;

type Fast = Result<(), Unsupported>;

/// libyaml's emitter state reduced to what block output needs: columns and
/// indents follow from the structure, except whether the last thing written
/// ended its line (a literal scalar ending in a line break).
struct Emitter<'a> {
    out: &'a mut String,
    line_start: bool,
}

/// Longest key libyaml writes as a simple `key:` (bytes); longer ones get `? `.
const MAX_SIMPLE_KEY: usize = 128;

impl Emitter<'_> {
    fn document(&mut self, value: &Value) -> Fast {
        match value {
            Value::Object(map) if map.is_empty() => {
                self.out.push_str("{}");
                self.line_start = false;
            }
            Value::Object(map) => self.entries(map, 0, false)?,
            _ => return Err(Unsupported),
        }
        self.end_line();
        Ok(())
    }

    /// libyaml's `write_indent` between nodes: a line break unless the
    /// previous scalar already ended the line, then the indentation.
    fn new_line(&mut self, indent: usize) {
        self.end_line();
        self.pad(indent);
    }

    fn end_line(&mut self) {
        if !self.line_start {
            self.out.push('\n');
        }
        self.line_start = false;
    }

    fn pad(&mut self, indent: usize) {
        const SPACES: &str = "                                ";
        let mut left = indent;
        while left > 0 {
            let n = left.min(SPACES.len());
            self.out.push_str(&SPACES[..n]);
            left -= n;
        }
    }

    /// A block mapping whose keys sit at column `indent`. `inline` when it
    /// is a sequence item: the first key then follows the `-` on its line.
    fn entries(&mut self, map: &Map<String, Value>, indent: usize, inline: bool) -> Fast {
        for (i, (key, value)) in map.iter().enumerate() {
            if i == 0 && inline {
                self.out.push(' ');
            } else {
                self.new_line(indent);
            }
            self.key(key)?;
            self.out.push(':');
            self.node(value, indent, false)?;
        }
        Ok(())
    }

    /// A block sequence whose `-` sit at column `indent`; `inline` as for
    /// [`Self::entries`].
    fn items(&mut self, items: &[Value], indent: usize, inline: bool) -> Fast {
        for (i, item) in items.iter().enumerate() {
            if i == 0 && inline {
                self.out.push(' ');
            } else {
                self.new_line(indent);
            }
            self.out.push('-');
            self.node(item, indent, true)?;
        }
        Ok(())
    }

    /// The node after `key:` (a map at `indent`) or after `-` (a sequence at
    /// `indent`).
    fn node(&mut self, value: &Value, indent: usize, in_sequence: bool) -> Fast {
        match value {
            Value::Null => self.out.push_str(" null"),
            Value::Bool(true) => self.out.push_str(" true"),
            Value::Bool(false) => self.out.push_str(" false"),
            // serde_norway formats floats with ryu, serde_json with another
            // shortest-digits algorithm: not guaranteed to print alike.
            Value::Number(n) if n.is_f64() => return Err(Unsupported),
            Value::Number(n) => {
                // Integers: itoa in both, which is what Display prints.
                let _ = write!(self.out, " {n}");
            }
            Value::String(s) => self.value_scalar(s, indent + 2)?,
            Value::Array(a) if a.is_empty() => self.out.push_str(" []"),
            Value::Object(m) if m.is_empty() => self.out.push_str(" {}"),
            Value::Object(m) => self.entries(m, indent + 2, in_sequence)?,
            // In a mapping the sequence is indentless: `-` under the key.
            Value::Array(a) if in_sequence => self.items(a, indent + 2, true)?,
            Value::Array(a) => self.items(a, indent, false)?,
        }
        Ok(())
    }

    fn key(&mut self, key: &str) -> Fast {
        if key.len() > MAX_SIMPLE_KEY {
            return Err(Unsupported);
        }
        let a = analyze(key)?;
        if a.multiline {
            return Err(Unsupported);
        }
        match style(key, &a)? {
            Style::Plain => self.out.push_str(key),
            Style::SingleQuoted => single_quoted(self.out, key),
            Style::Literal => return Err(Unsupported),
        }
        Ok(())
    }

    /// A string value; a literal's lines are indented to `content_indent`.
    fn value_scalar(&mut self, s: &str, content_indent: usize) -> Fast {
        let a = analyze(s)?;
        self.out.push(' ');
        match style(s, &a)? {
            Style::Plain => self.out.push_str(s),
            Style::SingleQuoted => single_quoted(self.out, s),
            Style::Literal => self.literal(s, content_indent),
        }
        Ok(())
    }

    /// libyaml's `write_literal_scalar`: only `\n` breaks reach here.
    fn literal(&mut self, s: &str, indent: usize) {
        self.out.push('|');
        // An indentation indicator when the content starts with a space or
        // a break; libyaml always writes its best indent (2) there.
        if s.starts_with([' ', '\n']) {
            self.out.push('2');
        }
        // Chomping: strip without a final break, keep with two or more (or
        // when the value is one break), clip otherwise.
        let b = s.as_bytes();
        match b {
            [.., b'\n', b'\n'] | [b'\n'] => self.out.push('+'),
            [.., b'\n'] => {}
            _ => self.out.push('-'),
        }
        self.out.push('\n');
        let mut lines = s.split('\n').peekable();
        while let Some(line) = lines.next() {
            if !line.is_empty() {
                self.pad(indent);
                self.out.push_str(line);
            }
            if lines.peek().is_some() {
                self.out.push('\n');
            }
        }
        self.line_start = s.ends_with('\n');
    }
}

fn single_quoted(out: &mut String, s: &str) {
    out.push('\'');
    let mut rest = s;
    while let Some(i) = rest.find('\'') {
        out.push_str(&rest[..=i]);
        out.push('\'');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('\'');
}

enum Style {
    Plain,
    SingleQuoted,
    Literal,
}

/// serde_norway's request (`serialize_str`) then libyaml's choice
/// (`yaml_emitter_select_scalar_style`) for a block, non-key context, with
/// the double-quoted outcome reported as unsupported. Keys are never
/// multi-line here, so the same rule serves them.
fn style(s: &str, a: &Analysis) -> Result<Style, Unsupported> {
    if a.multiline {
        // serde_norway asks for a literal when there is a `\n` (the only
        // break left here); libyaml double-quotes it if block style is out.
        return if a.block_allowed {
            Ok(Style::Literal)
        } else {
            Err(Unsupported)
        };
    }
    if a.block_plain_allowed && !reads_as_non_string(s) {
        Ok(Style::Plain)
    } else {
        Ok(Style::SingleQuoted)
    }
}

/// What libyaml's `yaml_emitter_analyze_scalar` finds, for block context.
/// Single quotes are always allowed here: libyaml refuses them only for
/// special characters or a break next to a space, and such a string either
/// is unsupported or contains `\n` and so is asked for as a literal.
struct Analysis {
    /// Contains `\n`.
    multiline: bool,
    block_plain_allowed: bool,
    block_allowed: bool,
}

/// libyaml's IS_PRINTABLE for a non-ASCII character.
fn is_printable(c: char) -> bool {
    matches!(c, '\u{A0}'..='\u{D7FF}' | '\u{10000}'..)
        || matches!(c, '\u{E000}'..='\u{FFFD}') && c != '\u{FEFF}'
}

/// libyaml's IS_BLANKZ on the byte after a character: a blank, a break or
/// the end. Non-ASCII breaks (U+0085, U+2028, U+2029) count as not blank:
/// a string holding one is unsupported whatever its indicators.
fn is_blankz(next: Option<&u8>) -> bool {
    next.is_none_or(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Scalars with characters that only double quotes can carry (non-printable
/// ones, breaks other than `\n`, a space before a break) are unsupported.
fn analyze(s: &str) -> Result<Analysis, Unsupported> {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Ok(Analysis {
            multiline: false,
            block_plain_allowed: true,
            block_allowed: false,
        });
    };
    // Names, labels, images: plain-safe ASCII only, nothing more to find.
    if bytes.iter().all(|&b| PLAIN_SAFE[usize::from(b)]) && !starts_with_indicator(bytes) {
        return Ok(Analysis {
            multiline: false,
            block_plain_allowed: true,
            block_allowed: true,
        });
    }
    let mut block_indicators = match first {
        b'#' | b',' | b'[' | b']' | b'{' | b'}' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => true,
        b'?' | b':' | b'-' => is_blankz(bytes.get(1)),
        _ => false,
    } || bytes.starts_with(b"---")
        || bytes.starts_with(b"...");
    let last = bytes.len() - 1;
    let mut line_breaks = false;
    let mut leading_space_or_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut previous_space = false;
    let mut previous_break = false;
    let mut preceded_by_whitespace = true;
    for (i, &b) in bytes.iter().enumerate() {
        if !b.is_ascii() {
            // A lead byte: check the character; skip continuation bytes.
            if b & 0xC0 != 0x80 {
                let c = s[i..].chars().next().ok_or(Unsupported)?;
                if !is_printable(c) || matches!(c, '\u{2028}' | '\u{2029}') {
                    return Err(Unsupported);
                }
            }
            previous_space = false;
            previous_break = false;
            preceded_by_whitespace = false;
            continue;
        }
        if !(b == b'\n' || (b' '..=b'~').contains(&b)) {
            return Err(Unsupported);
        }
        if i > 0 {
            match b {
                b':' if is_blankz(bytes.get(i + 1)) => block_indicators = true,
                b'#' if preceded_by_whitespace => block_indicators = true,
                _ => {}
            }
        }
        if b == b' ' {
            leading_space_or_break |= i == 0;
            trailing_space = i == last;
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if b == b'\n' {
            if previous_space {
                // A space before a break: double quotes only.
                return Err(Unsupported);
            }
            line_breaks = true;
            leading_space_or_break |= i == 0;
            trailing_break = i == last;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = b == b' ' || b == b'\n';
    }
    let plain = !(leading_space_or_break
        || trailing_space
        || trailing_break
        || break_space
        || line_breaks
        || block_indicators);
    Ok(Analysis {
        multiline: line_breaks,
        block_plain_allowed: plain,
        block_allowed: !trailing_space,
    })
}

/// ASCII that never makes libyaml avoid plain style, wherever it stands
/// (the first byte aside, see [`starts_with_indicator`]): letters, digits
/// and `-./_` as in names, labels and images, and `=+;$~^()<\` which
/// libyaml ignores.
const PLAIN_SAFE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-./_=+;$~^()<\\";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// A start that libyaml treats as an indicator in a string of
/// [`PLAIN_SAFE`] bytes: a lone `-` (followed by the end), `---`, `...`.
fn starts_with_indicator(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [b'-'] | [b'-', b'-', b'-', ..] | [b'.', b'.', b'.', ..]
    )
}

/// serde_norway quotes a string that would read back as something else:
/// null, a boolean, an integer, a float, or digits with a leading zero
/// (`de::visit_untagged_scalar` and `de::digits_but_not_number`).
fn reads_as_non_string(s: &str) -> bool {
    let Some(&first) = s.as_bytes().first() else {
        return true;
    };
    if first.is_ascii_alphabetic() {
        // No number starts with a letter (Rust's float parser reads `inf`
        // and `nan`, but serde_norway keeps only finite floats).
        return matches!(
            s,
            "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
        );
    }
    s == "~" || is_int(s) || digits_but_not_number(s) || parse_f64(s)
}

/// serde_norway's `de::digits_but_not_number`.
fn digits_but_not_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// serde_norway's `de::parse_f64`: does it give a float?
fn parse_f64(s: &str) -> bool {
    let unpositive = match s.strip_prefix('+') {
        Some(u) if u.starts_with(['+', '-']) => return false,
        Some(u) => u,
        None => s,
    };
    if matches!(unpositive, ".inf" | ".Inf" | ".INF")
        || matches!(s, "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN" | ".NAN")
    {
        return true;
    }
    unpositive.parse::<f64>().is_ok_and(f64::is_finite)
}

/// serde_norway's `de::visit_int`: does any of its integer parsers accept
/// `s`? The widest types decide: whatever fits u64/i64 fits u128/i128.
fn is_int(s: &str) -> bool {
    parse_unsigned(s) || parse_negative(s)
}

/// `de::parse_unsigned_int::<u128>`.
fn parse_unsigned(s: &str) -> bool {
    let unpositive = s.strip_prefix('+').unwrap_or(s);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return false;
            }
            if u128::from_str_radix(rest, radix).is_ok() {
                return true;
            }
        }
    }
    if unpositive.starts_with(['+', '-']) || digits_but_not_number(s) {
        return false;
    }
    unpositive.parse::<u128>().is_ok()
}

/// `de::parse_negative_int::<i128>`.
fn parse_negative(s: &str) -> bool {
    for (prefix, radix) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = s.strip_prefix(prefix)
            && i128::from_str_radix(&format!("-{rest}"), radix).is_ok()
        {
            return true;
        }
    }
    if digits_but_not_number(s) {
        return false;
    }
    s.parse::<i128>().is_ok()
}

/// Whether the fast path wrote `value` itself (tests check it is taken).
#[cfg(test)]
fn fast_path(value: &Value) -> Option<String> {
    let mut out = String::new();
    let mut emitter = Emitter {
        out: &mut out,
        line_start: true,
    };
    emitter.document(value).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn norway(v: &Value) -> String {
        serde_norway::to_string(v).unwrap()
    }

    #[track_caller]
    fn same(v: &Value) {
        assert_eq!(to_string(v), norway(v), "for {v}");
    }

    #[track_caller]
    fn fast_and_same(v: &Value) {
        let fast = fast_path(v).unwrap_or_else(|| panic!("fell back on {v}"));
        assert_eq!(fast, norway(v), "for {v}");
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "fhir-main",
                "namespace": "contoso-dev",
                "labels": {"app.kubernetes.io/name": "fhir-server", "tenantsync.io/workspace": "contoso"},
                "annotations": {"azure.workload.identity/client-id": "3f1a8c52-6d0e-4b7a-9a43-2c5f7e9d1b10", "note": "a: b", "empty": ""}
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "fhir"}},
                "template": {
                    "metadata": {"labels": {"app": "fhir"}},
                    "spec": {
                        "containers": [{
                            "name": "fhir",
                            "image": "mcr.microsoft.com/healthcareapis/fhir:3.1",
                            "args": ["--port", "8080", "-v", "true", "0123", "~"],
                            "env": [{"name": "A", "value": "1.5"}, {"name": "B", "value": null}],
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {}},
                            "readOnlyRootFilesystem": false,
                            "command": [],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "fhir-config"}}],
                    }
                }
            },
            "data": {
                "appsettings.json": "{\n  \"a\": 1\n}\n",
                "script.sh": "#!/bin/sh\nexec fhir\n\n\necho done",
                "keep": "a\n\n",
                "indented": "  leading\nline\n",
                "blank-first": "\nsecond",
                "only-break": "\n",
                "break-space": "a\n b",
            },
            "nested": [["a", "b"], [{"k": "v", "l": ["x"]}], [[]], "'quoted'", -7, 18446744073709551615u64],
        })
    }

    #[test]
    fn a_kubernetes_object_takes_the_fast_path() {
        fast_and_same(&deployment());
        fast_and_same(&json!({}));
        fast_and_same(&json!({"a": {}, "b": [], "c": [{}], "d": [[], {}]}));
    }

    #[rustfmt::skip]
    const STYLE_CASES: &[&str] = &[
        "", " ", "a ", " a", "-", "- a", "-a", "--", "---", "--- a", "...", "..a", "?", "? a",
        "?a", ":", "a:", "a: b", "a:b", "a #b", "a#b", "#a", "!a", "&a", "*a", "|", ">",
        "'", "\"", "%", "@", "`", ",a", "a,b", "[a]", "a[b]", "{a}", "a{b}", "0", "00", "0123",
        "-0123", "+0123", "0x1F", "0o17", "0b101", "-0x1F", "0x", "0x+1", "1_000", "+1",
        "++1", "-1", "1.5", "1.", ".5", "1e3", "1E3", "1e999", "inf", "nan", "NaN", ".inf",
        "-.inf", "+.inf", ".nan", ".NaN", "+.nan", "infinity", "null", "Null", "NULL", "nUll",
        "~", "~a", "true", "True", "TRUE", "tRue", "false", "yes", "no", "on", "off", "y",
        "é", "€uro", "😀", "a\u{2028}b", "a\u{2029}", "a\u{85}b", "\u{feff}a", "a\tb", "a\rb",
        "a\u{7f}", "a\u{a0}b", "\u{fffe}", "a\n", "a\n\n", "\nb", "a \nb", "a\n b", "a\n\n b",
        " a\nb", "a\nb ", "a\n\n\n", "\n\n", "a'b", "'a\nb'", "18446744073709551616",
        "-9223372036854775809", "340282366920938463463374607431768211456",
    ];

    #[test]
    fn styles_match_serde_norway() {
        for &s in STYLE_CASES {
            same(&json!({ "k": s }));
            same(&json!({ s: "v" }));
            same(&json!({ "k": [s] }));
            same(&json!([{ "k": { "n": s } }]));
        }
    }

    #[test]
    fn long_keys_and_floats_fall_back() {
        let long = "k".repeat(MAX_SIMPLE_KEY + 1);
        same(&json!({ long.clone(): 1 }));
        assert!(fast_path(&json!({ long: 1 })).is_none());
        let at_limit = "k".repeat(MAX_SIMPLE_KEY);
        fast_and_same(&json!({ at_limit: 1 }));
        same(&json!({"f": 1.5, "g": 1e300, "h": -0.0, "i": 1e-7}));
        assert!(fast_path(&json!({"f": 1.5})).is_none());
        same(&json!([1, 2]));
        same(&json!("top"));
        same(&json!(null));
    }

    #[test]
    fn write_appends() {
        let mut out = String::from("---\n");
        write(&mut out, &json!({"a": 1}));
        write(&mut out, &json!({"f": 0.5}));
        assert_eq!(out, "---\na: 1\nf: 0.5\n");
    }

    #[rustfmt::skip]
    const NASTY: &[&str] = &[
        "a", "b", "z", "0", "1", "9", " ", ":", "#", "-", "?", "'", "\"", "|", ">", "!", "&",
        "*", "%", "@", ",", "[", "]", "{", "}", "\n", "\r", "\t", "é", "€", "😀", "\u{2028}",
        "\u{feff}", ".", "~", "x", "y",
    ];
    #[rustfmt::skip]
    const WHOLE: &[&str] = &[
        "true", "null", "0123", "1.5", "-", "---", "", " a", "a ", "a\n", "a\n\n", "\nb", "~",
        "False", "0x10", "-12", "1e5", ".inf", "...", "a: b", "fhir-main", "contoso-dev",
        "app.kubernetes.io/name", "500m", "1Gi",
    ];

    fn nasty_string() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(WHOLE).prop_map(str::to_owned),
            3 => prop::collection::vec(prop::sample::select(NASTY), 0..8).prop_map(|v| v.concat()),
            // Mostly safe text, like real labels and names.
            4 => "[a-z][a-z0-9./-]{0,12}",
            // Multi-line text, like embedded config files.
            2 => prop::collection::vec("[ a-z#:-]{0,6}", 1..5).prop_map(|v| v.join("\n")),
        ]
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => nasty_string().prop_map(Value::String),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<i64>().prop_map(Value::from),
            1 => prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
            1 => prop_oneof![any::<f64>(), Just(1.5), Just(1e300), Just(-0.0)]
                .prop_map(Value::from),
        ]
    }

    fn arb_value(floats: bool) -> impl Strategy<Value = Value> {
        let leaf = if floats {
            scalar().boxed()
        } else {
            scalar()
                .prop_filter("no floats", |v| !v.as_number().is_some_and(|n| n.is_f64()))
                .boxed()
        };
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(nasty_string(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_document(floats: bool) -> impl Strategy<Value = Value> {
        prop_oneof![
            9 => prop::collection::btree_map(nasty_string(), arb_value(floats), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            1 => arb_value(floats),
        ]
    }

    /// Keys and strings from k8s objects: safe text and config files.
    fn k8s_string() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z][a-z0-9./-]{0,12}",
            1 => "[0-9]{1,4}(m|Mi|Gi)?",
            // Config files: no space ends a line (that takes double quotes).
            1 => prop::collection::vec("( {0,4}[a-z{}\":,]([a-z{}\": ,]{0,6}[a-z{}\":,])?)?", 1..5)
                .prop_map(|v| v.join("\n") + "\n"),
            1 => prop::sample::select(WHOLE).prop_map(str::to_owned),
        ]
    }

    fn k8s_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            4 => k8s_string().prop_map(Value::String),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<i32>().prop_map(Value::from),
            1 => Just(Value::Null),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9./-]{0,20}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn matches_serde_norway(v in arb_document(true)) {
            prop_assert_eq!(to_string(&v), norway(&v));
        }

        /// The same without floats, where the fast path is taken often; a
        /// fast-path output is compared on its own (not via `write`).
        #[test]
        fn fast_path_matches_serde_norway(v in arb_document(false)) {
            if let Some(fast) = fast_path(&v) {
                prop_assert_eq!(fast, norway(&v));
            }
        }

        /// One nasty string at a time in every position, so that each one
        /// that the fast path can write is written by it and compared.
        #[test]
        fn each_string_matches_in_every_position(s in nasty_string()) {
            for v in [
                json!({ "k": &s }),
                json!({ &s: "v" }),
                json!({ "k": [&s, 1] }),
                json!({ "a": [{ &s: { "n": &s } }], "b": [[&s, []], { "c": &s }], "z": &s }),
            ] {
                if let Some(fast) = fast_path(&v) {
                    prop_assert_eq!(fast, norway(&v));
                } else {
                    prop_assert_eq!(to_string(&v), norway(&v));
                }
            }
        }

        #[test]
        fn reads_back_as_the_same_value(v in arb_document(true)) {
            let back: Value = serde_norway::from_str(&to_string(&v)).unwrap();
            prop_assert_eq!(back, v);
        }

        /// Objects shaped like Kubernetes ones never fall back.
        #[test]
        fn kubernetes_like_objects_take_the_fast_path(
            m in prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9./-]{0,20}", k8s_value(), 0..8)
        ) {
            let v = Value::Object(m.into_iter().collect());
            let fast = fast_path(&v);
            prop_assert!(fast.is_some(), "fell back on {}", v);
            prop_assert_eq!(fast.unwrap_or_default(), norway(&v));
        }
    }

    /// The nasty generator must still exercise the fast path, or the
    /// comparison above would only test serde_norway against itself.
    #[test]
    fn the_nasty_generator_often_takes_the_fast_path() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = arb_document(false);
        let (mut fast, total) = (0, 2000);
        for _ in 0..total {
            let v = strategy.new_tree(&mut runner).unwrap().current();
            if fast_path(&v).is_some() {
                fast += 1;
            }
        }
        eprintln!("fast path taken {fast} times of {total}");
        assert!(fast * 4 >= total, "fast path taken {fast} times of {total}");
    }
}
