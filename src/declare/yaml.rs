//! A YAML loader that keeps the source position of every key and value.
//!
//! Declarations are read into [`Node`] trees instead of straight into typed
//! structs so that every later error (schema, overlay, platform rule) can name
//! `file:line:col`. The loader is built on saphyr-parser's event stream and is
//! defensive on purpose: one document per file, a nesting cap, a budget on
//! alias expansion (no "billion laughs"), duplicate keys refused, no custom
//! tags. Scalars are resolved with the YAML 1.2 core schema, so `no` and `on`
//! stay strings.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Index of a file in a [`crate::declare::repo::SourceTree`]'s file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A position in a source file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Pos {
    pub file: FileId,
    pub line: u32,
    pub col: u32,
}

/// A YAML value with its position.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A mapping key with its own position (where an unknown key is reported).
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique (the loader refuses duplicates).
    Map(Vec<(Key, Node)>),
}

/// Limits that keep hostile input cheap to refuse.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_depth: usize,
    /// Total nodes a document may hold once aliases are expanded.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_nodes: 200_000,
        }
    }
}

/// Why a file could not be read as YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.pos.line, self.pos.col, self.message)
    }
}

impl std::error::Error for YamlError {}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Node {
        Node { value, pos }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_key(&self, key: &str) -> Option<&Key> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// A short name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "object",
        }
    }

    /// The value as JSON (positions dropped), for schema validation and typing.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Resolves an RFC 6901 JSON pointer. Returns the node and, when the last
    /// step is a mapping key, that key's position.
    pub fn pointer(&self, pointer: &str) -> Option<(&Node, Option<Pos>)> {
        if pointer.is_empty() {
            return Some((self, None));
        }
        let mut node = self;
        let mut key_pos = None;
        for raw in pointer.strip_prefix('/')?.split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            match &node.value {
                Value::Map(entries) => {
                    let (k, v) = entries.iter().find(|(k, _)| k.name == token)?;
                    key_pos = Some(k.pos);
                    node = v;
                }
                Value::Seq(items) => {
                    node = items.get(token.parse::<usize>().ok()?)?;
                    key_pos = None;
                }
                _ => return None,
            }
        }
        Some((node, key_pos))
    }

    /// Structural equality, ignoring positions.
    pub fn same_value(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Seq(a), Value::Seq(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_value(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .any(|(k2, v2)| k.name == k2.name && v.same_value(v2))
                    })
            }
            _ => false,
        }
    }
}

fn pos_of(file: FileId, span: &Span) -> Pos {
    Pos {
        file,
        line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        col: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        pending_key: Option<Key>,
    },
}

struct Builder {
    file: FileId,
    limits: Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    root: Option<Node>,
    documents: usize,
}

/// Levels of collections in a node (a scalar is 0). Every node the builder
/// makes obeys `max_depth` (aliases included), so this recursion is bounded.
fn height(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(height).max().unwrap_or(0),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| height(v)).max().unwrap_or(0),
        _ => 0,
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| count_nodes(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn err(&self, pos: Pos, message: impl Into<String>) -> YamlError {
        YamlError {
            pos,
            message: message.into(),
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return Err(self.err(
                pos,
                format!(
                    "document expands to more than {} nodes (alias expansion bomb?)",
                    self.limits.max_nodes
                ),
            ));
        }
        Ok(())
    }

    /// Attach a finished node to the parent frame (or make it the root).
    fn push_node(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some(key) => {
                    entries.push((key, node));
                    Ok(())
                }
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Null => "null".to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(YamlError {
                                pos: node.pos,
                                message: "mapping keys must be plain strings".into(),
                            });
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(YamlError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{name}` (first defined at line {}, column {})",
                                first.pos.line, first.pos.col
                            ),
                        });
                    }
                    *pending_key = Some(Key {
                        name,
                        pos: node.pos,
                    });
                    Ok(())
                }
            },
        }
    }

    fn check_tag(&self, tag: Option<&saphyr_parser::Tag>, pos: Pos) -> Result<bool, YamlError> {
        match tag {
            None => Ok(false),
            Some(t) if t.handle == "tag:yaml.org,2002:" && t.suffix == "str" => Ok(true),
            Some(t) if t.handle == "!!" && t.suffix == "str" => Ok(true),
            Some(t) => Err(self.err(
                pos,
                format!("YAML tag `{}{}` is not supported here", t.handle, t.suffix),
            )),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = pos_of(self.file, &span);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.err(
                        pos,
                        "a declaration file holds exactly one YAML document; split this one at `---`",
                    ));
                }
                Ok(())
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(self.err(pos, "alias refers to an unknown anchor"));
                };
                self.count(count_nodes(&node), pos)?;
                // An alias nests its anchor where it stands: without this,
                // a chain of anchors builds documents of any depth, which
                // every later walk over them would have to survive.
                if self.stack.len() + height(&node) > self.limits.max_depth {
                    return Err(self.err(
                        pos,
                        format!(
                            "nesting deeper than {} levels (through an alias)",
                            self.limits.max_depth
                        ),
                    ));
                }
                let node = Node {
                    value: node.value,
                    pos,
                };
                self.push_node(node, 0)
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, pos)?;
                let forced_str = self.check_tag(tag.as_deref(), pos)?;
                let value = if forced_str || style != ScalarStyle::Plain {
                    Value::Str(text.into_owned())
                } else {
                    resolve_plain(&text)
                };
                self.push_node(Node { value, pos }, anchor)
            }
            Event::SequenceStart(_, tag) | Event::MappingStart(_, tag) => {
                // The frame itself is pushed by `parse`, which knows its kind.
                if tag.is_some() {
                    return Err(self.err(pos, "YAML tags are not supported on collections"));
                }
                self.count(1, pos)?;
                if self.stack.len() >= self.limits.max_depth {
                    return Err(self.err(
                        pos,
                        format!("nesting deeper than {} levels", self.limits.max_depth),
                    ));
                }
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => self.push_node(
                    Node {
                        value: Value::Seq(items),
                        pos,
                    },
                    anchor,
                ),
                _ => Err(self.err(pos, "malformed YAML: unbalanced sequence")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    pending_key: None,
                }) => self.push_node(
                    Node {
                        value: Value::Map(entries),
                        pos,
                    },
                    anchor,
                ),
                _ => Err(self.err(pos, "malformed YAML: unbalanced mapping")),
            },
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if looks_float && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// Parses one YAML document. An empty file is `null`.
pub fn parse(file: FileId, text: &str, limits: Limits) -> Result<Node, YamlError> {
    let mut builder = Builder {
        file,
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError {
            pos: Pos {
                file,
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                col: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
            },
            message: format!("malformed YAML: {}", e.info()),
        })?;
        let pos = pos_of(file, &span);
        match &event {
            Event::SequenceStart(anchor, _) => {
                let anchor = *anchor;
                builder.event(event, span)?;
                builder.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                let anchor = *anchor;
                builder.event(event, span)?;
                builder.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                });
            }
            _ => builder.event(event, span)?,
        }
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Null,
        pos: Pos {
            file,
            line: 1,
            col: 1,
        },
    }))
}

/// Turns bytes into text, or says where the first invalid UTF-8 byte is.
pub fn decode_utf8(file: FileId, bytes: &[u8]) -> Result<&str, YamlError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        YamlError {
            pos: Pos {
                file,
                line: u32::try_from(line).unwrap_or(u32::MAX),
                col: u32::try_from(col).unwrap_or(u32::MAX),
            },
            message: "file is not valid UTF-8".to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Node, YamlError> {
        parse(FileId(0), text, Limits::default())
    }

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let node = p("a: 1\nb:\n  c: [x, 'y']\n").unwrap();
        let (c, key) = node.pointer("/b/c").unwrap();
        assert_eq!((c.pos.line, c.pos.col), (3, 6));
        let key = key.unwrap();
        assert_eq!((key.line, key.col), (3, 3));
        let (y, _) = node.pointer("/b/c/1").unwrap();
        assert_eq!(y.as_str(), Some("y"));
        assert_eq!((y.pos.line, y.pos.col), (3, 10));
    }

    #[test]
    fn resolves_scalars_with_the_core_schema() {
        let node = p("a: 1\nb: 1.5\nc: true\nd: no\ne: ~\nf: '1'\ng: 0x1F\n").unwrap();
        let j = node.to_json();
        assert_eq!(j["a"], 1);
        assert_eq!(j["b"], 1.5);
        assert_eq!(j["c"], true);
        assert_eq!(j["d"], "no");
        assert!(j["e"].is_null());
        assert_eq!(j["f"], "1");
        assert_eq!(j["g"], 31);
    }

    #[test]
    fn refuses_duplicate_keys_naming_both() {
        let e = p("name: a\nspec: {}\nname: b\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (3, 1));
        assert!(e.message.contains("duplicate key `name`"), "{}", e.message);
        assert!(e.message.contains("line 1, column 1"), "{}", e.message);
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            text.push_str(&format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = c;
        }
        let e = p(&text).unwrap_err();
        assert!(e.message.contains("alias expansion"), "{}", e.message);
    }

    /// Each anchor nests the previous one a few levels deeper: without a
    /// depth check on aliases the document grows past any stack.
    #[test]
    fn aliases_cannot_nest_past_the_depth_limit() {
        let mut text = String::from("a0: &a0 [[[[x]]]]\n");
        for i in 1..40 {
            text.push_str(&format!("a{i}: &a{i} [[[[*a{}]]]]\n", i - 1));
        }
        let e = p(&text).unwrap_err();
        assert!(
            e.message
                .contains("nesting deeper than 64 levels (through an alias)"),
            "{}",
            e.message
        );
        // Shallow aliases stay fine.
        assert!(p("a: &a [[x]]\nb: [[*a]]\n").is_ok());
    }

    #[test]
    fn small_aliases_are_expanded() {
        let node = p("a: &r {cpu: 1}\nb: *r\n").unwrap();
        assert_eq!(node.to_json()["b"]["cpu"], 1);
    }

    #[test]
    fn refuses_deep_nesting_and_multiple_documents() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(p(&deep).unwrap_err().message.contains("nesting deeper"));
        let e = p("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("exactly one YAML document"));
    }

    #[test]
    fn reports_malformed_yaml_with_position() {
        let e = p("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("malformed YAML"), "{}", e.message);
        assert!(e.pos.line >= 1);
    }

    #[test]
    fn refuses_custom_tags() {
        let e = p("a: !!python/object foo\n").unwrap_err();
        assert!(e.message.contains("tag"), "{}", e.message);
        assert_eq!(p("a: !!str 12\n").unwrap().to_json()["a"], "12");
    }

    #[test]
    fn locates_invalid_utf8() {
        let e = decode_utf8(FileId(0), b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (2, 4));
    }

    #[test]
    fn empty_file_is_null() {
        assert!(p("").unwrap().is_null());
        assert!(p("# just a comment\n").unwrap().is_null());
    }
}
