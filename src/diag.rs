//! Diagnostics: one error per problem, each with `file:line:col`.

use std::fmt;

use serde::Serialize;

/// One problem found in a repository, located in a file (line and column 0
/// when only the file or folder is known, as for an operator's guardrail
/// broken by an environment as a whole).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// The file, relative to the repository root, `/`-separated.
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// JSON pointer of the offending value inside the document, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: error: ", self.file, self.line, self.column)?;
        }
        match &self.pointer {
            Some(p) if !p.is_empty() => write!(f, "{}: {}", one_line(p), one_line(&self.message)),
            _ => f.write_str(&one_line(&self.message)),
        }
    }
}

/// Where a declaration is written, as `file:line:col`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A diagnostic is one line whatever a file holds: control characters (a
/// YAML key can hold newlines) are escaped, so text from a repository can
/// never forge a line of its own in a log or a pull-request comment.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_newlines_stays_on_one_line() {
        let d = Diagnostic {
            file: "environments/dev/workspaces/evil.yaml".into(),
            line: 6,
            column: 3,
            pointer: Some("/spec/x\n## forged".into()),
            message: "unknown field `x\n```\n## forged\r\u{7}`".into(),
        };
        let text = d.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.ends_with("unknown field `x\\n```\\n## forged\\r\\u{7}`"),
            "{text}"
        );
    }
}
